//! Planning deliveries from a rule's actions: a delivery's group key
//! (rendered once, when it is planned) and `start_within`, and the
//! reactions (`on_failure`, `on_cancel`) the store creates by itself from
//! the current rule set.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::rules::{Action, ActionList, ActionRef, Rule, RuleSet};
use crate::store::{FailureContext, FollowUps, GroupSlot, NewDelivery};

/// The message of the group-key error: the key is what makes a group, and
/// an empty one would put unrelated events together.
const EMPTY_GROUP_KEY: &str = "group key rendered empty";

/// A delivery of `action` (at `index` of `rule`'s `list`, then `then`),
/// planned with `ctx`: its group key rendered once, here, and its
/// `start_within`. A key that renders empty or fails makes the delivery an
/// error (created dead, with the rule's on_failure).
pub fn plan_delivery(
    set: &RuleSet,
    rule: &Rule,
    list: ActionList,
    index: u32,
    then: &[u32],
    action: &Action,
    ctx: &minijinja::Value,
) -> NewDelivery {
    let mut d = plan_delivery_plain(rule, list, index, then, action);
    if let Some(group) = &action.group {
        let key = match set.templates.render(&group.key, ctx) {
            Ok(k) if k.trim().is_empty() => Err(EMPTY_GROUP_KEY.to_owned()),
            Ok(k) => Ok(k),
            Err(e) => Err(format!(
                "group key did not render: {}",
                set.redact(&e.to_string())
            )),
        };
        match key {
            Ok(key) => {
                d.group = Some(GroupSlot {
                    key,
                    limit: group.limit.max(1),
                    on_busy: group.on_busy,
                });
            }
            Err(e) => d.error = Some(e),
        }
    }
    d
}

/// [`plan_delivery`] without a group key: for actions without `group:`,
/// or when the key comes from elsewhere (a replay keeps the stored one).
pub fn plan_delivery_plain(
    rule: &Rule,
    list: ActionList,
    index: u32,
    then: &[u32],
    action: &Action,
) -> NewDelivery {
    let mut d = NewDelivery::new(&rule.name, list, index, action.kind.action_type());
    d.then = then.to_vec();
    d.start_within_ms = action
        .start_within
        .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
    d
}

/// The rules' reactions the store creates itself (expiry, cancel, a
/// delivery that could not be planned), from the current rule set.
pub(super) struct Reactions(pub(super) Arc<ArcSwap<RuleSet>>);

impl FollowUps for Reactions {
    fn on_failure(&self, rule: &str, failure: &FailureContext) -> Vec<NewDelivery> {
        let set = self.0.load();
        let Some(rule) = set.rule(rule) else {
            return Vec::new();
        };
        list_deliveries(rule, ActionList::OnFailure, |d| {
            d.on_failure = Some(failure.clone());
        })
    }

    fn on_cancel(&self, rule: &str, reason: &str) -> Vec<NewDelivery> {
        let set = self.0.load();
        let Some(rule) = set.rule(rule) else {
            return Vec::new();
        };
        list_deliveries(rule, ActionList::OnCancel, |d| {
            d.cancel_reason = Some(reason.to_owned());
        })
    }

    fn concurrency(&self, action: &ActionRef) -> Option<u32> {
        self.0.load().action(action).and_then(|a| a.concurrency)
    }
}

/// One delivery per action of `rule`'s `list`, each adjusted by `with`.
fn list_deliveries(
    rule: &Rule,
    list: ActionList,
    with: impl Fn(&mut NewDelivery),
) -> Vec<NewDelivery> {
    rule.list(list)
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut d =
                plan_delivery_plain(rule, list, u32::try_from(i).unwrap_or(u32::MAX), &[], a);
            with(&mut d);
            d
        })
        .collect()
}
