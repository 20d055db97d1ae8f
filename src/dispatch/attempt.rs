//! One attempt of a leased delivery: its template context, its `when:`,
//! running its action (or a `cancel:` against the store), and recording
//! the outcome with the retry schedule and the follow-ups it creates: the
//! rule's `on_failure` deliveries on a death, the action's `then:` children
//! on a success.

use std::time::{Instant, SystemTime};

use rand::Rng as _;
use tokio_util::sync::CancellationToken;

use super::{Dispatcher, backoff, plan_delivery, plan_delivery_plain};
use crate::actions::render;
use crate::actions::{self, AttemptResult, Job, Verdict};
use crate::clock::unix_ms;
use crate::rules::{Action, ActionKind, ActionList, RetryPolicy, Rule, RuleSet};
use crate::store::{Attempt, AttemptOutcome, FailureContext, Leased, NewDelivery, Next};

impl Dispatcher {
    pub(super) async fn execute(&self, leased: Leased) {
        let started = Instant::now();
        let at_ms = unix_ms(SystemTime::now());
        let set = self.rules.load_full();
        let d = &leased.delivery;
        let at = d.action_ref();
        let rule = set.rule(&at.rule);
        let action = set.action(&at);
        let cancel = self.token(d.id);
        if let Some(rule) = rule
            && at.list == ActionList::Actions
            && self.defer_if_paused(rule, &leased, at_ms).await
        {
            return;
        }
        let ctx = rule.map(|rule| self.context(rule, &leased));
        let ran = match (rule, action, &ctx) {
            (Some(rule), Some(action), Some(ctx)) => {
                self.attempt(&set, rule, action, &leased, ctx, &cancel)
                    .await
            }
            _ => Ran::Result(AttemptResult::fail(
                None,
                format!(
                    "rule {:?} or its action {} no longer exists",
                    d.rule,
                    d.action + 1
                ),
            )),
        };
        let result = match ran {
            Ran::Result(r) => r,
            Ran::Skipped(why) => {
                tracing::info!(event_id = %leased.event.id, rule = %d.rule, action = d.action + 1, "Delivery skipped: its when: is not true.");
                let attempt = Attempt {
                    at_ms,
                    duration_ms: 0,
                    outcome: AttemptOutcome::Ok,
                    status: None,
                    detail: Some(why),
                };
                if let Err(e) = self
                    .store
                    .finish_with(d.id, attempt, Next::Skipped, Vec::new())
                    .await
                {
                    tracing::error!(event_id = %leased.event.id, delivery = d.id, error = %e, "Recording the skip failed.");
                }
                self.forget(d.id);
                self.release(1);
                return;
            }
        };
        if let (Some(rule), Some(429), Verdict::Retry { after: Some(after) }) =
            (rule, result.status, &result.verdict)
        {
            let until = unix_ms(SystemTime::now())
                .saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
            let names = self.paused.pause(rule, until);
            if !names.is_empty() {
                tracing::warn!(event_id = %leased.event.id, rule = %d.rule, limits = %names.join(","), retry_after_ms = until.saturating_sub(at_ms), "429 with Retry-After: limits paused.");
            }
        }
        let attempt_no = d.attempts + 1;
        let policy = action.map_or(RetryPolicy::NONE, |a| a.retry);
        let next = match &result.verdict {
            // A stopped run ends as the store's cancel request says; a
            // retry would only be refused.
            _ if cancel.is_cancelled() => Next::Dead,
            Verdict::Done => Next::Done,
            Verdict::Fail => Next::Dead,
            Verdict::Retry { .. } if attempt_no >= policy.attempts => Next::Dead,
            Verdict::Retry { after } => {
                let jitter = match self.jitter.lock() {
                    Ok(mut rng) => rng.random_range(-0.2..=0.2),
                    Err(poisoned) => poisoned.into_inner().random_range(-0.2..=0.2),
                };
                let delay = backoff(&policy, attempt_no, *after, jitter);
                Next::RetryAt(
                    unix_ms(SystemTime::now())
                        + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                )
            }
        };
        let detail = set.redact(&result.detail);
        let follow_ups = match (next, rule, action) {
            (Next::Dead, Some(rule), _)
                if at.list == ActionList::Actions && !cancel.is_cancelled() =>
            {
                failure_deliveries(rule, &leased, attempt_no, &detail)
            }
            (Next::Done, Some(rule), Some(action)) if !action.then.is_empty() => {
                self.then_children(&set, rule, action, &leased, &result, ctx.as_ref())
            }
            _ => Vec::new(),
        };
        let outcome = match (&result.verdict, next) {
            (Verdict::Done, _) => AttemptOutcome::Ok,
            (_, Next::RetryAt(_)) => AttemptOutcome::Retry,
            _ => AttemptOutcome::Dead,
        };
        self.metrics
            .record_attempt(d.kind, outcome, started.elapsed().as_secs_f64());
        let event_id = &leased.event.id;
        // `status` is passed as the `Option` itself: tracing records the
        // number when there is one and leaves the field out when there is
        // none (a log action, a refused connection), never `Some(..)`/`None`.
        match next {
            _ if cancel.is_cancelled() => {
                tracing::info!(event_id = %event_id, rule = %d.rule, action = d.action + 1, attempt = attempt_no, status = result.status, "Delivery cancelled.")
            }
            Next::Done => {
                tracing::info!(event_id = %event_id, rule = %d.rule, action = d.action + 1, attempt = attempt_no, status = result.status, "Delivery done.")
            }
            Next::RetryAt(due) => {
                tracing::warn!(event_id = %event_id, rule = %d.rule, action = d.action + 1, attempt = attempt_no, status = result.status, retry_in_ms = due.saturating_sub(at_ms), error = %detail, "Delivery failed; will retry.")
            }
            Next::Dead | Next::Skipped => {
                tracing::error!(event_id = %event_id, rule = %d.rule, action = d.action + 1, attempt = attempt_no, status = result.status, error = %detail, "Delivery dead.")
            }
        }
        let attempt = Attempt {
            at_ms,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            outcome,
            status: result.status,
            detail: (!detail.is_empty()).then_some(detail),
        };
        if let Err(e) = self
            .store
            .finish_with(d.id, attempt, next, follow_ups)
            .await
        {
            // The lease stays; the delivery runs again after a restart.
            tracing::error!(event_id = %event_id, delivery = d.id, error = %e, "Recording the attempt failed.");
        }
        self.forget(d.id);
        self.release(1);
    }

