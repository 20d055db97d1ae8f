//! What each write command does inside the writer's transaction: commit an
//! event (event- and rule-level dedup, key and id allocation, deliveries
//! created due or already leased), lease due deliveries, record an attempt's
//! outcome with its follow-ups, and replay an event. Also the encoding of a
//! new event's row, done by the caller before it queues the commit.
//!
//! Every function here runs on the writer thread against one open
//! transaction and reports what the transaction must do after it (commit,
//! wake the dispatcher) in [`Effects`]. A not-found error is raised before
//! the first write, because the transaction carries on with the other
//! commands of its batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use redb::ReadableTable;
use serde::Serialize;

use super::StoreError;
use super::schema::{WriteTables, event_dedup_key, load_delivery, rule_dedup_key, with_deliveries};
use super::types::{
    Attempt, AttemptOutcome, Committed, DeliveryId, DeliveryRecord, DeliveryState,
    MAX_DETAIL_BYTES, NewDelivery, NewEvent, Next,
};
use crate::clock;

/// Event keys: ULIDs whose timestamp is the receive time, monotonic within
/// this process so keys sort in commit order even within one millisecond.
/// `list_events` pages by key and `prune` range-scans by key.
pub(super) struct KeyGen(ulid::Generator, rand::rngs::StdRng);

impl KeyGen {
    /// Its random bits come from a generator seeded once, when the store
    /// opens (see `crate::entropy`), so no key ever waits on, or fails for,
    /// a random source.
    pub(super) fn new() -> Result<Self, StoreError> {
        use rand::SeedableRng as _;
        let rng = rand::rngs::StdRng::from_seed(crate::entropy::seed()?);
        Ok(KeyGen(ulid::Generator::new(), rng))
    }

    fn next(&mut self, ms: u64) -> String {
        let at = clock::from_unix_ms(ms);
        match self.0.generate_from_datetime_with_source(at, &mut self.1) {
            Ok(u) => u.to_string(),
            // Only after 2^80 keys in one millisecond; a random ULID is still unique.
            Err(_) => ulid::Ulid::from_datetime_with_source(at, &mut self.1).to_string(),
        }
    }
}

/// Side effects of applying ops, decided inside the transaction.
#[derive(Default)]
pub(super) struct Effects {
    /// Something was written: commit (fsync) rather than abort.
    pub dirty: bool,
    /// Due work was created or rescheduled: wake the dispatcher after commit.
    pub wake: bool,
}

/// A leased delivery and its event's stored row.
pub(super) type LeasedRow = (DeliveryRecord, Arc<Vec<u8>>);

/// The stored row of a new event: `{"event":{..,"body":..},..}`, the same
/// JSON document `Event` serializes to, with the body spliced in. A JSON
/// body goes in as the sender wrote it (it was checked on the way in), so
/// the row costs a copy of the payload, not a re-encoding of it.
pub(super) fn event_row(ev: &NewEvent) -> Result<Vec<u8>, StoreError> {
    let e = &ev.event;
    let encoded;
    let body = match e.body.raw_json() {
        Some(raw) => raw,
        None => {
            encoded = serde_json::to_vec(e.body.value())?;
            encoded.as_slice()
        }
    };
    let head = serde_json::to_vec(&EventHead {
        id: &e.id,
        kind: &e.kind,
        source: &e.source,
        provider: &e.provider,
        received_at: &e.received_at,
        headers: &e.headers,
        query: &e.query,
    })?;
    let tail = serde_json::to_vec(&RowTail {
        received_ms: ev.received_ms,
        dedup_key: &ev.dedup_key,
        dedup_until_ms: ev.dedup_until_ms,
    })?;
    let (Some((b'}', head)), Some((b'{', tail))) = (head.split_last(), tail.split_first()) else {
        return Err(StoreError::Internal(
            "an event row did not encode as an object",
        ));
    };
    let mut json = Vec::with_capacity(head.len() + body.len() + tail.len() + 24);
    json.extend_from_slice(b"{\"event\":");
    json.extend_from_slice(head);
    json.extend_from_slice(b",\"body\":");
    json.extend_from_slice(body);
    json.extend_from_slice(b"},");
    json.extend_from_slice(tail);
    Ok(super::schema::encode_event_row(json))
}

