//! Cancel requests inside the writer's transaction: cancelling an event's
//! deliveries or a group's (`cancel:` actions), a waiting delivery ending
//! `Cancelled` at once and a running one marked to be stopped, and the
//! `on_cancel` reactions, created once per cancelled (event, rule).

use std::collections::HashSet;

use redb::ReadableTable;

use super::super::StoreError;
use super::super::schema::{WriteTables, decode_event_keys, delivery_ids_of, load_delivery};
use super::super::types::{CancelOutcome, DeliveryId, DeliveryRecord, DeliveryState};
use super::{Effects, Indexed, create_delivery, end, promote};
use crate::rules::ActionList;

/// Creates `rule`'s `on_cancel` deliveries for the event, unless the event
/// already has them: they run once per cancelled event.
pub(super) fn on_cancel(
    t: &mut WriteTables<'_>,
    event_key: &str,
    rule: &str,
    reason: &str,
    now: u64,
    fx: &mut Effects,
) -> Result<(), StoreError> {
    let Some(plan) = t.follow_ups.clone() else {
        return Ok(());
    };
    let Some(first) = t
        .events
        .get(event_key)?
        .map(|g| decode_event_keys(g.value()))
        .transpose()?
        .map(|row| row.first_deliveries)
    else {
        return Ok(());
    };
    for id in delivery_ids_of(&t.event_deliveries, event_key, first)? {
        if let Some(rec) = load_delivery(&t.deliveries, id)? {
            if rec.list == ActionList::OnCancel && rec.rule == rule {
                return Ok(());
            }
        }
    }
    for d in plan.on_cancel(rule, reason) {
        create_delivery(t, event_key, &d, now, None, Indexed::Table)?;
        fx.dirty = true;
        fx.wake = true;
    }
    Ok(())
}

/// Cancels the deliveries `targets` picks among `candidates`: a waiting one
/// ends `Cancelled` now; a running one is marked (it ends `Cancelled` when
/// its attempt is recorded, or when the store reopens) and reported to be
/// stopped. Each affected (event, rule) gets its `on_cancel` deliveries once.
fn cancel_each(
    t: &mut WriteTables<'_>,
    candidates: Vec<DeliveryId>,
    targets: &dyn Fn(&DeliveryRecord) -> bool,
    reason: &str,
    now: u64,
    fx: &mut Effects,
) -> Result<CancelOutcome, StoreError> {
    let mut out = CancelOutcome::default();
    let mut reacted: HashSet<(String, String)> = HashSet::new();
    for id in candidates {
        let Some(mut rec) = load_delivery(&t.deliveries, id)? else {
            continue;
        };
        if rec.state.is_final() || rec.list == ActionList::OnCancel || !targets(&rec) {
            continue;
        }
        match rec.state {
            DeliveryState::Leased => {
                if rec.cancel.is_some() {
                    continue;
                }
                rec.cancel = Some(reason.to_owned());
                t.put_delivery(&rec)?;
                fx.dirty = true;
                fx.decided = true;
                out.stopping.push(id);
            }
            _ => {
                rec.cancel = Some(reason.to_owned());
                end(t, &mut rec, DeliveryState::Cancelled, fx)?;
                // It may have been its group's head, made due when room
                // appeared: the next waiting member takes its turn, as on
                // expiry. When it was not, the head is only looked at once
                // more.
                promote(t, &rec, fx)?;
            }
        }
        out.cancelled += 1;
        if reacted.insert((rec.event_key.clone(), rec.rule.clone())) {
            on_cancel(t, &rec.event_key, &rec.rule, reason, now, fx)?;
        }
    }
    Ok(out)
}

/// [`Store::cancel_event`](crate::store::Store::cancel_event) inside the writer's
/// transaction.
pub(in crate::store) fn cancel_event(
    t: &mut WriteTables<'_>,
    event_key: &str,
    rule: Option<&str>,
    reason: &str,
    now: u64,
    fx: &mut Effects,
) -> Result<CancelOutcome, StoreError> {
    let Some(row) = t
        .events
        .get(event_key)?
        .map(|g| decode_event_keys(g.value()))
        .transpose()?
    else {
        return Err(StoreError::UnknownEvent(event_key.to_owned()));
    };
    let ids = delivery_ids_of(&t.event_deliveries, event_key, row.first_deliveries)?;
    cancel_each(
        t,
        ids,
        &|rec| rule.is_none_or(|r| r == rec.rule),
        reason,
        now,
        fx,
    )
}

/// [`Store::cancel_group`](crate::store::Store::cancel_group) inside the writer's
/// transaction: every unfinished delivery of `rule` whose group key is
/// `key`, found from the indexes of unfinished deliveries.
pub(in crate::store) fn cancel_group(
    t: &mut WriteTables<'_>,
    rule: &str,
    key: &str,
    reason: &str,
    now: u64,
    fx: &mut Effects,
) -> Result<CancelOutcome, StoreError> {
    let mut ids = Vec::new();
    for item in t.leased.iter()? {
        ids.push(item?.0.value().1);
    }
    for item in t.due.iter()? {
        ids.push(item?.0.value().1);
    }
    let prefix = format!("{rule}\u{0}");
    for item in t.group_wait.range((prefix.as_str(), 0u64)..)? {
        let (k, _) = item?;
        let (gid, id) = k.value();
        if !gid.starts_with(&prefix) {
            break;
        }
        ids.push(id);
    }
    ids.sort_unstable();
    ids.dedup();
    cancel_each(
        t,
        ids,
        &|rec| rec.rule == rule && rec.group.as_ref().is_some_and(|g| g.key == key),
        reason,
        now,
        fx,
    )
}
