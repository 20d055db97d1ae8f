//! What each write command does inside the writer's transaction: commit an
//! event (event- and rule-level dedup, key and id allocation, deliveries
//! created due or already leased), record an attempt's outcome with its
//! follow-ups, and replay an event; and the steps they share: creating a
//! delivery, its rule's `on_failure` reactions, moving a delivery to a final
//! state. Also the encoding of a new event's row, done by the caller before
//! it queues the commit. Leasing, with its group and expiry decisions, is in
//! `lease`; cancel requests and their `on_cancel` reactions in `cancel`; the
//! burst and budget decisions of a commit (`debounce:`, `limit:`, `delay:`)
//! in `bursts`.
//!
//! Every function here runs on the writer thread against one open
//! transaction and reports what the transaction must do after it (commit,
//! wake the dispatcher) in [`Effects`]. A not-found error is raised before
//! the first write, because the transaction carries on with the other
//! commands of its batch.

mod bursts;
mod cancel;
mod lease;

use std::collections::HashSet;
use std::sync::Arc;

use redb::ReadableTable;
use serde::Serialize;

use super::StoreError;
use super::schema::{
    WriteTables, event_dedup_key, group_id, load_delivery, rule_dedup_key, with_deliveries,
};
use super::types::{
    Attempt, AttemptOutcome, Committed, DeliveryId, DeliveryRecord, DeliveryState, FailureContext,
    MAX_DETAIL_BYTES, NewDelivery, NewEvent, Next,
};
use crate::clock;
use crate::rules::ActionList;

