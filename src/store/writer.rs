//! The single writer thread: group commit and the write protocol.
//!
//! Owns group commit: one `std::thread` receives commands from a bounded
//! channel, drains everything queued (up to [`MAX_BATCH`]), applies all of it
//! in ONE redb write transaction (taking in, before it commits, whatever was
//! queued while it applied), commits durably (redb's default
//! `Durability::Immediate`, i.e. fsync) and only then answers each caller.
//! One fsync thus covers many webhooks under load, and nobody is told "stored"
//! before the data is on disk.
//!
//! It owns the commands the handle sends ([`Op`]) and their answers ([`Out`]),
//! the batch counters, and the choice of durability per transaction. What each
//! command does inside the transaction is in `ops` (commit, lease, finish,
//! replay) and `prune`; opening and migrating a file is in `migrate`. It does
//! not own the public handle, the read side or the table layout (`mod.rs`,
//! `schema.rs`).
//!
//! Failure isolation: a command that refers to something missing (unknown
//! event or delivery) is rejected before it writes anything, and the batch goes
//! on. Any other error (storage, corrupt row) aborts the whole transaction;
//! the batch is then retried one command per transaction, so one poisonous
//! command cannot fail its neighbours, while a dead disk fails each of them
//! with its own error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, WriteTransaction};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::clock::now_ms;

use super::StoreError;
use super::ops::{self, Effects, KeyGen, LeasedRow};
use super::prune::{self, PruneChunk, PruneOut};
use super::schema::WriteTables;
use super::types::{
    Attempt, BatchStats, CancelOutcome, Committed, DeliveryId, DeliveryRecord, FollowUps, Leased,
    NewDelivery, NewEvent, Next,
};

/// Most commands applied in one write transaction. Bounds how long a batch
/// holds the writer (and how much an aborted batch has to redo one by one).
pub(super) const MAX_BATCH: usize = 512;

/// A write request.
// Commits are most of the traffic and carry the event inline; boxing it would
// add an allocation to every ingest to shrink the rarer variants' slots.
#[allow(clippy::large_enum_variant)]
pub(super) enum Op {
    /// The event and its row, serialized by the caller so the single writer
    /// thread spends its time on the transaction, not on JSON. With a lease
    /// (ms), the deliveries are created already leased to the caller, which
    /// runs them from memory: no lease round trip through the queue.
    Commit(NewEvent, Vec<u8>, Option<u64>),
    Lease {
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    },
    Finish {
        delivery: DeliveryId,
        attempt: Attempt,
        next: Next,
        follow_ups: Vec<NewDelivery>,
    },
    Replay {
        event_key: String,
        deliveries: Vec<NewDelivery>,
    },
    /// Cancel an event's unfinished deliveries (of one rule, if given).
    CancelEvent {
        event_key: String,
        rule: Option<String>,
        reason: String,
    },
    /// Cancel the unfinished deliveries of `rule` whose group key is `key`.
    CancelGroup {
        rule: String,
        key: String,
        reason: String,
    },
    Prune(PruneChunk),
    /// Hand a leased delivery back unrun, due at `until_ms`.
    Defer {
        delivery: DeliveryId,
        until_ms: u64,
    },
}

/// The answer to an [`Op`].
pub(super) enum Out {
    /// With the records of the deliveries created leased, if any.
    Committed(Committed, Vec<DeliveryRecord>),
    /// A leased commit as handed back to its caller: the records joined with
    /// the event, which the op carried here and no longer needs.
    Claimed(Committed, Vec<Leased>),
    /// Leased deliveries with their event rows still encoded: decoding is
    /// left to the caller, off the writer thread.
    Leased(Vec<LeasedRow>, Vec<DeliveryId>),
    Ids(Vec<DeliveryId>),
    Cancelled(CancelOutcome),
    Pruned(PruneOut),
}

pub(super) type Reply = oneshot::Sender<Result<Out, StoreError>>;

/// Commands of one batch, each with the caller waiting for its answer.
pub(super) type Batch = Vec<(Op, Reply)>;

pub(super) enum Cmd {
    Op(Box<Op>, Reply),
    /// Finish what is queued, stop accepting commands, exit, then acknowledge.
    Shutdown(oneshot::Sender<()>),
}