/// An event's fields other than its body, as `Event` serializes them.
#[derive(Serialize)]
struct EventHead<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    source: &'a str,
    provider: &'a str,
    received_at: &'a str,
    headers: &'a std::collections::BTreeMap<String, String>,
    query: &'a std::collections::BTreeMap<String, String>,
}

/// The row's fields after the event.
#[derive(Serialize)]
struct RowTail<'a> {
    received_ms: u64,
    dedup_key: &'a str,
    dedup_until_ms: u64,
}

/// The event key behind `dedup_key` if the entry exists and expires after
/// `at_ms`.
fn live_dedup(
    t: &WriteTables<'_>,
    dedup_key: &str,
    at_ms: u64,
) -> Result<Option<String>, StoreError> {
    Ok(t.dedup.get(dedup_key)?.and_then(|g| {
        let (event_key, expires) = g.value();
        (expires > at_ms).then(|| event_key.to_owned())
    }))
}

/// Records (or renews) a dedup entry. It is removed when its event is
/// pruned, which happens only after it expired (see `prune`).
fn put_dedup(
    t: &mut WriteTables<'_>,
    dedup_key: &str,
    event_key: &str,
    expires: u64,
) -> Result<(), StoreError> {
    t.dedup.insert(dedup_key, (event_key, expires))?;
    Ok(())
}

/// Where a new delivery is linked to its event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Indexed {
    /// In the event row's header, which the caller writes.
    InRow,
    /// In `event_deliveries`: the event row already exists.
    Table,
}

/// Creates a delivery, `Pending` and due at `due_ms`, or already `Leased`
/// until `lease_until` (its caller runs it from memory).
fn create_delivery(
    t: &mut WriteTables<'_>,
    event_key: &str,
    d: &NewDelivery,
    due_ms: u64,
    lease_until: Option<u64>,
    index: Indexed,
) -> Result<DeliveryRecord, StoreError> {
    let id = t.next_delivery_id()?;
    let rec = DeliveryRecord {
        id,
        event_key: event_key.to_owned(),
        rule: d.rule.clone(),
        action: d.action,
        kind: d.kind,
        state: if lease_until.is_some() {
            DeliveryState::Leased
        } else {
            DeliveryState::Pending
        },
        attempts: 0,
        due_at_ms: due_ms,
        created_ms: due_ms,
        lease_until_ms: lease_until,
        success: None,
        last_error: None,
        on_failure: d.on_failure.clone(),
    };
    t.put_delivery(&rec)?;
    match lease_until {
        Some(until) => t.leased.insert((until, id), ())?,
        None => t.due.insert((due_ms, id), ())?,
    };
    if index == Indexed::Table {
        t.event_deliveries.insert((event_key, id), ())?;
    }
    Ok(rec)
}

