//! The burst and budget decisions an event's commit takes for each matched
//! rule with `delay:`, `debounce:` or `limit:` ([`Pacing`]), from state kept
//! in the store, so a crash or a restart changes no outcome:
//!
//! - `over: drop`: the admissions of the rolling window are counted in
//!   `limit_hits`; a full window records the rule's deliveries `dropped`.
//! - `over: delay`: `limit_next` holds the next free start slot; each
//!   admission takes it and moves it on by `window / count`, so starts are
//!   spaced evenly and no burst exceeds the rate.
//! - `debounce:` the `debounce` row of (rule, key) names the burst's
//!   waiting deliveries. An event of a burst still waiting takes their
//!   place (they become `coalesced`), due `quiet` after it but no later than
//!   `max_wait` after the first; otherwise it starts a new burst.
//!
//! Also [`defer`]: a leased delivery handed back unrun, due later (a named
//! limit paused by a 429).

use redb::ReadableTable;

use super::super::StoreError;
use super::super::schema::{BurstRow, WriteTables, decode, load_delivery};
use super::super::types::{DebounceInfo, DeliveryId, DeliveryRecord, DeliveryState, Pacing};
use super::{Effects, end, promote, unindex};
use crate::rules::Over;

/// What the store decided for one rule's deliveries of an event.
pub(super) struct Admission {
    /// When they are due.
    pub due_ms: u64,
    /// Why they are dropped, if they are.
    pub dropped: Option<String>,
    /// Their burst, if the rule debounces: the deliveries they replace and
    /// what templates will see.
    pub burst: Option<Burst>,
}

pub(super) struct Burst {
    key: String,
    replaces: Vec<DeliveryId>,
    pub info: DebounceInfo,
    floor_ms: u64,
}

/// Decides the due time, drop or burst of a rule's deliveries for an event
/// accepted at `at`. Writes the limit counters and slots it takes.
pub(super) fn admit(
    t: &mut WriteTables<'_>,
    pacing: &Pacing,
    at: u64,
) -> Result<Admission, StoreError> {
    // A burst still waiting absorbs the event: its limits were counted
    // when it began, and its floor holds.
    if let Some(d) = &pacing.debounce
        && let Some(row) = waiting_burst(t, &d.key)?
    {
        let due = at
            .saturating_add(d.quiet_ms)
            .min(row.first_ms.saturating_add(d.max_wait_ms))
            .max(row.floor_ms);
        return Ok(Admission {
            due_ms: due,
            dropped: None,
            burst: Some(Burst {
                key: d.key.clone(),
                replaces: row.waiting,
                info: DebounceInfo {
                    count: row.count.saturating_add(1),
                    first_ms: row.first_ms,
                },
                floor_ms: row.floor_ms,
            }),
        });
    }
    for l in pacing.limits.iter().filter(|l| l.over == Over::Drop) {
        let since = at.saturating_sub(l.window_ms);
        let mut used: u64 = 0;
        for item in t
            .limit_hits
            .range((l.key.as_str(), since.saturating_add(1))..=(l.key.as_str(), u64::MAX))?
        {
            used += u64::from(item?.1.value());
            // Full is full: the scan stops at `count`, whatever the window.
            if used >= u64::from(l.count) {
                break;
            }
        }
        if used >= u64::from(l.count) {
            return Ok(Admission {
                due_ms: at,
                dropped: Some(format!(
                    "limit {} allows {} per {}s",
                    l.label,
                    l.count,
                    l.window_ms / 1000
                )),
                burst: None,
            });
        }
    }
    let mut floor = at.saturating_add(pacing.delay_ms);
    for l in &pacing.limits {
        match l.over {
            Over::Drop => {
                let key = l.key.as_str();
                let n = t.limit_hits.get((key, at))?.map_or(0, |g| g.value());
                t.limit_hits.insert((key, at), n.saturating_add(1))?;
                // Counts older than the window are of no use any more.
                let since = at.saturating_sub(l.window_ms);
                t.limit_hits
                    .retain_in((key, 0u64)..=(key, since), |_, _| false)?;
            }
            Over::Delay => {
                let key = l.key.as_str();
                let slot = t.limit_next.get(key)?.map_or(at, |g| g.value()).max(at);
                let step = (l.window_ms / u64::from(l.count.max(1))).max(1);
                t.limit_next.insert(key, slot.saturating_add(step))?;
                floor = floor.max(slot);
            }
        }
    }
    let burst = pacing.debounce.as_ref().map(|d| Burst {
        key: d.key.clone(),
        replaces: Vec::new(),
        info: DebounceInfo {
            count: 1,
            first_ms: at,
        },
        floor_ms: floor,
    });
    let due = match &pacing.debounce {
        Some(d) => floor.max(at.saturating_add(d.quiet_ms)),
        None => floor,
    };
    Ok(Admission {
        due_ms: due,
        dropped: None,
        burst,
    })
}

/// The burst of `key` if its deliveries are all still waiting.
fn waiting_burst(t: &WriteTables<'_>, key: &str) -> Result<Option<BurstRow>, StoreError> {
    let Some(row) = t.debounce.get(key)? else {
        return Ok(None);
    };
    let row: BurstRow = decode(row.value(), "debounce row")?;
    for &id in &row.waiting {
        match load_delivery(&t.deliveries, id)? {
            Some(rec) if rec.state == DeliveryState::Pending && rec.cancel.is_none() => {}
            _ => return Ok(None),
        }
    }
    Ok((!row.waiting.is_empty()).then_some(row))
}

/// Records the burst's new waiting deliveries `created` (this event's, of
/// the rule) and ends the ones they replace `coalesced`.
pub(super) fn settle(
    t: &mut WriteTables<'_>,
    burst: &Burst,
    created: &[DeliveryRecord],
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let row = BurstRow {
        waiting: created.iter().map(|r| r.id).collect(),
        first_ms: burst.info.first_ms,
        count: burst.info.count,
        floor_ms: burst.floor_ms,
    };
    t.debounce
        .insert(burst.key.as_str(), serde_json::to_vec(&row)?.as_slice())?;
    let by = created.first().map_or(0, |r| r.id);
    for &id in &burst.replaces {
        if let Some(mut old) = load_delivery(&t.deliveries, id)? {
            old.last_error = Some(format!("coalesced into delivery {by}"));
            end(t, &mut old, DeliveryState::Coalesced, fx)?;
        }
    }
    Ok(())
}

/// [`Store::defer`](crate::store::Store::defer) inside the writer's
/// transaction: a leased delivery that did not run is due again at
/// `until_ms`, with no attempt recorded. Anything else is left alone.
pub(in crate::store) fn defer(
    t: &mut WriteTables<'_>,
    id: DeliveryId,
    until_ms: u64,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let Some(mut rec) = load_delivery(&t.deliveries, id)? else {
        return Err(StoreError::UnknownDelivery(id));
    };
    if rec.state != DeliveryState::Leased {
        return Ok(());
    }
    unindex(t, &rec)?;
    rec.state = DeliveryState::Pending;
    rec.lease_until_ms = None;
    rec.due_at_ms = until_ms;
    t.due.insert((until_ms, id), ())?;
    t.put_delivery(&rec)?;
    fx.dirty = true;
    fx.wake = true;
    promote(t, &rec, fx)?;
    Ok(())
}