/// State shared between the writer thread and the handles.
#[derive(Default)]
pub(super) struct Shared {
    /// Woken (`notify_one`, so a wake-up is never lost between a dispatcher's
    /// lease and its wait) after a commit that created due or soon-due work.
    pub notify: Arc<Notify>,
    pub counters: Counters,
    /// Time from a commit's request to its answer, on either engine.
    pub commit_latency: super::latency::CommitLatency,
    /// The running rules' reactions, for the follow-ups the store decides
    /// itself (expiry, cancel, a delivery that could not be planned).
    pub follow_ups: std::sync::RwLock<Option<Arc<dyn FollowUps>>>,
    /// Told the running deliveries a cancel marked, to stop their runs.
    pub stopper: std::sync::RwLock<Option<super::types::Stopper>>,
}

impl Shared {
    /// Installs the rules' reactions; a poisoned lock still takes the new
    /// value, since the old one is only ever replaced whole.
    pub fn set_follow_ups(&self, plan: Arc<dyn FollowUps>) {
        match self.follow_ups.write() {
            Ok(mut g) => *g = Some(plan),
            Err(poisoned) => *poisoned.into_inner() = Some(plan),
        }
    }
}

#[derive(Default)]
pub(super) struct Counters {
    transactions: AtomicU64,
    commands: AtomicU64,
    failed: AtomicU64,
    max_batch: AtomicU64,
    histogram: [AtomicU64; 8],
    /// Whether the most recent transaction failed: redb refuses writes after
    /// a failed commit until the file is reopened, so readiness follows it.
    last_failed: std::sync::atomic::AtomicBool,
}

impl Counters {
    pub(super) fn committed(&self, commands: usize) {
        let n = u64::try_from(commands).unwrap_or(u64::MAX);
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(false, Ordering::Relaxed);
        self.commands.fetch_add(n, Ordering::Relaxed);
        self.max_batch.fetch_max(n, Ordering::Relaxed);
        let slot = BatchStats::BUCKETS
            .iter()
            .position(|&bound| n <= bound)
            .unwrap_or(BatchStats::BUCKETS.len());
        if let Some(h) = self.histogram.get(slot) {
            h.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.last_failed.store(true, Ordering::Relaxed);
    }

    pub fn last_failed(&self) -> bool {
        self.last_failed.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> BatchStats {
        BatchStats {
            transactions: self.transactions.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
            failed_transactions: self.failed.load(Ordering::Relaxed),
            max_batch: self.max_batch.load(Ordering::Relaxed),
            histogram: self.histogram.each_ref().map(|h| h.load(Ordering::Relaxed)),
        }
    }
}

/// The writer thread's body. Returns when every handle is gone or after a
/// shutdown request, having answered every command it accepted.
pub(super) fn run(
    db: Arc<Database>,
    mut rx: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
    mut keys: KeyGen,
) {
    let mut acks = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = Vec::new();
        receive(first, &mut rx, &mut batch, &mut acks);
        drain(&mut rx, &mut batch, &mut acks);
        if !batch.is_empty() {
            let mut refill = |batch: &mut Batch| drain(&mut rx, batch, &mut acks);
            process(&db, &shared, &mut keys, batch, &mut refill);
        }
    }
    drop(db);
    tracing::debug!("store writer stopped");
    for ack in acks {
        let _ = ack.send(());
    }
}

fn receive(
    cmd: Cmd,
    rx: &mut mpsc::Receiver<Cmd>,
    batch: &mut Batch,
    acks: &mut Vec<oneshot::Sender<()>>,
) {
    match cmd {
        Cmd::Op(op, reply) => {
            #[cfg(debug_assertions)]
            crate::fault::writer_received(matches!(*op, Op::Commit(..)));
            batch.push((*op, reply));
        }
        Cmd::Shutdown(ack) => {
            // Commands already queued are still received and answered;
            // later sends fail, so callers get `Closed`.
            rx.close();
            acks.push(ack);
        }
    }
}

/// Moves what is queued into `batch`, up to [`MAX_BATCH`], without waiting.
fn drain(rx: &mut mpsc::Receiver<Cmd>, batch: &mut Batch, acks: &mut Vec<oneshot::Sender<()>>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(cmd) => receive(cmd, rx, batch, acks),
            Err(_) => break,
        }
    }
}

