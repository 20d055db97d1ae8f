//! Named limits paused by a `429 Too Many Requests` with `Retry-After`.
//!
//! The service behind a named limit said to wait: every delivery of every
//! rule naming the limit waits, not only the one that got the answer. A
//! paused delivery is handed back to the store unrun, due when the pause
//! ends ([`crate::store::Store::defer`]). The pause itself is kept here, in
//! memory: it is as old as the answer that set it, and a restart forgets
//! it (the next 429 sets it again).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::rules::Rule;

#[derive(Default)]
pub(super) struct Paused(Mutex<HashMap<String, u64>>);

impl Paused {
    /// Pauses the named limits of `rule` until `until_ms` (a longer pause
    /// already set stays). Returns the names paused.
    pub(super) fn pause(&self, rule: &Rule, until_ms: u64) -> Vec<String> {
        let names = named(rule);
        if names.is_empty() {
            return names;
        }
        let mut map = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        for n in &names {
            let slot = map.entry(n.clone()).or_default();
            *slot = (*slot).max(until_ms);
        }
        names
    }

    /// Until when a delivery of `rule` must wait at `now_ms`, if one of its
    /// named limits is paused.
    pub(super) fn until(&self, rule: &Rule, now_ms: u64) -> Option<u64> {
        let controls = rule.controls.as_ref()?;
        if controls.limits.iter().all(|l| l.name.is_none()) {
            return None;
        }
        let mut map = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.retain(|_, until| *until > now_ms);
        controls
            .limits
            .iter()
            .filter_map(|l| l.name.as_ref().and_then(|n| map.get(n)).copied())
            .max()
    }
}

fn named(rule: &Rule) -> Vec<String> {
    rule.controls
        .as_ref()
        .map(|c| c.limits.iter().filter_map(|l| l.name.clone()).collect())
        .unwrap_or_default()
}
