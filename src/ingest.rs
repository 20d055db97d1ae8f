//! From a verified event to a durable record: route, plan deliveries, commit.
//!
//! Owns what is written for an accepted event: its dedup key, the event, and
//! one delivery per (matched rule, action), with rule-level `dedup:` keys,
//! the rule's `delay:`, `debounce:` and `limit:` keys rendered (the store
//! decides them in the same commit), and the `respond:` answer, which a
//! duplicate gets again.
//! It does not speak HTTP (the server maps outcomes to status codes) and does
//! not run anything (the dispatcher does, from the store).
//!
//! One dependency runs ahead of the data on purpose: when the dispatcher has
//! free workers, the deliveries are committed already leased and handed to
//! it as a `dispatch::Claim`, skipping a trip through the store's queue. The
//! dispatcher imports nothing from here; keep it that way (see `lib.rs`).

use std::time::Duration;

use std::sync::Arc;

use crate::actions::render;
use crate::clock;
use crate::dispatch::{self, Claim, Dispatcher};
use crate::event::Event;
use crate::providers::Verified;
use crate::rules::{ActionList, Controls, Rule, RuleSet};
use crate::store::{
    Committed, DebounceSlot, DedupKey, LimitSlot, NewDelivery, NewEvent, Pacing, Reply, Store,
    StoreError,
};

/// What became of an accepted event.
pub enum Ingested {
    Accepted {
        id: String,
        key: String,
        /// Names of the matched rules.
        matched: Vec<String>,
        deliveries: usize,
        /// Deliveries committed leased to this process, to hand to the
        /// workers once the event is acknowledged (dropping it does too).
        run: Option<Claim>,
        /// What a `respond:` answers instead of the standard 202.
        reply: Option<Reply>,
    },
    Duplicate {
        id: String,
        key: String,
        /// The answer the original got from a `respond:`, stored with it.
        reply: Option<Reply>,
    },
}

/// The event-level dedup key: the same event id from the same source.
pub fn dedup_key(event: &Event) -> String {
    DedupKey::stored(&event.source, &event.id)
}

/// The deliveries an event creates under `set`, with the names of the rules
/// that matched. `only_rule` restricts them to one rule (replay).
pub fn plan(
    set: &RuleSet,
    event: &Event,
    only_rule: Option<&str>,
) -> (Vec<NewDelivery>, Vec<String>) {
    let mut deliveries = Vec::new();
    let mut matched = Vec::new();
    // Templates take a shared event; made once, and only for `when:`,
    // `dedup:` and group keys.
    let mut shared: Option<Arc<Event>> = None;
    let mut when_ctx = |rule: &crate::rules::Rule| {
        let shared = shared.get_or_insert_with(|| Arc::new(event.clone()));
        render::context(shared, &rule.name, None)
    };
    let rules = set.route(event, &mut when_ctx);
    if rules.is_empty() {
        tracing::debug!(event_id = %event.id, source = %event.source, "Event matched no rule.");
        for (rule, verdict) in set.explain(event, &mut when_ctx) {
            if let Err(why) = verdict {
                tracing::debug!(event_id = %event.id, rule = %rule.name, reason = %set.redact(&why), "Rule did not match.");
            }
        }
    }
    for rule in rules {
        if only_rule.is_some_and(|r| r != rule.name) {
            continue;
        }
        matched.push(rule.name.clone());
        let rule_key = rule.dedup.as_ref().and_then(|tpl| {
            let shared = shared.get_or_insert_with(|| Arc::new(event.clone()));
            let ctx = render::context(shared, &rule.name, None);
            match set.templates.render(tpl, &ctx) {
                Ok(k) => Some(format!("{}\u{0}rule\u{0}{}\u{0}{k}", event.source, rule.name)),
                Err(e) => {
                    // Without its key the rule falls back to event-level dedup.
                    tracing::warn!(event_id = %event.id, rule = %rule.name, error = %set.redact(&e.to_string()), "Dedup template failed; using the event id.");
                    None
                }
            }
        });
        let pacing = rule.controls.as_ref().map(|c| {
            let shared = shared.get_or_insert_with(|| Arc::new(event.clone()));
            let ctx = render::context(shared, &rule.name, None);
            pacing(set, rule, c, &ctx)
        });
        for (i, action) in rule.actions.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let mut d = if action.group.is_some() {
                let shared = shared.get_or_insert_with(|| Arc::new(event.clone()));
                let ctx = render::context(shared, &rule.name, None);
                dispatch::plan_delivery(set, rule, ActionList::Actions, index, &[], action, &ctx)
            } else {
                dispatch::plan_delivery_plain(rule, ActionList::Actions, index, &[], action)
            };
            d.dedup_key = rule_key.clone();
            match &pacing {
                Some(Ok(p)) => d.pacing = Some(Arc::clone(p)),
                Some(Err(e)) if d.error.is_none() => d.error = Some(e.clone()),
                _ => {}
            }
            deliveries.push(d);
        }
    }
    (deliveries, matched)
}