/// Records an event and its deliveries. With `lease_ms`, the deliveries are
/// created leased and their records returned for the caller to run.
pub(super) fn commit(
    t: &mut WriteTables<'_>,
    ev: &NewEvent,
    row: &[u8],
    lease_ms: Option<u64>,
    keys: &mut KeyGen,
    fx: &mut Effects,
) -> Result<(Committed, Vec<DeliveryRecord>), StoreError> {
    let at = ev.received_ms;
    let event_dedup = (!ev.dedup_key.is_empty()).then(|| event_dedup_key(&ev.dedup_key));
    if let Some(k) = &event_dedup {
        if let Some(original) = live_dedup(t, k, at)? {
            return Ok((Committed::Duplicate { key: original }, Vec::new()));
        }
    }

    // Rule-level keys are judged against what was recorded before this event,
    // so a rule's several actions (sharing one key) are all kept.
    let mut blocked = HashSet::new();
    let mut fresh = Vec::new();
    let mut seen = HashSet::new();
    for d in &ev.deliveries {
        if let Some(k) = &d.dedup_key {
            let k = rule_dedup_key(&d.rule, k);
            if seen.insert(k.clone()) {
                if live_dedup(t, &k, at)?.is_some() {
                    blocked.insert(k);
                } else {
                    fresh.push(k);
                }
            }
        }
    }

    let key = keys.next(at);
    fx.dirty = true;
    if let Some(k) = &event_dedup {
        put_dedup(t, k, &key, ev.dedup_until_ms)?;
    }
    for k in &fresh {
        put_dedup(t, k, &key, ev.dedup_until_ms)?;
        t.rule_dedup.insert((key.as_str(), k.as_str()), ())?;
    }

    let mut ids = Vec::with_capacity(ev.deliveries.len());
    let mut leased = Vec::new();
    for d in &ev.deliveries {
        let skip = d
            .dedup_key
            .as_ref()
            .is_some_and(|k| blocked.contains(&rule_dedup_key(&d.rule, k)));
        if skip {
            continue;
        }
        let rec = create_delivery(
            t,
            &key,
            d,
            at,
            lease_ms.map(|l| at.saturating_add(l)),
            Indexed::InRow,
        )?;
        ids.push(rec.id);
        if lease_ms.is_some() {
            leased.push(rec);
        }
    }
    // The ids were handed out in one run, so the row's header names them all
    // and `event_deliveries` is not touched.
    match (ids.first(), ids.last()) {
        (Some(&first), Some(&last)) => {
            t.events.insert(
                key.as_str(),
                with_deliveries(row, first..last + 1).as_slice(),
            )?;
        }
        _ => {
            t.events.insert(key.as_str(), row)?;
        }
    }
    // Leased deliveries are the caller's to run; only queued ones need the
    // dispatcher to look.
    if !ids.is_empty() && lease_ms.is_none() {
        fx.wake = true;
    }
    Ok((
        Committed::Accepted {
            key,
            deliveries: ids,
        },
        leased,
    ))
}

/// [`Store::lease_due`](super::Store::lease_due) inside the writer's transaction.
pub(super) fn lease(
    t: &mut WriteTables<'_>,
    now: u64,
    limit: usize,
    lease_ms: u64,
    fx: &mut Effects,
) -> Result<Vec<LeasedRow>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Candidates: pending deliveries due by now, and leases that ran out
    // (their expiry is their due time). Both indexes are sorted by
    // (time, id), so the first `limit` of each suffice.
    let mut candidates: Vec<(u64, DeliveryId, bool)> = Vec::new();
    for item in t.due.range(..=(now, u64::MAX))?.take(limit) {
        let (k, _) = item?;
        let (at, id) = k.value();
        candidates.push((at, id, false));
    }
    for item in t.leased.range(..=(now, u64::MAX))?.take(limit) {
        let (k, _) = item?;
        let (at, id) = k.value();
        candidates.push((at, id, true));
    }
    candidates.sort_unstable();
    candidates.truncate(limit);

    let until = now.saturating_add(lease_ms);
    let mut rows: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
    let mut out = Vec::with_capacity(candidates.len());
    for (at, id, was_leased) in candidates {
        if was_leased {
            t.leased.remove((at, id))?;
        } else {
            t.due.remove((at, id))?;
        }
        fx.dirty = true;
        let Some(mut rec) = load_delivery(&t.deliveries, id)? else {
            tracing::warn!(delivery = id, "index entry without delivery row; dropped");
            continue;
        };
        let cached = rows.get(&rec.event_key).cloned();
        let found = match cached {
            Some(r) => Some(r),
            None => t
                .events
                .get(rec.event_key.as_str())?
                .map(|g| Arc::new(g.value().to_vec())),
        };
        let row = match found {
            Some(r) => {
                rows.insert(rec.event_key.clone(), r.clone());
                r
            }
            None => {
                // Cannot run without its event; park it where people look.
                tracing::warn!(delivery = id, event = %rec.event_key, "delivery without event; marked dead");
                rec.state = DeliveryState::Dead;
                rec.lease_until_ms = None;
                rec.last_error = Some("event record missing".to_owned());
                t.put_delivery(&rec)?;
                t.dead.insert(id, ())?;
                continue;
            }
        };
        rec.state = DeliveryState::Leased;
        rec.lease_until_ms = Some(until);
        t.put_delivery(&rec)?;
        t.leased.insert((until, id), ())?;
        out.push((rec, row));
    }
    Ok(out)
}

