//! Retention: deleting old events whose work is over, a bounded chunk per
//! write transaction so that commits never wait long behind a prune.
//!
//! An event goes with its deliveries, their attempts and its dedup entries,
//! and only when every delivery is final and its dedup window has closed.

use std::ops::Bound;

use redb::ReadableTable;

use super::StoreError;
use super::ops::Effects;
use super::schema::{
    WriteTables, decode_event_keys, delivery_ids_of, event_dedup_key, load_delivery,
};
use super::types::PruneStats;

/// Events examined per prune chunk.
pub(super) const PRUNE_EVENTS_PER_CHUNK: usize = 256;

/// One bounded step of a prune; `Store::prune` loops over these so that other
/// writers get the writer between chunks.
pub(super) struct PruneChunk {
    pub now_ms: u64,
    pub cutoff_ms: u64,
    /// Last event key examined by the previous chunk.
    pub after: Option<String>,
}

pub(super) struct PruneOut {
    pub stats: PruneStats,
    /// Where the next chunk resumes the event scan; `None` when it is done.
    pub cursor: Option<String>,
}

/// One chunk of [`Store::prune`](super::Store::prune): examines up to
/// [`PRUNE_EVENTS_PER_CHUNK`] events received before the cutoff, after the
/// previous chunk's last key.
pub(super) fn prune(
    t: &mut WriteTables<'_>,
    chunk: &PruneChunk,
    fx: &mut Effects,
) -> Result<PruneOut, StoreError> {
    let mut stats = PruneStats {
        chunks: 1,
        ..PruneStats::default()
    };
    let mut cursor = None;
    // Keys are ULIDs stamped no earlier than the receive time, so every
    // key below this one was received before the cutoff.
    let cutoff_key = ulid::Ulid::from_parts(chunk.cutoff_ms, 0).to_string();
    let lower = match &chunk.after {
        Some(after) => Bound::Excluded(after.as_str()),
        None => Bound::Unbounded,
    };
    let mut scanned = Vec::new();
    for item in t
        .events
        .range::<&str>((lower, Bound::Excluded(cutoff_key.as_str())))?
        .take(PRUNE_EVENTS_PER_CHUNK)
    {
        let (k, _) = item?;
        scanned.push(k.value().to_owned());
    }
    if scanned.len() == PRUNE_EVENTS_PER_CHUNK {
        cursor = scanned.last().cloned();
    }
    for key in &scanned {
        if prune_event(t, key, chunk.now_ms, &mut stats)? {
            fx.dirty = true;
        }
    }
    Ok(PruneOut { stats, cursor })
}

/// Removes one event with its deliveries, attempts and dedup entries, if
/// every delivery is final and its dedup window has closed; says whether it
/// did. Events with work left are kept whatever their age, and so are events
/// still guarding against duplicates (the server keeps retention at least as
/// long as the dedup window, so for it this is no extra wait).
fn prune_event(
    t: &mut WriteTables<'_>,
    key: &str,
    now_ms: u64,
    stats: &mut PruneStats,
) -> Result<bool, StoreError> {
    let Some(row) = t
        .events
        .get(key)?
        .map(|g| decode_event_keys(g.value()))
        .transpose()?
    else {
        return Ok(false);
    };
    if row.dedup_until_ms > now_ms {
        return Ok(false);
    }
    let ids = delivery_ids_of(&t.event_deliveries, key, row.first_deliveries.clone())?;
    let mut records = Vec::with_capacity(ids.len());
    for &id in &ids {
        match load_delivery(&t.deliveries, id)? {
            Some(rec) if !rec.state.is_final() => return Ok(false),
            rec => records.push((id, rec)),
        }
    }
    t.raise_id_floor()?;
    for (id, rec) in records {
        let mut removed = 0u64;
        t.attempts.retain_in((id, 0u32)..=(id, u32::MAX), |_, _| {
            removed += 1;
            false
        })?;
        stats.attempts += removed;
        match rec {
            Some(rec) => {
                stats.attempts += u64::from(rec.success.is_some());
                if let Some(table) = t.final_table(rec.state) {
                    table.remove(id)?;
                }
            }
            None => {
                t.dead.remove(id)?;
            }
        }
        t.deliveries.remove(id)?;
        t.event_deliveries.remove((key, id))?;
        stats.deliveries += 1;
    }

    // Dedup entries go with their event, unless a later event took the key
    // over (it may, once this one's entry expired).
    let mut dedup_keys = Vec::new();
    if !row.dedup_key.is_empty() {
        dedup_keys.push(event_dedup_key(&row.dedup_key));
    }
    for item in t.rule_dedup.range((key, "")..)? {
        let (k, _) = item?;
        let (event, dedup_key) = k.value();
        if event != key {
            break;
        }
        dedup_keys.push(dedup_key.to_owned());
    }
    for dedup_key in &dedup_keys {
        t.rule_dedup.remove((key, dedup_key.as_str()))?;
        let owner = t.dedup.get(dedup_key.as_str())?.map(|g| g.value().0 == key);
        if owner == Some(true) {
            t.dedup.remove(dedup_key.as_str())?;
            stats.dedup_keys += 1;
        }
    }
    t.events.remove(key)?;
    stats.events += 1;
    Ok(true)
}