    /// Hands the delivery back to the store, due when the pause ends, if a
    /// named limit of its rule is paused. Says whether it did.
    async fn defer_if_paused(&self, rule: &Rule, leased: &Leased, now_ms: u64) -> bool {
        let Some(until) = self.paused.until(rule, now_ms) else {
            return false;
        };
        let d = &leased.delivery;
        tracing::info!(event_id = %leased.event.id, rule = %d.rule, action = d.action + 1, wait_ms = until.saturating_sub(now_ms), "Delivery waits: a limit of its rule is paused.");
        if let Err(e) = self.store.defer(d.id, until).await {
            // The lease stays; the delivery runs again after a restart.
            tracing::error!(event_id = %leased.event.id, delivery = d.id, error = %e, "Deferring the delivery failed.");
        }
        self.forget(d.id);
        self.release(1);
        true
    }

    /// The template context of a delivery: the event's, plus `failure` for
    /// an on_failure delivery, `result` for a `then:` child, `cancel` for
    /// an on_cancel delivery and `debounce` for a debounced one.
    fn context(&self, rule: &Rule, leased: &Leased) -> minijinja::Value {
        let d = &leased.delivery;
        let failure = d.on_failure.as_ref().map(|f| failure_json(rule, f));
        let ctx = render::context(&leased.event, &rule.name, failure.as_ref());
        let ctx = match &d.debounce {
            Some(b) => render::extend(&ctx, render::debounce(b.count, b.first_ms)),
            // A replay runs without its burst: the event is a burst of one.
            None if rule.controls.as_ref().is_some_and(|c| c.debounce.is_some()) => {
                render::extend(&ctx, render::debounce_alone(&leased.event))
            }
            None => ctx,
        };
        match (&d.result, &d.cancel_reason) {
            (Some(result), _) => minijinja::context! {
                result => minijinja::Value::from(minijinja::value::Serde(result)),
                ..ctx
            },
            (None, Some(reason)) => minijinja::context! {
                cancel => minijinja::context! { reason => reason },
                ..ctx
            },
            (None, None) => ctx,
        }
    }

