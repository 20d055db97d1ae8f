//! The dispatcher: from the stored delivery queue to actions that ran.
//!
//! Owns leasing due deliveries, the bounded worker pool (a global limit,
//! plus a lane per action with `concurrency: N`, whose N workers take its
//! deliveries in order of arrival), recording every attempt, the retry
//! schedule (exponential backoff with ±20% jitter, `Retry-After` honoured),
//! dead-lettering, and scheduling a rule's `on_failure` actions in the same
//! transaction that records the death, and its `then:` children in the one
//! that records the success. It also stops runs the store marked cancelled
//! (a token per running delivery), evaluates an action's `when:` just before
//! its attempt, and runs `cancel:` actions against the store.
//!
//! The queue lives in the store, so a crash loses nothing: deliveries leased
//! by a process that died are due again when the store reopens.
//!
//! `ingest` imports this module on purpose, for its fast path: `claim`
//! reserves workers for an event's deliveries, which are then committed
//! already leased and run through the returned `Claim` without a trip
//! through the queue. This module imports nothing from `ingest`, or from
//! anything else that handles requests (see `lib.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actions::render;
use crate::actions::{self, AttemptResult, Job, Verdict};
use crate::clock::unix_ms;
use crate::metrics::Metrics;
use crate::rules::{Action, ActionKind, ActionList, ActionRef, RetryPolicy, Rule, RuleSet};
use crate::store::{
    Attempt, AttemptOutcome, DeliveryId, FailureContext, FollowUps, GroupSlot, Leased, NewDelivery,
    Next, Store,
};

/// A lease outlives any action timeout; it only matters if a worker hangs,
/// since a restart frees every lease of the dead process.
const LEASE_MS: u64 = 24 * 3600 * 1000;
/// Retry-After is honoured up to this long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Longest idle sleep between looks at the queue.
const IDLE: Duration = Duration::from_secs(1);

/// A lane: the deliveries of one action with a `concurrency:` limit. The
/// limit is part of the key, so a reload that changes it starts a lane with
/// the new number of workers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LaneKey {
    action: ActionRef,
    concurrency: u32,
}

pub struct Dispatcher {
    rules: Arc<ArcSwap<RuleSet>>,
    metrics: Arc<Metrics>,
    store: Store,
    client: reqwest::Client,
    workers: Arc<Semaphore>,
    max_in_flight: usize,
    in_flight: AtomicUsize,
    slot_freed: Notify,
    /// The last lease filled every free slot: deliveries are waiting in the
    /// queue, so new events queue behind them instead of being claimed.
    backlog: AtomicBool,
    /// Cleared when shutdown begins; no new claims after that.
    accepting: AtomicBool,
    lanes: Mutex<HashMap<LaneKey, mpsc::UnboundedSender<Leased>>>,
    tracker: TaskTracker,
    /// Retry jitter. Seeded once at start rather than `rand::rng()`, whose
    /// lazy seeding can fail, and would then panic, on the first retry.
    jitter: Mutex<SmallRng>,
    /// A token per delivery handed to the workers and not yet finished;
    /// cancelling it stops the run (or keeps it from starting).
    running: Mutex<HashMap<DeliveryId, CancellationToken>>,
    /// The base of each attempt's `files:` directory.
    files_dir: PathBuf,
}

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
struct Reactions(Arc<ArcSwap<RuleSet>>);

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

/// Worker slots reserved for the deliveries of one event about to be
/// committed, so they can be committed already leased and run straight from
/// memory ([`Store::commit_leased`]) instead of being queued and leased back.
///
/// Dropped, a claim hands its committed deliveries (see [`Claim::committed`])
/// to the workers, so they never wait for the lease to run out, and gives
/// back the slots it does not use.
pub struct Claim {
    dispatcher: Arc<Dispatcher>,
    slots: usize,
    leased: Vec<Leased>,
}

impl Claim {
    /// How long claimed deliveries are leased for.
    pub const LEASE_MS: u64 = LEASE_MS;

    /// Records what the commit created: at most the reserved number (a
    /// rule-level duplicate may have left fewer; a duplicate event, none).
    pub fn committed(&mut self, leased: Vec<Leased>) {
        self.leased = leased;
    }

    /// Runs the committed deliveries now (dropping the claim does the same).
    pub fn start(self) {
        drop(self);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let leased = std::mem::take(&mut self.leased);
        self.dispatcher
            .release(self.slots.saturating_sub(leased.len()));
        for l in leased {
            Arc::clone(&self.dispatcher).dispatch(l);
        }
    }
}

/// The delay before retry number `attempt` (1 = the first retry).
pub fn backoff(
    policy: &RetryPolicy,
    attempt: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let exp = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    let base = policy.backoff.saturating_mul(exp).min(policy.max_backoff);
    let jittered = base.mul_f64(1.0 + jitter.clamp(-0.2, 0.2));
    match retry_after {
        Some(after) => jittered.max(after.min(MAX_RETRY_AFTER)),
        None => jittered,
    }
}

