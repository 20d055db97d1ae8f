//! The dispatcher: from the stored delivery queue to actions that ran.
//!
//! Owns leasing due deliveries, the bounded worker pool (a global limit,
//! plus a lane per action with `concurrency: N`, whose N workers take its
//! deliveries in order of arrival), recording every attempt, the retry
//! schedule (exponential backoff with ±20% jitter, `Retry-After` honoured),
//! dead-lettering, and scheduling a rule's `on_failure` actions in the same
//! transaction that records the death, and its `then:` children in the one
//! that records the success. A 429 with `Retry-After` pauses the named
//! limits of the delivery's rule (`pause`). It also stops runs the store
//! marked cancelled (a token per running delivery), evaluates an action's
//! `when:` just before its attempt, and runs `cancel:` actions against the
//! store.
//!
//! The queue lives in the store, so a crash loses nothing: deliveries leased
//! by a process that died are due again when the store reopens.
//!
//! `ingest` imports this module on purpose, for its fast path: `claim`
//! reserves workers for an event's deliveries, which are then committed
//! already leased and run through the returned `Claim` without a trip
//! through the queue. This module imports nothing from `ingest`, or from
//! anything else that handles requests (see `lib.rs`).
//!
//! This file holds the `Dispatcher`, its pool, lanes and claims, and the
//! loop that leases from the queue; `attempt` runs one leased delivery and
//! records how it went, `running` keeps the cancel tokens of running
//! deliveries, and `plan` turns a rule's actions into new deliveries.

mod attempt;
mod pause;
mod plan;
mod running;

use plan::Reactions;
pub use plan::{plan_delivery, plan_delivery_plain};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rand::SeedableRng as _;
use rand::rngs::SmallRng;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actions;
use crate::clock::unix_ms;
use crate::metrics::Metrics;
use crate::rules::{ActionRef, RetryPolicy, RuleSet};
use crate::store::{DeliveryId, Leased, NewDelivery, Store};

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
    /// Named limits paused by a 429 with `Retry-After`, until when.
    paused: pause::Paused,
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
                paused: pause::Paused::default(),
            }
        })
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
                || d.pacing.as_ref().is_some_and(|p| !p.immediate())
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
        // Lease failures in a row: a store that is down (PostgreSQL away) is
        // said once, waited out with a growing pause, and its return noted.
        let mut failures: u32 = 0;
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
                    if failures > 0 {
                        tracing::info!(failures, "Leasing deliveries works again.");
                        failures = 0;
                    }
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
                    failures = failures.saturating_add(1);
                    let pause = IDLE * failures.min(5);
                    if failures == 1 {
                        tracing::error!(error = %e, "Leasing deliveries failed; retrying until it works.");
                    } else {
                        tracing::debug!(error = %e, failures, "Leasing deliveries failed again.");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
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