/// A rule's `delay:`, `debounce:` and `limit:` with their keys rendered
/// for one event, for the store to decide in the event's commit. A key
/// that does not render makes the rule's deliveries errors (created dead,
/// with its `on_failure`), as a group key does: guessing a key would merge
/// unrelated bursts or budgets.
fn pacing(
    set: &RuleSet,
    rule: &Rule,
    c: &Controls,
    ctx: &minijinja::Value,
) -> Result<Arc<Pacing>, String> {
    let render = |what: &str, tpl: &crate::template::Template| {
        set.templates
            .render(tpl, ctx)
            .map_err(|e| format!("{what} did not render: {}", set.redact(&e.to_string())))
    };
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let debounce = match &c.debounce {
        Some(d) => Some(DebounceSlot {
            key: format!("{}\u{0}{}", rule.name, render("debounce key", &d.key)?),
            quiet_ms: ms(d.quiet),
            max_wait_ms: ms(d.max_wait),
        }),
        None => None,
    };
    let mut limits = Vec::with_capacity(c.limits.len());
    for l in &c.limits {
        let key = match &l.key {
            Some(k) => render("limit key", k)?,
            None => String::new(),
        };
        limits.push(LimitSlot {
            key: format!("{}\u{0}{key}", l.id),
            label: l
                .name
                .clone()
                .unwrap_or_else(|| format!("of rule {}", rule.name)),
            count: l.rate.count,
            window_ms: l.rate.window_ms(),
            over: l.over,
        });
    }
    Ok(Arc::new(Pacing {
        delay_ms: c.delay.map_or(0, ms),
        debounce,
        limits,
    }))
}

/// Route and durably record a verified event. Returns only after the commit
/// is fsync'd, so an `Accepted` answer may be acknowledged with 2xx.
///
/// When the dispatcher has free workers, the deliveries are committed already
/// leased and come back in [`Ingested::Accepted`]'s `run`, which skips a trip
/// through the queue; otherwise they are queued and the dispatcher leases
/// them.
///
/// # Errors
/// The store's error; the caller answers 503 so the sender retries.
pub async fn ingest(
    set: &RuleSet,
    store: &Store,
    dispatcher: &Arc<Dispatcher>,
    event: Verified<Event>,
    dedup_window: Duration,
) -> Result<Ingested, StoreError> {
    let event = event.into_inner();
    let (deliveries, matched) = plan(set, &event, None);
    // Rendered now, sent only after the commit, and stored with the event
    // so a duplicate gets these same bytes whatever the rules are by then.
    let reply = crate::respond::reply(set, &event, &matched);
    let now = clock::now_ms();
    let window = u64::try_from(dedup_window.as_millis()).unwrap_or(u64::MAX);
    let id = event.id.clone();
    let n = deliveries.len();
    let claim = dispatcher.claim(set, &deliveries);
    let new = NewEvent {
        dedup_key: dedup_key(&event),
        dedup_until_ms: now.saturating_add(window),
        received_ms: now,
        deliveries,
        event,
        reply: reply.clone(),
    };
    let (committed, run) = match claim {
        Some(mut claim) => {
            let (c, leased) = store.commit_leased(new, Claim::LEASE_MS).await?;
            claim.committed(leased);
            (c, Some(claim))
        }
        None => (store.commit(new).await?, None),
    };
    Ok(match committed {
        Committed::Accepted { key, deliveries } => Ingested::Accepted {
            id,
            key,
            matched,
            deliveries: deliveries.len().min(n),
            run,
            reply,
        },
        Committed::Duplicate { key } => {
            // Read back rather than trusted from this render: the original
            // may have been answered under other rules, or not at all.
            let reply = store.reply_of(&key).await?;
            Ingested::Duplicate { id, key, reply }
        }
    })
}