/// Applies one batch, and whatever `refill` adds to it while it is being
/// applied, then answers its callers.
pub(super) fn process(
    db: &Database,
    shared: &Shared,
    keys: &mut KeyGen,
    mut batch: Batch,
    refill: &mut dyn FnMut(&mut Batch),
) {
    let plan = follow_ups(shared);
    let result = transact_ops(
        db,
        &mut Growing {
            batch: &mut batch,
            refill,
        },
        keys,
        plan.clone(),
    );
    match result {
        Ok(done) => {
            finish_txn(shared, &done, batch.len());
            for ((op, reply), out) in batch.into_iter().zip(done.outs) {
                // A caller that gave up waiting is not an error here.
                let _ = reply.send(hand_back(op, out));
            }
        }
        Err(e) if batch.len() == 1 => {
            shared.counters.failed();
            tracing::error!(error = %e, "store write failed");
            if let Some((_, reply)) = batch.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
        Err(e) => {
            shared.counters.failed();
            tracing::warn!(error = %e, size = batch.len(), "store batch failed; retrying one by one");
            for (op, reply) in batch {
                let answer = match transact_ops(db, &mut &[&op][..], keys, plan.clone()) {
                    Ok(mut done) => {
                        finish_txn(shared, &done, 1);
                        let out = done
                            .outs
                            .pop()
                            .unwrap_or(Err(StoreError::Internal("missing answer")));
                        hand_back(op, out)
                    }
                    Err(e) => {
                        shared.counters.failed();
                        tracing::error!(error = %e, "store write failed");
                        Err(e)
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }
}

/// Joins the deliveries a commit created leased with the event the op
/// carried, moving it rather than cloning it or reading it back.
fn hand_back(op: Op, out: Result<Out, StoreError>) -> Result<Out, StoreError> {
    match (op, out) {
        (Op::Commit(ev, _, Some(_)), Ok(Out::Committed(c, records))) => {
            let event = Arc::new(ev.event);
            let leased = records
                .into_iter()
                .map(|delivery| Leased {
                    delivery,
                    event: Arc::clone(&event),
                })
                .collect();
            Ok(Out::Claimed(c, leased))
        }
        (_, out) => out,
    }
}

fn finish_txn(shared: &Shared, done: &Transacted, commands: usize) {
    if done.committed {
        shared.counters.committed(commands);
    }
    if done.wake {
        shared.notify.notify_one();
    }
}

pub(super) struct Transacted {
    pub outs: Vec<Result<Out, StoreError>>,
    pub committed: bool,
    pub wake: bool,
}

/// The ops of one transaction, which may grow while it is being applied.
trait Ops {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> Option<&Op>;
    /// Adds what arrived meanwhile; false when nothing did.
    fn refill(&mut self) -> bool;
}

impl Ops for &[&Op] {
    fn len(&self) -> usize {
        <[&Op]>::len(self)
    }
    fn get(&self, i: usize) -> Option<&Op> {
        <[&Op]>::get(self, i).copied()
    }
    fn refill(&mut self) -> bool {
        false
    }
}

/// A batch that takes in the commands queued while it was being applied:
/// they join this commit instead of waiting for the whole next one, which
/// costs them only their own apply time rather than another fsync.
struct Growing<'a> {
    batch: &'a mut Batch,
    refill: &'a mut dyn FnMut(&mut Batch),
}

impl Ops for Growing<'_> {
    fn len(&self) -> usize {
        self.batch.len()
    }
    fn get(&self, i: usize) -> Option<&Op> {
        self.batch.get(i).map(|(op, _)| op)
    }
    fn refill(&mut self) -> bool {
        let before = self.batch.len();
        (self.refill)(self.batch);
        self.batch.len() > before
    }
}

fn follow_ups(shared: &Shared) -> Option<Arc<dyn FollowUps>> {
    match shared.follow_ups.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Applies `ops` in one write transaction. `Err` means nothing was written.
#[cfg(test)]
pub(super) fn transact(
    db: &Database,
    mut ops: &[&Op],
    keys: &mut KeyGen,
) -> Result<Transacted, StoreError> {
    transact_ops(db, &mut ops, keys, None)
}

fn transact_ops(
    db: &Database,
    ops: &mut impl Ops,
    keys: &mut KeyGen,
    plan: Option<Arc<dyn FollowUps>>,
) -> Result<Transacted, StoreError> {
    let mut txn = db.begin_write()?;
    let mut fx = Effects::default();
    match apply_all(&txn, ops, keys, &mut fx, plan) {
        Ok(outs) => {
            // Leases and successful attempts need no fsync of their own: the
            // next durable commit persists them with everything else, and if
            // a crash comes first, the delivery is still leased in the file,
            // so it is due again at the next start and runs again (at least
            // once, never lost). A retry schedule, a death and its on_failure
            // deliveries are kept durably: they carry the attempt count that
            // bounds the retries.
            if !fx.decided
                && (0..ops.len()).all(|i| match ops.get(i) {
                    Some(Op::Lease { .. }) => true,
                    Some(Op::Finish {
                        next, follow_ups, ..
                    }) => *next == Next::Done && follow_ups.is_empty(),
                    _ => false,
                })
            {
                let _ = txn.set_durability(redb::Durability::None);
            }
            // A batch that only found nothing to lease needs no fsync.
            if fx.dirty {
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            Ok(Transacted {
                outs,
                committed: fx.dirty,
                wake: fx.wake,
            })
        }
        Err(e) => {
            if let Err(abort) = txn.abort() {
                tracing::warn!(error = %abort, "aborting store transaction failed");
            }
            Err(e)
        }
    }
}

fn apply_all(
    txn: &WriteTransaction,
    ops: &mut impl Ops,
    keys: &mut KeyGen,
    fx: &mut Effects,
    plan: Option<Arc<dyn FollowUps>>,
) -> Result<Vec<Result<Out, StoreError>>, StoreError> {
    let mut t = WriteTables::open(txn)?;
    t.follow_ups = plan;
    let now = now_ms();
    let mut outs = Vec::with_capacity(ops.len());
    loop {
        while let Some(op) = ops.get(outs.len()) {
            match apply(&mut t, op, now, keys, fx) {
                Ok(out) => outs.push(Ok(out)),
                Err(e) if e.is_not_found() => outs.push(Err(e)),
                Err(e) => return Err(e),
            }
        }
        if !ops.refill() {
            return Ok(outs);
        }
    }
}

/// Applies one op. Not-found errors must be raised before the first write,
/// because the transaction carries on with the other ops.
fn apply(
    t: &mut WriteTables<'_>,
    op: &Op,
    now: u64,
    keys: &mut KeyGen,
    fx: &mut Effects,
) -> Result<Out, StoreError> {
    match op {
        Op::Commit(ev, row, lease_ms) => ops::commit(t, ev, row, *lease_ms, keys, fx)
            .map(|(c, leased)| Out::Committed(c, leased)),
        Op::Lease {
            now_ms,
            limit,
            lease_ms,
        } => ops::lease(t, *now_ms, *limit, *lease_ms, fx).map(|o| Out::Leased(o.rows, o.stop)),
        Op::Finish {
            delivery,
            attempt,
            next,
            follow_ups,
        } => ops::finish(t, *delivery, attempt, *next, follow_ups, now, fx).map(Out::Ids),
        Op::Replay {
            event_key,
            deliveries,
        } => ops::replay(t, event_key, deliveries, now, fx).map(Out::Ids),
        Op::CancelEvent {
            event_key,
            rule,
            reason,
        } => ops::cancel_event(t, event_key, rule.as_deref(), reason, now, fx).map(Out::Cancelled),
        Op::CancelGroup { rule, key, reason } => {
            ops::cancel_group(t, rule, key, reason, now, fx).map(Out::Cancelled)
        }
        Op::Prune(chunk) => prune::prune(t, chunk, fx).map(Out::Pruned),
        Op::Defer { delivery, until_ms } => {
            ops::defer(t, *delivery, *until_ms, fx).map(|()| Out::Ids(Vec::new()))
        }
    }
}
