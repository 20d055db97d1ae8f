//! Durable storage of events and their deliveries (redb).
//!
//! Owns the `Store` handle: the write contract (commit an accepted event with
//! its deliveries or learn it is a duplicate, lease due deliveries, record an
//! attempt's outcome, replay, prune) and the read side used for inspection and
//! scheduling. The contract is deliberately narrow and speaks only in the
//! plain types of `types`, so another backend could implement it.
//!
//! It does not own HTTP status mapping, retry policy (backoff is decided by
//! the caller and handed in as [`Next`]), rule matching or action execution.
//!
//! Threading: every write goes through one dedicated writer thread that
//! group-commits (see `writer`, with what each command does in `ops` and
//! `prune`, and opening a file in `migrate`); the async write methods only
//! enqueue and await the answer. Read methods are synchronous and block on disk I/O: call
//! them from `spawn_blocking` (or use [`Store::read`]). redb read transactions
//! are snapshots and run concurrently with the writer.

#[cfg(test)]
mod conformance;
mod handle;
mod latency;
mod migrate;
mod ops;
pub mod pg;
mod prune;
mod read;
mod schema;
#[cfg(test)]
mod tests;
mod types;
mod writer;

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::{mpsc, oneshot, watch};

pub use handle::{PoolStatus, Store, StoreUrl};
pub use latency::{BUCKETS as COMMIT_LATENCY_BUCKETS, LatencySnapshot};
pub use pg::{PgOptions, PgStore};
pub use types::{
    Attempt, AttemptOutcome, BatchStats, CancelOutcome, Committed, DebounceInfo, DebounceSlot,
    DedupKey, DeliveryCounts, DeliveryDetail, DeliveryId, DeliveryRecord, DeliveryState,
    EventDetail, EventSummary, FailureContext, FollowUps, GroupSlot, Leased, Leases, LimitSlot,
    MAX_DETAIL_BYTES, NewDelivery, NewEvent, Next, Pacing, ParseStateError, PruneStats, QueueDepth,
    Reply, Stopper, UnknownOutcome,
};

use prune::PruneChunk;
use schema::{
    ATTEMPTS, DELIVERIES, DUE, EVENT_DELIVERIES, EVENTS, GROUP_WAIT, LEASED, attempts_of,
    decode_delivery, delivery_ids_of, final_index, load_delivery,
};
use writer::{Cmd, Op, Out, Shared};

/// Commands that may wait for the writer before senders are made to wait
/// (asynchronously) too. Bounds memory when the disk is slower than arrivals.
const QUEUE_CAPACITY: usize = 8192;

/// redb's page cache. Its default (1 GiB) would let a long-running router
/// grow to that size as the file grows; recent pages are what the writer and
/// the dispatcher touch, and older ones are read only for inspection.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Errors of the store.
///
/// [`StoreError::is_not_found`] errors concern the request (unknown event or
/// delivery); every other error means the store cannot serve right now, which
/// the HTTP layer answers with 503 so the sender retries.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage error: {0}")]
    Storage(#[source] Box<redb::Error>),
    #[error("cannot encode record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("store file has schema version {found}; this build supports {supported}")]
    Schema { found: u64, supported: u64 },
    #[error("store is closed")]
    Closed,
    #[error("cannot start the store writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Random(#[from] crate::entropy::Unavailable),
    #[error("no event with key {0:?}")]
    UnknownEvent(String),
    #[error("no delivery with id {0}")]
    UnknownDelivery(DeliveryId),
    #[error("internal store error: {0}")]
    Internal(&'static str),
    #[error("database error: {0}")]
    Database(String),
}

impl StoreError {
    /// The request named an event or delivery that does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StoreError::UnknownEvent(_) | StoreError::UnknownDelivery(_)
        )
    }

    /// The store cannot serve right now (disk, corruption, shut down): 503.
    pub fn is_unavailable(&self) -> bool {
        !self.is_not_found()
    }
}

macro_rules! from_redb {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(Box::new(e.into()))
            }
        })*
    };
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
);

