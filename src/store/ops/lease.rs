//! [`Store::lease`](crate::store::Store::lease) inside the writer's
//! transaction, and the decisions each due delivery gets there: expired
//! (not started within its `start_within`), cancelled (its cancel request
//! outlived its lease), admitted to its group's slots, or, its group full,
//! handled by the group's `on_busy` (queue, replace, cancel, skip). Also the
//! promotion of a group's oldest waiting member when a running one leaves.

use std::collections::HashMap;
use std::sync::Arc;

use redb::ReadableTable;

use super::super::StoreError;
use super::super::schema::{WriteTables, group_id, load_delivery};
use super::super::types::{DeliveryId, DeliveryRecord, DeliveryState, FailureContext};
use super::cancel::on_cancel;
use super::{Effects, LeasedRow, end, on_failure};
use crate::rules::OnBusy;

/// What one lease found: deliveries to run, and running ones a group's
/// `on_busy: cancel` marked to stop.
#[derive(Default)]
pub(in crate::store) struct LeaseOut {
    pub rows: Vec<LeasedRow>,
    pub stop: Vec<DeliveryId>,
}

/// The running members of each group, worked out once per lease from the
/// `leased` index, then kept up to date as the lease goes.
#[derive(Default)]
struct Running {
    by_group: Option<HashMap<String, Vec<DeliveryId>>>,
}

impl Running {
    fn of<'a>(
        &'a mut self,
        t: &WriteTables<'_>,
        gid: &str,
    ) -> Result<&'a mut Vec<DeliveryId>, StoreError> {
        if self.by_group.is_none() {
            let mut map: HashMap<String, Vec<DeliveryId>> = HashMap::new();
            for item in t.leased.iter()? {
                let (k, _) = item?;
                let id = k.value().1;
                if let Some(rec) = load_delivery(&t.deliveries, id)? {
                    if let Some(slot) = &rec.group {
                        map.entry(group_id(&rec, slot)).or_default().push(id);
                    }
                }
            }
            self.by_group = Some(map);
        }
        Ok(self
            .by_group
            .get_or_insert_with(HashMap::new)
            .entry(gid.to_owned())
            .or_default())
    }
}

/// Why a running member of a group with `on_busy: cancel` is stopped.
pub(in crate::store) const REASON_NEWER: &str = "a newer delivery of its group";