impl Dispatcher {
    pub fn new(
        rules: Arc<ArcSwap<RuleSet>>,
        store: Store,
        metrics: Arc<Metrics>,
        workers: usize,
        jitter_seed: [u8; 32],
        files_dir: PathBuf,
    ) -> Arc<Dispatcher> {
        let workers = workers.max(1);
        store.set_follow_ups(Arc::new(Reactions(Arc::clone(&rules))));
        Arc::new_cyclic(|me: &std::sync::Weak<Dispatcher>| {
            let me = me.clone();
            store.set_stopper(Arc::new(move |ids: &[DeliveryId]| {
                if let Some(d) = me.upgrade() {
                    d.stop(ids);
                }
            }));
            Dispatcher {
                rules,
                metrics,
                store,
                client: actions::http::client(),
                workers: Arc::new(Semaphore::new(workers)),
                // Lease a little ahead of the workers so they never wait on the
                // store, but not so far that a crash leaves much to re-run.
                max_in_flight: workers * 4,
                in_flight: AtomicUsize::new(0),
                slot_freed: Notify::new(),
                backlog: AtomicBool::new(false),
                accepting: AtomicBool::new(true),
                lanes: Mutex::new(HashMap::new()),
                tracker: TaskTracker::new(),
                jitter: Mutex::new(SmallRng::from_seed(jitter_seed)),
                running: Mutex::new(HashMap::new()),
                files_dir,
            }
        })
    }

    /// Stops the runs of `ids` now (those not running here have nothing
    /// to stop: the store's record decides their end).
    pub fn stop(&self, ids: &[DeliveryId]) {
        if ids.is_empty() {
            return;
        }
        let running = match self.running.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        for id in ids {
            if let Some(token) = running.get(id) {
                tracing::info!(delivery = id, "Stopping a cancelled run.");
                token.cancel();
            }
        }
    }

    /// The cancel token of a delivery about to run, registered so that a
    /// cancel arriving before the run starts still stops it.
    fn token(&self, id: DeliveryId) -> CancellationToken {
        let mut running = match self.running.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        running.entry(id).or_default().clone()
    }

    fn forget(&self, id: DeliveryId) {
        let mut running = match self.running.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        running.remove(&id);
    }