    async fn attempt(
        &self,
        set: &RuleSet,
        rule: &Rule,
        action: &Action,
        leased: &Leased,
        ctx: &minijinja::Value,
        cancel: &CancellationToken,
    ) -> Ran {
        let d = &leased.delivery;
        if let Some(when) = &action.when {
            match set.templates.render(when, ctx) {
                Ok(v) if v.trim().eq_ignore_ascii_case("true") => {}
                Ok(v) => {
                    return Ran::Skipped(format!("when: rendered {:?}", set.redact(v.trim())));
                }
                Err(e) => {
                    return Ran::Result(AttemptResult::fail(None, format!("when: {e}")));
                }
            }
        }
        if cancel.is_cancelled() {
            return Ran::Result(AttemptResult::fail(
                None,
                "cancelled before it started".to_owned(),
            ));
        }
        if let ActionKind::Cancel(c) = &action.kind {
            return Ran::Result(self.cancel_action(set, rule, c, leased, ctx).await);
        }
        let job = Job {
            action,
            context: ctx,
            rule: &rule.name,
            event_id: &leased.event.id,
            event_key: &d.event_key,
            delivery: d.id,
            cancel,
            files_dir: &self.files_dir,
        };
        // A cancel drops an HTTP call, and sends a process group SIGTERM
        // then, after the action's kill_grace, SIGKILL.
        Ran::Result(actions::run(set, &self.client, job).await)
    }

    /// A `cancel:` action: cancels the deliveries of the named rule whose
    /// group key is the rendered key, and stops those running. Finding
    /// nothing is a success too; the detail says how many.
    async fn cancel_action(
        &self,
        set: &RuleSet,
        rule: &Rule,
        c: &crate::rules::CancelAction,
        leased: &Leased,
        ctx: &minijinja::Value,
    ) -> AttemptResult {
        let key = match set.templates.render(&c.key, ctx) {
            Ok(k) => k,
            Err(e) => return AttemptResult::fail(None, format!("cancel key: {e}")),
        };
        let reason = format!(
            "cancelled by rule {} (event {})",
            rule.name, leased.event.id
        );
        match self.store.cancel_group(&c.rule, &key, &reason).await {
            Ok(out) => {
                // The store has told `stop` about the running ones.
                AttemptResult::done(
                    None,
                    format!(
                        "cancelled {} deliveries of rule {} ({} running)",
                        out.cancelled,
                        c.rule,
                        out.stopping.len()
                    ),
                )
            }
            Err(e) => AttemptResult::retry(None, format!("cancel failed: {e}"), None),
        }
    }

    /// The `then:` children of a successful delivery, with its `result`.
    fn then_children(
        &self,
        set: &RuleSet,
        rule: &Rule,
        action: &Action,
        leased: &Leased,
        result: &AttemptResult,
        ctx: Option<&minijinja::Value>,
    ) -> Vec<NewDelivery> {
        let d = &leased.delivery;
        let result = result.result_context();
        let Some(ctx) = ctx else {
            return Vec::new();
        };
        let child_ctx = minijinja::context! {
            result => minijinja::Value::from(minijinja::value::Serde(&result)),
            ..ctx.clone()
        };
        action
            .then
            .iter()
            .enumerate()
            .map(|(i, child)| {
                let mut path = d.then.clone();
                path.push(u32::try_from(i).unwrap_or(u32::MAX));
                let mut n = plan_delivery(set, rule, d.list, d.action, &path, child, &child_ctx);
                n.parent = Some(d.id);
                n.result = Some(result.clone());
                n
            })
            .collect()
    }
}

/// How an attempt went, before it is recorded.
enum Ran {
    Result(AttemptResult),
    /// The action's `when:` was not true; nothing ran.
    Skipped(String),
}

fn failure_json(rule: &Rule, f: &FailureContext) -> serde_json::Value {
    let kind = rule
        .actions
        .get(f.action as usize)
        .map_or("unknown", |a| a.kind.action_type().as_str());
    serde_json::json!({
        "delivery": f.delivery,
        "action": { "index": f.action + 1, "type": kind },
        "attempts": f.attempts,
        "last_error": f.last_error,
        "reason": f.reason.as_deref().unwrap_or("failed"),
    })
}

fn failure_deliveries(
    rule: &Rule,
    leased: &Leased,
    attempts: u32,
    detail: &str,
) -> Vec<NewDelivery> {
    rule.on_failure
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut d = plan_delivery_plain(
                rule,
                ActionList::OnFailure,
                u32::try_from(i).unwrap_or(u32::MAX),
                &[],
                a,
            );
            d.on_failure = Some(FailureContext {
                delivery: leased.delivery.id,
                action: leased.delivery.action,
                attempts,
                last_error: Some(detail.to_owned()),
                reason: None,
            });
            d
        })
        .collect()
}