/// [`Store::lease`](crate::store::Store::lease) inside the writer's transaction.
///
/// Each due delivery, in (due time, id) order, is decided here: expired (no
/// attempt started within its `start_within`), cancelled (its cancel request
/// outlived its lease), admitted to its group (which then leases its oldest
/// waiting members while it has room), or, its group full, handled by the
/// group's `on_busy`.
pub(in crate::store) fn lease(
    t: &mut WriteTables<'_>,
    now: u64,
    limit: usize,
    lease_ms: u64,
    fx: &mut Effects,
) -> Result<LeaseOut, StoreError> {
    let mut out = LeaseOut::default();
    if limit == 0 {
        return Ok(out);
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
    let mut running = Running::default();
    for (at, id, was_leased) in candidates {
        if out.rows.len() >= limit {
            break;
        }
        // An earlier decision of this lease may have taken the entry.
        let removed = if was_leased {
            t.leased.remove((at, id))?.is_some()
        } else {
            t.due.remove((at, id))?.is_some()
        };
        if !removed {
            continue;
        }
        fx.dirty = true;
        let Some(mut rec) = load_delivery(&t.deliveries, id)? else {
            tracing::warn!(delivery = id, "index entry without delivery row; dropped");
            continue;
        };
        if was_leased {
            if rec.cancel.is_some() {
                // Put back so `end` finds it where its state says.
                t.leased.insert((at, id), ())?;
                if let Some(r) = running.by_group.as_mut() {
                    for ids in r.values_mut() {
                        ids.retain(|&x| x != id);
                    }
                }
                end(t, &mut rec, DeliveryState::Cancelled, fx)?;
                continue;
            }
            grant(t, &mut rec, until, &mut rows, &mut out)?;
            continue;
        }
        if expire_if_late(t, &mut rec, now, fx)? {
            // Taken from `due`, it may have been its group's head, made due
            // when room appeared: the next waiting member takes its turn.
            // When it was not, the head is only looked at once more.
            promote(t, &rec, fx)?;
            continue;
        }
        let Some(slot) = rec.group.clone() else {
            grant(t, &mut rec, until, &mut rows, &mut out)?;
            continue;
        };
        let gid = group_id(&rec, &slot);
        let first_time = rec.attempts == 0 && !rec.waited;
        rec.waited = true;
        t.put_delivery(&rec)?;
        t.group_wait.insert((gid.as_str(), id), ())?;
        let full = running.of(t, &gid)?.len() >= slot.limit as usize;
        if !full {
            admit(
                t,
                &gid,
                slot.limit,
                now,
                until,
                &mut running,
                &mut rows,
                &mut out,
                limit,
                fx,
            )?;
            continue;
        }
        if !first_time {
            continue;
        }
        match slot.on_busy {
            OnBusy::Queue => {}
            OnBusy::Replace => supersede_waiting(t, &gid, id, fx)?,
            OnBusy::Cancel => {
                supersede_waiting(t, &gid, id, fx)?;
                let members = running.of(t, &gid)?.clone();
                for member in members {
                    if let Some(mut m) = load_delivery(&t.deliveries, member)? {
                        if m.cancel.is_none() {
                            m.cancel = Some(REASON_NEWER.to_owned());
                            t.put_delivery(&m)?;
                            fx.decided = true;
                            on_cancel(t, &m.event_key, &m.rule, REASON_NEWER, now, fx)?;
                            out.stop.push(member);
                        }
                    }
                }
            }
            OnBusy::Skip => {
                rec.last_error = Some("its group was busy".to_owned());
                end(t, &mut rec, DeliveryState::Skipped, fx)?;
            }
        }
    }
    Ok(out)
}

/// Leases the oldest waiting members of group `gid` while it has room and
/// the lease its budget. If members still wait in a group with room (the
/// budget ran out), the oldest is made due again so the next lease sees it.
#[allow(clippy::too_many_arguments)]
fn admit(
    t: &mut WriteTables<'_>,
    gid: &str,
    group_limit: u32,
    now: u64,
    until: u64,
    running: &mut Running,
    rows: &mut HashMap<String, Arc<Vec<u8>>>,
    out: &mut LeaseOut,
    budget: usize,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    loop {
        if running.of(t, gid)?.len() >= group_limit as usize {
            return Ok(());
        }
        let head = t
            .group_wait
            .range((gid, 0u64)..=(gid, u64::MAX))?
            .next()
            .transpose()?
            .map(|(k, _)| k.value().1);
        let Some(id) = head else {
            return Ok(());
        };
        if out.rows.len() >= budget {
            return promote_group(t, gid, fx);
        }
        t.group_wait.remove((gid, id))?;
        let Some(mut rec) = load_delivery(&t.deliveries, id)? else {
            continue;
        };
        // Not in `group_wait` any more: take it out of nothing else.
        if expire_if_late_unindexed(t, &mut rec, now, fx)? {
            continue;
        }
        if grant(t, &mut rec, until, rows, out)? {
            running.of(t, gid)?.push(id);
        }
    }
}

/// Marks every waiting member of group `gid` but `keep` superseded.
fn supersede_waiting(
    t: &mut WriteTables<'_>,
    gid: &str,
    keep: DeliveryId,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let mut waiting = Vec::new();
    for item in t.group_wait.range((gid, 0u64)..=(gid, u64::MAX))? {
        let (k, _) = item?;
        let id = k.value().1;
        if id != keep {
            waiting.push(id);
        }
    }
    for id in waiting {
        if let Some(mut rec) = load_delivery(&t.deliveries, id)? {
            rec.last_error = Some(format!("superseded by delivery {keep}"));
            end(t, &mut rec, DeliveryState::Superseded, fx)?;
        }
    }
    Ok(())
}

/// Marks a pending delivery `Expired` if its start deadline passed before
/// any attempt started, and creates its rule's `on_failure` deliveries with
/// `failure.reason: expired`. Says whether it did.
fn expire_if_late(
    t: &mut WriteTables<'_>,
    rec: &mut DeliveryRecord,
    now: u64,
    fx: &mut Effects,
) -> Result<bool, StoreError> {
    let late = rec.attempts == 0 && rec.deadline_ms.is_some_and(|d| now > d);
    if !late {
        return Ok(false);
    }
    rec.last_error = Some("not started within start_within".to_owned());
    end(t, rec, DeliveryState::Expired, fx)?;
    let failure = FailureContext {
        delivery: rec.id,
        action: rec.action,
        attempts: 0,
        last_error: rec.last_error.clone(),
        reason: Some("expired".to_owned()),
    };
    on_failure(t, rec, failure, now, fx)?;
    Ok(true)
}

/// [`expire_if_late`] for a delivery already out of every index.
fn expire_if_late_unindexed(
    t: &mut WriteTables<'_>,
    rec: &mut DeliveryRecord,
    now: u64,
    fx: &mut Effects,
) -> Result<bool, StoreError> {
    // `end` removes the due and group_wait entries, which are gone already;
    // removing a missing entry is harmless.
    expire_if_late(t, rec, now, fx)
}

/// Leases `rec` (already out of the due or leased index) with its event's
/// row. Says whether it did: a delivery without its event is parked dead.
fn grant(
    t: &mut WriteTables<'_>,
    rec: &mut DeliveryRecord,
    until: u64,
    rows: &mut HashMap<String, Arc<Vec<u8>>>,
    out: &mut LeaseOut,
) -> Result<bool, StoreError> {
    let id = rec.id;
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
            t.put_delivery(rec)?;
            t.dead.insert(id, ())?;
            return Ok(false);
        }
    };
    rec.state = DeliveryState::Leased;
    rec.lease_until_ms = Some(until);
    t.put_delivery(rec)?;
    t.leased.insert((until, id), ())?;
    out.rows.push((rec.clone(), row));
    Ok(true)
}

/// Makes the oldest waiting member of `rec`'s group due again, at the time
/// it was due before it waited, so it sorts ahead of every newer member.
/// Called when a running member leaves its slot.
pub(super) fn promote(
    t: &mut WriteTables<'_>,
    rec: &DeliveryRecord,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let Some(slot) = &rec.group else {
        return Ok(());
    };
    let gid = group_id(rec, slot);
    promote_group(t, &gid, fx)
}

fn promote_group(t: &mut WriteTables<'_>, gid: &str, fx: &mut Effects) -> Result<(), StoreError> {
    let head = t
        .group_wait
        .range((gid, 0u64)..=(gid, u64::MAX))?
        .next()
        .transpose()?
        .map(|(k, _)| k.value().1);
    let Some(id) = head else {
        return Ok(());
    };
    t.group_wait.remove((gid, id))?;
    if let Some(w) = load_delivery(&t.deliveries, id)? {
        t.due.insert((w.due_at_ms, id), ())?;
    }
    fx.dirty = true;
    fx.wake = true;
    Ok(())
}