/// Cuts `s` to at most `max` bytes on a char boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// [`Store::finish_with`](super::Store::finish_with) inside the writer's
/// transaction; returns the ids of the follow-ups it created.
pub(super) fn finish(
    t: &mut WriteTables<'_>,
    id: DeliveryId,
    attempt: &Attempt,
    next: Next,
    follow_ups: &[NewDelivery],
    now: u64,
    fx: &mut Effects,
) -> Result<Vec<DeliveryId>, StoreError> {
    let Some(mut rec) = load_delivery(&t.deliveries, id)? else {
        return Err(StoreError::UnknownDelivery(id));
    };
    if !follow_ups.is_empty() && t.events.get(rec.event_key.as_str())?.is_none() {
        return Err(StoreError::UnknownEvent(rec.event_key));
    }

    let mut attempt = attempt.clone();
    if let Some(detail) = &mut attempt.detail {
        truncate(detail, MAX_DETAIL_BYTES);
    }
    let n = rec.attempts.saturating_add(1);
    if rec.state.is_final() || next != Next::Done {
        t.attempts
            .insert((id, n), serde_json::to_vec(&attempt)?.as_slice())?;
    }
    rec.attempts = n;
    fx.dirty = true;
    if attempt.outcome != AttemptOutcome::Ok {
        rec.last_error = Some(match (&attempt.detail, attempt.status) {
            (Some(d), _) => d.clone(),
            (None, Some(status)) => format!("{} (status {status})", attempt.outcome),
            (None, None) => attempt.outcome.to_string(),
        });
    }

    if rec.state.is_final() {
        // A worker whose lease ran out finished after another one did: keep
        // its attempt for the record, but the first decision stands and its
        // follow-ups were already created.
        tracing::debug!(delivery = id, state = %rec.state, "finish on a finished delivery; attempt recorded only");
        t.put_delivery(&rec)?;
        return Ok(Vec::new());
    }
    match rec.state {
        DeliveryState::Pending => {
            t.due.remove((rec.due_at_ms, id))?;
        }
        DeliveryState::Leased => {
            if let Some(until) = rec.lease_until_ms {
                t.leased.remove((until, id))?;
            }
        }
        DeliveryState::Done | DeliveryState::Dead => {}
    }
    rec.lease_until_ms = None;
    match next {
        Next::Done => {
            rec.state = DeliveryState::Done;
            rec.success = Some(attempt);
        }
        Next::RetryAt(at) => {
            rec.state = DeliveryState::Pending;
            rec.due_at_ms = at;
            t.due.insert((at, id), ())?;
            // The dispatcher may be sleeping past `at`.
            fx.wake = true;
        }
        Next::Dead => {
            rec.state = DeliveryState::Dead;
            t.dead.insert(id, ())?;
        }
    }
    t.put_delivery(&rec)?;

    let mut ids = Vec::with_capacity(follow_ups.len());
    for d in follow_ups {
        ids.push(create_delivery(t, &rec.event_key, d, now, None, Indexed::Table)?.id);
        fx.wake = true;
    }
    Ok(ids)
}

/// [`Store::replay`](super::Store::replay) inside the writer's transaction.
pub(super) fn replay(
    t: &mut WriteTables<'_>,
    event_key: &str,
    deliveries: &[NewDelivery],
    now: u64,
    fx: &mut Effects,
) -> Result<Vec<DeliveryId>, StoreError> {
    if t.events.get(event_key)?.is_none() {
        return Err(StoreError::UnknownEvent(event_key.to_owned()));
    }
    let mut ids = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        ids.push(create_delivery(t, event_key, d, now, None, Indexed::Table)?.id);
        fx.dirty = true;
        fx.wake = true;
    }
    Ok(ids)
}