/// The redb engine of the store. Cheap to clone; all clones share one
/// database and one writer thread.
///
/// Dropping the last handle stops the writer after it has answered everything
/// already queued, and waits for it (a short block of the dropping thread),
/// so the file is closed and can be reopened as soon as the drop returns.
/// [`Store::close`] does the same without blocking.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// `None` only during drop.
    tx: Option<mpsc::Sender<Cmd>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Why the writer thread ended, once it has.
    stopped: watch::Receiver<Option<String>>,
    /// The file, as opened, for status pages.
    path: std::path::PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain the queue and return.
        self.tx = None;
        let handle = match self.writer.get_mut() {
            Ok(slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("store writer thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens or creates the redb file at `path` and starts the writer thread.
    ///
    /// Deliveries left `Leased` by a process that stopped become `Pending`,
    /// due now: their worker may or may not have run the action, and
    /// at-least-once means running it again. Blocks on file I/O (and on
    /// redb's repair after an unclean shutdown).
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let pending = migrate::prepare(&db, crate::clock::now_ms())?;
        let keys = ops::KeyGen::new()?;
        let db = Arc::new(db);
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (stop_tx, stopped) = watch::channel(None);
        let handle = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn({
                let db = Arc::clone(&db);
                let shared = Arc::clone(&shared);
                move || {
                    // Caught only to be reported, then raised again, so
                    // joining the thread still sees the panic.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        writer::run(db, rx, shared, keys);
                    }));
                    let why = match &ran {
                        Ok(()) => "it stopped".to_owned(),
                        Err(payload) => crate::supervisor::panic_message(payload.as_ref()),
                    };
                    let _ = stop_tx.send(Some(why));
                    if let Err(payload) = ran {
                        std::panic::resume_unwind(payload);
                    }
                }
            })
            .map_err(StoreError::Spawn)?;
        if pending > 0 {
            shared.notify.notify_one();
        }
        Ok(RedbStore {
            inner: Arc::new(Inner {
                db,
                tx: Some(tx),
                shared,
                writer: Mutex::new(Some(handle)),
                stopped,
                path: path.to_path_buf(),
            }),
        })
    }

    /// Sends an op to the writer and waits for its answer. Cancelling the
    /// returned future after the op was queued does not cancel the op.
    async fn call(&self, op: Op) -> Result<Out, StoreError> {
        let sender = self.inner.tx.as_ref().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(Cmd::Op(Box::new(op), reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        // A dropped reply means the writer is gone (it panicked or stopped).
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores an accepted event with its deliveries, durably, or reports that
    /// its dedup key was already seen. When this returns `Accepted`, the event
    /// is on disk (fsync'd); it is safe to answer 202.
    pub async fn commit(&self, ev: NewEvent) -> Result<Committed, StoreError> {
        let row = ops::event_row(&ev)?;
        match self.call(Op::Commit(ev, row, None)).await? {
            Out::Committed(c, _) => Ok(c),
            _ => Err(StoreError::Internal("unexpected answer to commit")),
        }
    }

    /// [`Store::commit`], but the deliveries are created already leased for
    /// `lease_ms` and handed back with the event, for the caller to run
    /// without a trip through the queue. They are durable like any other: if
    /// the caller never finishes them, a restart (or the lease's expiry) makes
    /// them due again.
    pub async fn commit_leased(
        &self,
        mut ev: NewEvent,
        lease_ms: u64,
    ) -> Result<(Committed, Vec<Leased>), StoreError> {
        let row = ops::event_row(&ev)?;
        // The row has the body's text now; the deliveries that run from
        // memory need only the parsed value.
        ev.event.body.forget_text();
        match self.call(Op::Commit(ev, row, Some(lease_ms))).await? {
            // A duplicate comes back joined too, with no deliveries.
            Out::Claimed(c, leased) => Ok((c, leased)),
            _ => Err(StoreError::Internal("unexpected answer to commit")),
        }
    }

    /// Leases up to `limit` due deliveries for `lease_ms`: `Pending` ones due
    /// by `now_ms` and `Leased` ones whose lease ran out by `now_ms`, ordered
    /// by due time (lease expiry for the latter), then id. The lease is a
    /// safety net for a hung worker, not a lock: an expired lease is handed
    /// out again, so an action may run twice.
    pub async fn lease_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> Result<Vec<Leased>, StoreError> {
        Ok(self.lease(now_ms, limit, lease_ms).await?.leased)
    }

    /// [`Store::lease_due`], with the decisions the lease took on the way:
    /// due deliveries that expired, were cancelled, or were let into their
    /// group (the oldest waiting member first) or handled by its `on_busy`.
    /// `stop` names the running deliveries an `on_busy: cancel` marked; the
    /// caller stops their runs now.
    pub async fn lease(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> Result<Leases, StoreError> {
        match self
            .call(Op::Lease {
                now_ms,
                limit,
                lease_ms,
            })
            .await?
        {
            Out::Leased(rows, stop) => Ok(Leases {
                leased: decode_leased(rows)?,
                stop,
            }),
            _ => Err(StoreError::Internal("unexpected answer to lease")),
        }
    }

    /// Cancels the unfinished deliveries of an event (of `rule` only, when
    /// given): waiting ones end `cancelled` now, running ones are marked and
    /// named in the answer for the caller to stop; they end `cancelled` when
    /// their attempt is recorded, or at the next open, and never run again.
    /// Each rule affected runs its `on_cancel` deliveries once for the
    /// event. Finding nothing to cancel is not an error. Unknown key:
    /// [`StoreError::UnknownEvent`].
    pub async fn cancel_event(
        &self,
        event_key: &str,
        rule: Option<&str>,
        reason: &str,
    ) -> Result<CancelOutcome, StoreError> {
        match self
            .call(Op::CancelEvent {
                event_key: event_key.to_owned(),
                rule: rule.map(str::to_owned),
                reason: reason.to_owned(),
            })
            .await?
        {
            Out::Cancelled(c) => {
                self.stop(&c.stopping);
                Ok(c)
            }
            _ => Err(StoreError::Internal("unexpected answer to cancel")),
        }
    }

    /// [`Store::cancel_event`] for the unfinished deliveries of `rule` whose
    /// group key is `key`, whatever their event.
    pub async fn cancel_group(
        &self,
        rule: &str,
        key: &str,
        reason: &str,
    ) -> Result<CancelOutcome, StoreError> {
        match self
            .call(Op::CancelGroup {
                rule: rule.to_owned(),
                key: key.to_owned(),
                reason: reason.to_owned(),
            })
            .await?
        {
            Out::Cancelled(c) => {
                self.stop(&c.stopping);
                Ok(c)
            }
            _ => Err(StoreError::Internal("unexpected answer to cancel")),
        }
    }

    /// Installs what stops the runs of deliveries a cancel marked (the
    /// dispatcher's), so every caller of a cancel (API, `cancel:` action)
    /// stops them at once without knowing who runs them.
    pub fn set_stopper(&self, stop: Stopper) {
        match self.inner.shared.stopper.write() {
            Ok(mut g) => *g = Some(stop),
            Err(poisoned) => *poisoned.into_inner() = Some(stop),
        }
    }

    fn stop(&self, ids: &[DeliveryId]) {
        if ids.is_empty() {
            return;
        }
        let stopper = match self.inner.shared.stopper.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(stop) = stopper {
            stop(ids);
        }
    }

    /// Installs what the store asks for the follow-ups it decides itself
    /// (see [`FollowUps`]); until then, it creates none.
    pub fn set_follow_ups(&self, plan: Arc<dyn FollowUps>) {
        self.inner.shared.set_follow_ups(plan);
    }

    /// Records an attempt and moves the delivery on: `Done`, `Dead`, or
    /// `Pending` again at `RetryAt(ms)`. The attempt count increments and the
    /// attempt (detail capped at [`MAX_DETAIL_BYTES`]) is stored.
    ///
    /// If the delivery is already `Done`/`Dead` (a late worker whose lease had
    /// expired), only the attempt is recorded. Unknown id:
    /// [`StoreError::UnknownDelivery`].
    pub async fn finish(
        &self,
        delivery: DeliveryId,
        attempt: Attempt,
        next: Next,
    ) -> Result<(), StoreError> {
        self.finish_with(delivery, attempt, next, Vec::new())
            .await
            .map(|_| ())
    }

    /// [`Store::finish`] plus new deliveries for the same event (typically the
    /// rule's `on_failure` actions when `next` is `Dead`), in the same
    /// transaction, so a crash cannot record the death but lose the follow-ups.
    /// Follow-ups are due now and ignore dedup keys. Returns their ids; none
    /// are created if the delivery was already `Done`/`Dead`.
    pub async fn finish_with(
        &self,
        delivery: DeliveryId,
        attempt: Attempt,
        next: Next,
        follow_ups: Vec<NewDelivery>,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        match self
            .call(Op::Finish {
                delivery,
                attempt,
                next,
                follow_ups,
            })
            .await?
        {
            Out::Ids(ids) => Ok(ids),
            _ => Err(StoreError::Internal("unexpected answer to finish")),
        }
    }

    /// Hands a leased delivery back without running it: `Pending` again,
    /// due at `until_ms`, with no attempt recorded (a limit it runs under
    /// is paused). A delivery that is not leased is left alone.
    pub async fn defer(&self, delivery: DeliveryId, until_ms: u64) -> Result<(), StoreError> {
        match self.call(Op::Defer { delivery, until_ms }).await? {
            Out::Ids(_) => Ok(()),
            _ => Err(StoreError::Internal("unexpected answer to defer")),
        }
    }

    /// Creates new `Pending` deliveries, due now, for an existing event. The
    /// old deliveries and their history stay. Dedup keys are ignored: a
    /// replay is an explicit request to run again. Unknown key:
    /// [`StoreError::UnknownEvent`].
    pub async fn replay(
        &self,
        event_key: &str,
        deliveries: Vec<NewDelivery>,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        match self
            .call(Op::Replay {
                event_key: event_key.to_owned(),
                deliveries,
            })
            .await?
        {
            Out::Ids(ids) => Ok(ids),
            _ => Err(StoreError::Internal("unexpected answer to replay")),
        }
    }

    /// Deletes events received more than `events_older_than_ms` before
    /// `now_ms` whose deliveries are all `Done`/`Dead` and whose dedup window
    /// closed by `now_ms`, with their deliveries, attempts and dedup keys.
    /// Events with work left are kept whatever their age.
    ///
    /// Runs as a series of bounded write transactions (a few hundred events
    /// each), so commits never wait long behind it.
    pub async fn prune(
        &self,
        now_ms: u64,
        events_older_than_ms: u64,
    ) -> Result<PruneStats, StoreError> {
        let cutoff_ms = now_ms.saturating_sub(events_older_than_ms);
        let mut total = PruneStats::default();
        let mut after = None;
        loop {
            let out = match self
                .call(Op::Prune(PruneChunk {
                    now_ms,
                    cutoff_ms,
                    after: after.take(),
                }))
                .await?
            {
                Out::Pruned(p) => p,
                _ => return Err(StoreError::Internal("unexpected answer to prune")),
            };
            total.add(&out.stats);
            match out.cursor {
                Some(c) => after = Some(c),
                None => return Ok(total),
            }
        }
    }

    /// Stops the writer once everything queued before this call is answered,
    /// and waits for its thread to exit. Later writes through any clone fail
    /// with [`StoreError::Closed`]; reads keep working until the last handle
    /// is dropped, which closes the file.
    pub async fn close(&self) -> Result<(), StoreError> {
        if let Some(sender) = self.inner.tx.as_ref() {
            let (ack, acked) = oneshot::channel();
            if sender.send(Cmd::Shutdown(ack)).await.is_ok() {
                // An error here means the writer already stopped.
                let _ = acked.await;
            }
        }
        let handle = match self.inner.writer.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            let joined = tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|_| StoreError::Internal("cannot join the writer thread"))?;
            if joined.is_err() {
                return Err(StoreError::Internal("store writer thread panicked"));
            }
        }
        Ok(())
    }

    /// Resolves once the writer thread has ended, with why: the message of
    /// the panic that ended it, or that it stopped (after [`Store::close`]).
    /// Every write fails with [`StoreError::Closed`] from then on, so a
    /// server watches this to end rather than answer 503 forever.
    pub async fn writer_stopped(&self) -> String {
        let mut stopped = self.inner.stopped.clone();
        match stopped.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The thread drops its sender only after sending.
            Err(_) => "it stopped".to_owned(),
        }
    }

    /// Notified after a write that created due work (new or replayed
    /// deliveries, a retry rescheduled, leases recovered on open). Uses
    /// `notify_one`, so a notification sent while nobody waits is kept for the
    /// next waiter: a dispatcher that leases, finds nothing, then awaits this
    /// does not miss work committed in between. Meant for one dispatcher loop.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.shared.notify.notified()
    }

    /// Group-commit statistics since open.
    pub fn batch_stats(&self) -> BatchStats {
        self.inner.shared.counters.snapshot()
    }

    /// Whether writes can be expected to succeed: the writer is running and
    /// its last transaction did not fail.
    pub fn is_writable(&self) -> bool {
        let running = self.inner.tx.as_ref().is_some_and(|tx| !tx.is_closed());
        running && !self.inner.shared.counters.last_failed()
    }
}

/// Decode leased rows, each distinct event once, on the caller's thread.
fn decode_leased(rows: Vec<ops::LeasedRow>) -> Result<Vec<Leased>, StoreError> {
    let mut events: std::collections::HashMap<String, Arc<crate::event::Event>> =
        std::collections::HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for (delivery, row) in rows {
        let event = match events.get(&delivery.event_key) {
            Some(e) => Arc::clone(e),
            None => {
                let decoded = schema::decode_event_row(&row)?;
                let event = Arc::new(decoded.event);
                events.insert(delivery.event_key.clone(), Arc::clone(&event));
                event
            }
        };
        out.push(Leased { delivery, event });
    }
    Ok(out)
}
