//! Operations on stored events and deliveries that both the command line
//! and the admin API run: replay, cancel and delivery listing.
//!
//! Each takes a `Store` (and, where the running rules matter, a `RuleSet`)
//! and knows nothing of HTTP or terminals: `admin` maps the results to
//! status codes and JSON, `cmd::inspect` to tables and exit codes. A new
//! operation on deliveries lands here, once, and both callers gain it.

use crate::dispatch;
use crate::ingest;
use crate::rules::{ActionList, RuleSet};
use crate::store::{DeliveryRecord, DeliveryState, GroupSlot, NewDelivery, Store, StoreError};

/// Why a replay did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no such event")]
    NotFound,
    #[error("nothing to replay")]
    Nothing,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Create fresh deliveries for an event: one per (rule, action) it had, or,
/// when it had none, the ones the current rules give it. `only_rule`
/// restricts the replay to one rule. Dedup keys are ignored.
///
/// # Errors
/// An unknown event, nothing to replay, or a store failure.
pub async fn replay(
    set: Option<&RuleSet>,
    store: &Store,
    key: &str,
    only_rule: Option<&str>,
) -> Result<Vec<u64>, ReplayError> {
    let owned = key.to_owned();
    let detail = store
        .read(move |s| s.get_event(&owned))
        .await?
        .ok_or(ReplayError::NotFound)?;
    // The event's own deliveries, not the reactions (on_failure, on_cancel,
    // then: children): those follow from runs, not from the event. Any final
    // state replays, cancelled included: a replay is an explicit request.
    let mut pairs: Vec<(String, u32)> = detail
        .deliveries
        .iter()
        .filter(|d| d.record.list == ActionList::Actions && d.record.parent.is_none())
        .map(|d| (d.record.rule.clone(), d.record.action))
        .collect();
    pairs.sort();
    pairs.dedup();
    let mut deliveries: Vec<NewDelivery> = pairs
        .into_iter()
        .filter(|(rule, _)| only_rule.is_none_or(|r| r == rule))
        .filter_map(|(rule, action)| {
            let recorded = detail.deliveries.iter().find(|d| {
                d.record.rule == rule
                    && d.record.action == action
                    && d.record.list == ActionList::Actions
                    && d.record.parent.is_none()
            })?;
            // Under the running rules, only actions that still exist; from
            // the data file alone, what was recorded. The group key stays
            // the one rendered when the event came in.
            let mut d = match set {
                Some(set) => {
                    let r = set.rule(&rule)?;
                    let a = r.actions.get(action as usize)?;
                    let mut d =
                        dispatch::plan_delivery_plain(r, ActionList::Actions, action, &[], a);
                    d.group = match (&a.group, &recorded.record.group) {
                        (Some(g), Some(old)) => Some(GroupSlot {
                            key: old.key.clone(),
                            limit: g.limit.max(1),
                            on_busy: g.on_busy,
                        }),
                        _ => None,
                    };
                    d
                }
                None => {
                    let mut d =
                        NewDelivery::new(&rule, ActionList::Actions, action, recorded.record.kind);
                    d.group.clone_from(&recorded.record.group);
                    d
                }
            };
            // Each delivery is in its own event's run of arrivals; the
            // replay is an explicit request, not a duplicate.
            d.dedup_key = None;
            Some(d)
        })
        .collect();
    if let (Some(set), true) = (set, deliveries.is_empty() && detail.deliveries.is_empty()) {
        deliveries = ingest::plan(set, &detail.event, only_rule).0;
        for d in &mut deliveries {
            d.dedup_key = None;
        }
    }
    if deliveries.is_empty() {
        return Err(ReplayError::Nothing);
    }
    Ok(store.replay(key, deliveries).await?)
}

/// Why a cancel did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no such event")]
    NotFound,
    #[error(transparent)]
    Store(StoreError),
}

/// Cancels an event's unfinished deliveries (only `only_rule`'s, if given):
/// `{"cancelled": N, "stopping": M}`, N counting every delivery cancelled
/// and M the running ones among them, whose runs are being stopped. An
/// event with nothing left to cancel answers 0: not an error.
///
/// # Errors
/// An unknown event, or a store failure.
pub async fn cancel(
    store: &Store,
    key: &str,
    only_rule: Option<&str>,
) -> Result<serde_json::Value, CancelError> {
    let reason = match only_rule {
        Some(r) => format!("cancelled by hand (rule {r})"),
        None => "cancelled by hand".to_owned(),
    };
    match store.cancel_event(key, only_rule, &reason).await {
        Ok(out) => Ok(serde_json::json!({
            "cancelled": out.cancelled,
            "stopping": out.stopping.len(),
        })),
        Err(e) if e.is_not_found() => Err(CancelError::NotFound),
        Err(e) => Err(CancelError::Store(e)),
    }
}

/// Which deliveries to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFilter {
    All,
    State(DeliveryState),
}

impl DeliveryFilter {
    /// A state's name (`failed` is read as `dead`).
    ///
    /// # Errors
    /// Any other word, as a message.
    pub fn parse(s: &str) -> Result<DeliveryFilter, String> {
        s.parse::<DeliveryState>()
            .map(DeliveryFilter::State)
            .map_err(|e| e.to_string())
    }
}

/// List deliveries, newest first for final states. Blocking.
///
/// # Errors
/// The store's error.
pub fn list_deliveries(
    store: &Store,
    filter: DeliveryFilter,
    limit: usize,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    match filter {
        DeliveryFilter::All => store.list_deliveries(None, limit),
        DeliveryFilter::State(s) => store.list_deliveries(Some(s), limit),
    }
}