pub(super) use bursts::defer;
pub(super) use cancel::{cancel_event, cancel_group};
pub(in crate::store) use lease::REASON_NEWER;
pub(super) use lease::lease;
use lease::promote;

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

    pub(super) fn next(&mut self, ms: u64) -> String {
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
    /// A decision was taken that a crash must not undo (a cancel, a skip,
    /// an expiry...): commit durably even if the op alone would not.
    pub decided: bool,
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
        reply: ev.reply.as_ref(),
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
    /// Only when a `respond:` answered the event; older rows lack it.
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<&'a super::types::Reply>,
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
/// until `lease_until` (its caller runs it from memory), or `Dead` when it
/// could not be planned (`d.error`).
fn create_delivery(
    t: &mut WriteTables<'_>,
    event_key: &str,
    d: &NewDelivery,
    due_ms: u64,
    lease_until: Option<u64>,
    index: Indexed,
) -> Result<DeliveryRecord, StoreError> {
    create_delivery_at(t, event_key, d, due_ms, due_ms, lease_until, index)
}

/// [`create_delivery`], created at `created_ms` but due at `due_ms` (a
/// `delay:`, a limit's slot or a debounce window put it later).
fn create_delivery_at(
    t: &mut WriteTables<'_>,
    event_key: &str,
    d: &NewDelivery,
    created_ms: u64,
    due_ms: u64,
    lease_until: Option<u64>,
    index: Indexed,
) -> Result<DeliveryRecord, StoreError> {
    let id = t.next_delivery_id()?;
    let state = if d.error.is_some() {
        DeliveryState::Dead
    } else if lease_until.is_some() {
        DeliveryState::Leased
    } else {
        DeliveryState::Pending
    };
    let rec = DeliveryRecord {
        id,
        event_key: event_key.to_owned(),
        rule: d.rule.clone(),
        action: d.action,
        kind: d.kind,
        state,
        attempts: 0,
        due_at_ms: due_ms,
        created_ms,
        lease_until_ms: lease_until.filter(|_| state == DeliveryState::Leased),
        success: None,
        last_error: d.error.clone(),
        on_failure: d.on_failure.clone(),
        list: d.list,
        then: d.then.clone(),
        group: d.group.clone(),
        parent: d.parent,
        result: d.result.clone(),
        cancel: None,
        cancel_reason: d.cancel_reason.clone(),
        deadline_ms: d.start_within_ms.map(|w| created_ms.saturating_add(w)),
        waited: false,
        debounce: None,
    };
    t.put_delivery(&rec)?;
    match (state, lease_until) {
        (DeliveryState::Dead, _) => t.dead.insert(id, ())?,
        (_, Some(until)) => t.leased.insert((until, id), ())?,
        (_, None) => t.due.insert((due_ms, id), ())?,
    };
    if index == Indexed::Table {
        t.event_deliveries.insert((event_key, id), ())?;
    }
    Ok(rec)
}

/// Creates follow-ups for an event that already has its row, due now; for
/// each one created dead (it could not be planned), its rule's
/// `on_failure` deliveries too. Returns the ids of all of them.
fn create_follow_ups(
    t: &mut WriteTables<'_>,
    event_key: &str,
    follow_ups: &[NewDelivery],
    now: u64,
    fx: &mut Effects,
) -> Result<Vec<DeliveryId>, StoreError> {
    let mut ids = Vec::with_capacity(follow_ups.len());
    for d in follow_ups {
        let rec = create_delivery(t, event_key, d, now, None, Indexed::Table)?;
        ids.push(rec.id);
        fx.dirty = true;
        fx.wake = true;
        if rec.state == DeliveryState::Dead {
            ids.extend(failed_at_birth(t, &rec, now, fx)?);
        }
    }
    Ok(ids)
}

/// The `on_failure` deliveries of a delivery created dead.
fn failed_at_birth(
    t: &mut WriteTables<'_>,
    rec: &DeliveryRecord,
    now: u64,
    fx: &mut Effects,
) -> Result<Vec<DeliveryId>, StoreError> {
    let failure = FailureContext {
        delivery: rec.id,
        action: rec.action,
        attempts: 0,
        last_error: rec.last_error.clone(),
        reason: None,
    };
    on_failure(t, rec, failure, now, fx)
}

/// Creates `rec`'s rule's `on_failure` deliveries (not for a delivery that
/// is itself a reaction: those do not chain).
fn on_failure(
    t: &mut WriteTables<'_>,
    rec: &DeliveryRecord,
    failure: FailureContext,
    now: u64,
    fx: &mut Effects,
) -> Result<Vec<DeliveryId>, StoreError> {
    if rec.list != ActionList::Actions {
        return Ok(Vec::new());
    }
    let Some(plan) = t.follow_ups.clone() else {
        return Ok(Vec::new());
    };
    let mut ids = Vec::new();
    for d in plan.on_failure(&rec.rule, &failure) {
        let created = create_delivery(t, &rec.event_key, &d, now, None, Indexed::Table)?;
        ids.push(created.id);
        fx.dirty = true;
        fx.wake = true;
    }
    Ok(ids)
}

/// Takes `rec` out of the index of its current state.
fn unindex(t: &mut WriteTables<'_>, rec: &DeliveryRecord) -> Result<(), StoreError> {
    match rec.state {
        DeliveryState::Pending => {
            t.due.remove((rec.due_at_ms, rec.id))?;
            if let Some(slot) = &rec.group {
                let gid = group_id(rec, slot);
                t.group_wait.remove((gid.as_str(), rec.id))?;
            }
        }
        DeliveryState::Leased => {
            if let Some(until) = rec.lease_until_ms {
                t.leased.remove((until, rec.id))?;
            }
        }
        state => {
            if let Some(table) = t.final_table(state) {
                table.remove(rec.id)?;
            }
        }
    }
    Ok(())
}

/// Moves `rec` to a final state and stores it. A running group member that
/// leaves makes room: its group's oldest waiting member becomes due.
fn end(
    t: &mut WriteTables<'_>,
    rec: &mut DeliveryRecord,
    state: DeliveryState,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let was_running = rec.state == DeliveryState::Leased;
    unindex(t, rec)?;
    rec.state = state;
    rec.lease_until_ms = None;
    if let Some(table) = t.final_table(state) {
        table.insert(rec.id, ())?;
    }
    t.put_delivery(rec)?;
    fx.dirty = true;
    if state != DeliveryState::Done {
        fx.decided = true;
    }
    if was_running {
        promote(t, rec, fx)?;
    }
    Ok(())
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
    let mut dead = Vec::new();
    let mut rest = ev.deliveries.as_slice();
    while let Some(head) = rest.first() {
        // One rule's deliveries share its pacing, decided once for them.
        let n = match &head.pacing {
            Some(p) => rest
                .iter()
                .take_while(|d| d.pacing.as_ref().is_some_and(|q| Arc::ptr_eq(p, q)))
                .count(),
            None => 1,
        };
        let (run, tail) = rest.split_at(n);
        rest = tail;
        let run: Vec<&NewDelivery> = run
            .iter()
            .filter(|d| {
                !d.dedup_key
                    .as_ref()
                    .is_some_and(|k| blocked.contains(&rule_dedup_key(&d.rule, k)))
            })
            .collect();
        let admission = match run.first().and_then(|d| d.pacing.as_ref()) {
            Some(p) => Some(bursts::admit(t, p, at)?),
            None => None,
        };
        let due = admission.as_ref().map_or(at, |a| a.due_ms);
        // Only deliveries that may start now are handed out leased.
        let lease_until = lease_ms
            .filter(|_| {
                admission
                    .as_ref()
                    .is_none_or(|a| a.dropped.is_none() && due <= at)
            })
            .map(|l| at.saturating_add(l));
        let mut waiting = Vec::new();
        for d in run {
            let mut rec = create_delivery_at(t, &key, d, at, due, lease_until, Indexed::InRow)?;
            ids.push(rec.id);
            if let Some(a) = &admission
                && !rec.state.is_final()
            {
                if let Some(why) = &a.dropped {
                    rec.last_error = Some(why.clone());
                    end(t, &mut rec, DeliveryState::Dropped, fx)?;
                } else if let Some(b) = &a.burst {
                    rec.debounce = Some(b.info);
                    t.put_delivery(&rec)?;
                    waiting.push(rec.clone());
                }
            }
            if rec.state == DeliveryState::Dead {
                dead.push(rec);
            } else if rec.state == DeliveryState::Leased {
                leased.push(rec);
            }
        }
        if let Some(b) = admission.as_ref().and_then(|a| a.burst.as_ref()) {
            bursts::settle(t, b, &waiting, fx)?;
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
    // Deliveries that could not be planned are dead already; their rule's
    // on_failure deliveries come after the event's run of ids.
    for rec in &dead {
        failed_at_birth(t, rec, at, fx)?;
    }
    // Leased deliveries are the caller's to run; only queued ones need the
    // dispatcher to look.
    if ids.len() > leased.len() {
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
///
/// A delivery whose cancel was requested ends `Cancelled` whatever the
/// attempt did (the attempt stays in its history), and none of the
/// follow-ups are created. A success creates them (the `then:` children) in
/// this same commit, so they exist if and only if the success is recorded.
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
    fx.dirty = true;
    if next == Next::Skipped {
        // Nothing ran: no attempt to record.
        if !rec.state.is_final() {
            rec.last_error = attempt.detail.clone();
            end(t, &mut rec, DeliveryState::Skipped, fx)?;
        }
        return Ok(Vec::new());
    }

    let mut attempt = attempt.clone();
    if let Some(detail) = &mut attempt.detail {
        truncate(detail, MAX_DETAIL_BYTES);
    }
    let n = rec.attempts.saturating_add(1);
    let cancelled = rec.cancel.is_some() && !rec.state.is_final();
    if rec.state.is_final() || next != Next::Done || cancelled {
        t.attempts
            .insert((id, n), serde_json::to_vec(&attempt)?.as_slice())?;
    }
    rec.attempts = n;
    if attempt.outcome != AttemptOutcome::Ok {
        rec.last_error = Some(match (&attempt.detail, attempt.status) {
            (Some(d), _) => d.clone(),
            (None, Some(status)) => format!("{} (status {status})", attempt.outcome),
            (None, None) => attempt.outcome.to_string(),
        });
    }

    if rec.state.is_final() {
        // A worker whose lease ran out finished after another one did (or
        // after a cancel decided): keep its attempt for the record, but the
        // first decision stands and its follow-ups were already created.
        tracing::debug!(delivery = id, state = %rec.state, "finish on a finished delivery; attempt recorded only");
        t.put_delivery(&rec)?;
        return Ok(Vec::new());
    }
    if cancelled {
        end(t, &mut rec, DeliveryState::Cancelled, fx)?;
        return Ok(Vec::new());
    }
    match next {
        Next::Done => {
            rec.success = Some(attempt);
            end(t, &mut rec, DeliveryState::Done, fx)?;
        }
        Next::Dead => end(t, &mut rec, DeliveryState::Dead, fx)?,
        Next::RetryAt(at) => {
            let was_running = rec.state == DeliveryState::Leased;
            unindex(t, &rec)?;
            rec.lease_until_ms = None;
            rec.state = DeliveryState::Pending;
            rec.due_at_ms = at;
            t.due.insert((at, id), ())?;
            t.put_delivery(&rec)?;
            // The dispatcher may be sleeping past `at`.
            fx.wake = true;
            if was_running {
                promote(t, &rec, fx)?;
            }
        }
        Next::Skipped => {}
    }
    create_follow_ups(t, &rec.event_key, follow_ups, now, fx)
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
    create_follow_ups(t, event_key, deliveries, now, fx)
}