    /// Reserves a worker slot for each of `deliveries` if all of them can run
    /// right away: the pool has room, nothing is waiting in the queue, and no
    /// action has `concurrency:` (a lane runs in queue order, which only the
    /// queue gives). `None` means: commit them queued, as usual.
    pub fn claim(self: &Arc<Self>, set: &RuleSet, deliveries: &[NewDelivery]) -> Option<Claim> {
        let n = deliveries.len();
        if n == 0 || !self.accepting.load(Ordering::Acquire) || self.backlog.load(Ordering::Acquire)
        {
            return None;
        }
        // Group members are admitted by the store's lease, which knows the
        // group's running members; they never skip the queue.
        let laned = deliveries.iter().any(|d| {
            d.group.is_some()
                || d.error.is_some()
                || set
                    .action(&d.action_ref())
                    .is_none_or(|a| a.concurrency.is_some() || a.group.is_some())
        });
        if laned {
            return None;
        }
        let reserved = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur + n <= self.max_in_flight).then_some(cur + n)
            });
        if reserved.is_err() {
            // This event queues; later ones queue behind it until the
            // dispatcher has caught up, so arrival order is kept.
            self.backlog.store(true, Ordering::Release);
            return None;
        }
        Some(Claim {
            dispatcher: Arc::clone(self),
            slots: n,
            leased: Vec::new(),
        })
    }

    fn release(&self, slots: usize) {
        if slots > 0 {
            self.in_flight.fetch_sub(slots, Ordering::AcqRel);
            self.slot_freed.notify_one();
        }
    }

    /// Lease and run deliveries until `shutdown`, then wait up to `grace` for
    /// running actions. Unfinished ones stay leased in the store and are due
    /// again at the next start.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, grace: Duration) {
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let notified = self.store.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let room = self
                .max_in_flight
                .saturating_sub(self.in_flight.load(Ordering::Acquire));
            if room == 0 {
                tokio::select! {
                    () = self.slot_freed.notified() => {}
                    () = tokio::time::sleep(IDLE) => {}
                    () = shutdown.cancelled() => break,
                }
                continue;
            }
            let now = unix_ms(SystemTime::now());
            match self.store.lease(now, room, LEASE_MS).await {
                Ok(leases) => {
                    let batch = leases.leased;
                    let full = batch.len() == room;
                    self.backlog.store(full, Ordering::Release);
                    for leased in batch {
                        self.in_flight.fetch_add(1, Ordering::AcqRel);
                        self.clone().dispatch(leased);
                    }
                    // After the dispatch registered their tokens: a member
                    // let in by this lease may be cancelled by a newer one
                    // in the same lease.
                    self.stop(&leases.stop);
                    if full {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "Leasing deliveries failed; retrying in 1s.");
                    tokio::select! {
                        () = tokio::time::sleep(IDLE) => {}
                        () = shutdown.cancelled() => break,
                    }
                    continue;
                }
            }
            let next = self.store.read(|s| s.next_due_ms()).await.ok().flatten();
            let wait = next.map_or(IDLE, |due| {
                Duration::from_millis(due.saturating_sub(unix_ms(SystemTime::now()))).min(IDLE)
            });
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => break,
            }
        }
        self.accepting.store(false, Ordering::Release);
        self.lanes.lock().map(|mut l| l.clear()).ok();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.in_flight.load(Ordering::Acquire),
                "Grace period over; unfinished deliveries run again at the next start."
            );
        }
    }

    fn dispatch(self: Arc<Self>, leased: Leased) {
        // Registered before it waits for a worker, so a cancel finds it.
        self.token(leased.delivery.id);
        let set = self.rules.load_full();
        let action = leased.delivery.action_ref();
        match set.action(&action).and_then(|a| a.concurrency) {
            Some(n) => {
                let key = LaneKey {
                    action,
                    concurrency: n,
                };
                let sender = self.lane(key, n);
                if let Err(mpsc::error::SendError(leased)) = sender.send(leased) {
                    // The lane is gone (shutdown); run it under the global limit.
                    self.spawn_global(leased);
                }
            }
            None => self.spawn_global(leased),
        }
    }

    fn spawn_global(self: Arc<Self>, leased: Leased) {
        let this = self.clone();
        self.tracker.spawn(async move {
            let Ok(_permit) = this.workers.clone().acquire_owned().await else {
                return;
            };
            this.execute(leased).await;
        });
    }

    fn lane(self: &Arc<Self>, key: LaneKey, n: u32) -> mpsc::UnboundedSender<Leased> {
        let Ok(mut lanes) = self.lanes.lock() else {
            // A poisoned lock only follows a panic elsewhere; a fresh lane
            // keeps the delivery moving.
            return self.start_lane(n);
        };
        lanes
            .entry(key)
            .or_insert_with(|| self.start_lane(n))
            .clone()
    }

    fn start_lane(self: &Arc<Self>, n: u32) -> mpsc::UnboundedSender<Leased> {
        let (tx, rx) = mpsc::unbounded_channel::<Leased>();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..n {
            let rx = rx.clone();
            let this = self.clone();
            self.tracker.spawn(async move {
                loop {
                    // Holding the receiver lock while waiting hands deliveries
                    // out strictly in order to whichever worker is free.
                    let next = rx.lock().await.recv().await;
                    match next {
                        Some(leased) => this.execute(leased).await,
                        None => break,
                    }
                }
            });
        }
        tx
    }

    async fn execute(&self, leased: Leased) {
        let started = Instant::now();
        let at_ms = unix_ms(SystemTime::now());
        let set = self.rules.load_full();
        let d = &leased.delivery;
        let at = d.action_ref();
        let rule = set.rule(&at.rule);
        let action = set.action(&at);
        let cancel = self.token(d.id);
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

    /// The template context of a delivery: the event's, plus `failure` for
    /// an on_failure delivery, `result` for a `then:` child and `cancel`
    /// for an on_cancel delivery.
    fn context(&self, rule: &Rule, leased: &Leased) -> minijinja::Value {
        let d = &leased.delivery;
        let failure = d.on_failure.as_ref().map(|f| failure_json(rule, f));
        let ctx = render::context(&leased.event, &rule.name, failure.as_ref());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_and_caps() {
        let p = RetryPolicy {
            attempts: 10,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
        };
        assert_eq!(backoff(&p, 1, None, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(&p, 2, None, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(&p, 3, None, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(&p, 5, None, 0.0), Duration::from_secs(10));
        assert_eq!(backoff(&p, 60, None, 0.0), Duration::from_secs(10));
    }

    #[test]
    fn jitter_is_bounded() {
        let p = RetryPolicy {
            attempts: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(100),
        };
        assert_eq!(backoff(&p, 1, None, 0.2), Duration::from_secs(12));
        assert_eq!(backoff(&p, 1, None, -0.9), Duration::from_secs(8));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(3)), 0.0),
            Duration::from_secs(3)
        );
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(99_999)), 0.0),
            MAX_RETRY_AFTER
        );
        assert_eq!(
            backoff(&p, 1, Some(Duration::ZERO), 0.0),
            Duration::from_millis(100)
        );
    }
}
