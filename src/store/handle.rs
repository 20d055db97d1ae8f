//! The store handle every caller uses, over either engine.
//!
//! Owns `Store` (one contract: commit or learn a duplicate, lease, finish,
//! cancel, query, replay, prune) dispatching to the redb engine
//! (`RedbStore`, one process, one file) or the PostgreSQL one (`PgStore`,
//! any number of replicas), and `StoreUrl`, the `--store` value that picks
//! one. The synchronous reads stay synchronous for both: on PostgreSQL they
//! run their query on the runtime and wait, so call them from
//! [`Store::read`] (a blocking thread) like the redb ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::pg::{PgOptions, PgStore};
use super::types::{
    Attempt, BatchStats, CancelOutcome, Committed, DeliveryId, DeliveryRecord, DeliveryState,
    EventDetail, EventSummary, FollowUps, Leased, Leases, NewDelivery, NewEvent, Next, PruneStats,
    QueueDepth, Reply, Stopper,
};
use super::writer::Shared;
use super::{RedbStore, StoreError};

/// Where the store lives: `redb:PATH` or `postgres://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Redb(PathBuf),
    /// The URL as given; it may hold a password, so it is never logged.
    Postgres(String),
}

impl StoreUrl {
    /// What logs may say about it: the path, or the database without its
    /// credentials.
    pub fn describe(&self) -> String {
        match self {
            StoreUrl::Redb(p) => format!("redb:{}", p.display()),
            StoreUrl::Postgres(raw) => match url::Url::parse(raw) {
                Ok(u) => format!(
                    "postgres://{}{}{}",
                    u.host_str().unwrap_or(""),
                    u.port().map(|p| format!(":{p}")).unwrap_or_default(),
                    u.path()
                ),
                Err(_) => "postgres".to_owned(),
            },
        }
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("redb:") {
            if path.is_empty() {
                return Err("redb: needs a path, as in redb:hookrouter.redb".to_owned());
            }
            return Ok(StoreUrl::Redb(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            super::pg::check_url(s).map_err(|e| match e {
                StoreError::Database(why) => why
                    .strip_prefix("invalid --store URL: ")
                    .map_or_else(|| why.clone(), str::to_owned),
                other => other.to_string(),
            })?;
            return Ok(StoreUrl::Postgres(s.to_owned()));
        }
        Err("expected redb:PATH or postgres://USER@HOST:PORT/DB".to_owned())
    }
}

/// The PostgreSQL connection pool at one moment, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// The most connections it opens.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections idle in the pool.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// Handle to the store. Cheap to clone; clones share one engine.
#[derive(Clone, Debug)]
pub enum Store {
    Redb(RedbStore),
    Postgres(PgStore),
}

/// Runs an async PostgreSQL call from a synchronous read: on the runtime,
/// while this (blocking) thread waits for the answer.
fn wait<T, F>(f: F) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    T: Send + 'static,
{
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| StoreError::Internal("a PostgreSQL read needs the runtime"))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .map_err(|_| StoreError::Internal("the PostgreSQL read was dropped"))?
}

impl Store {
    /// Opens or creates the redb file at `path` (see [`RedbStore::open`]).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        RedbStore::open(path).map(Store::Redb)
    }

    /// Opens the store `url` names. For PostgreSQL, connects and applies
    /// missing migrations first.
    pub async fn open_url(url: &StoreUrl, opts: PgOptions) -> Result<Store, StoreError> {
        match url {
            StoreUrl::Redb(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Store::open(&path))
                    .await
                    .map_err(|_| StoreError::Internal("cannot open the store"))?
            }
            StoreUrl::Postgres(raw) => PgStore::open(raw, opts).await.map(Store::Postgres),
        }
    }

    /// Where the store is, as logs and status pages may show it: the redb
    /// file, or the database without its credentials.
    pub fn describe(&self) -> String {
        match self {
            Store::Redb(r) => StoreUrl::Redb(r.inner.path.clone()).describe(),
            Store::Postgres(p) => p.describe(),
        }
    }

    /// The connection pool's state; `None` on redb, which has none.
    pub fn pool_status(&self) -> Option<PoolStatus> {
        match self {
            Store::Redb(_) => None,
            Store::Postgres(p) => Some(p.pool_status()),
        }
    }

    /// Commit latencies since open, for `/metrics`.
    pub fn commit_latency(&self) -> super::LatencySnapshot {
        self.shared().commit_latency.snapshot()
    }

    /// Which engine, for status and metrics: `redb` or `postgres`.
    pub fn engine(&self) -> &'static str {
        match self {
            Store::Redb(_) => "redb",
            Store::Postgres(_) => "postgres",
        }
    }

    fn shared(&self) -> &Shared {
        match self {
            Store::Redb(r) => &r.inner.shared,
            Store::Postgres(p) => p.shared(),
        }
    }

    /// See [`RedbStore::commit`].
    pub async fn commit(&self, ev: NewEvent) -> Result<Committed, StoreError> {
        let started = std::time::Instant::now();
        let out = match self {
            Store::Redb(r) => r.commit(ev).await,
            Store::Postgres(p) => p.commit(ev).await,
        };
        self.timed_commit(started, out.is_ok());
        out
    }

    fn timed_commit(&self, started: std::time::Instant, ok: bool) {
        if ok {
            self.shared().commit_latency.observe(started.elapsed());
        }
    }

    /// See [`RedbStore::commit_leased`].
    pub async fn commit_leased(
        &self,
        ev: NewEvent,
        lease_ms: u64,
    ) -> Result<(Committed, Vec<Leased>), StoreError> {
        let started = std::time::Instant::now();
        let out = match self {
            Store::Redb(r) => r.commit_leased(ev, lease_ms).await,
            Store::Postgres(p) => p.commit_leased(ev).await,
        };
        self.timed_commit(started, out.is_ok());
        out
    }

    /// See [`RedbStore::lease_due`].
    pub async fn lease_due(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> Result<Vec<Leased>, StoreError> {
        Ok(self.lease(now_ms, limit, lease_ms).await?.leased)
    }

    /// See [`RedbStore::lease`].
    pub async fn lease(
        &self,
        now_ms: u64,
        limit: usize,
        lease_ms: u64,
    ) -> Result<Leases, StoreError> {
        match self {
            Store::Redb(r) => r.lease(now_ms, limit, lease_ms).await,
            Store::Postgres(p) => p.lease(now_ms, limit, lease_ms).await,
        }
    }

    /// See [`RedbStore::cancel_event`].
    pub async fn cancel_event(
        &self,
        event_key: &str,
        rule: Option<&str>,
        reason: &str,
    ) -> Result<CancelOutcome, StoreError> {
        match self {
            Store::Redb(r) => r.cancel_event(event_key, rule, reason).await,
            Store::Postgres(p) => {
                let c = p.cancel_event(event_key, rule, reason).await?;
                self.stop(&c.stopping);
                Ok(c)
            }
        }
    }

    /// See [`RedbStore::cancel_group`].
    pub async fn cancel_group(
        &self,
        rule: &str,
        key: &str,
        reason: &str,
    ) -> Result<CancelOutcome, StoreError> {
        match self {
            Store::Redb(r) => r.cancel_group(rule, key, reason).await,
            Store::Postgres(p) => {
                let c = p.cancel_group(rule, key, reason).await?;
                self.stop(&c.stopping);
                Ok(c)
            }
        }
    }

    /// See [`RedbStore::set_stopper`].
    pub fn set_stopper(&self, stop: Stopper) {
        match self.shared().stopper.write() {
            Ok(mut g) => *g = Some(stop),
            Err(poisoned) => *poisoned.into_inner() = Some(stop),
        }
    }

    fn stop(&self, ids: &[DeliveryId]) {
        if ids.is_empty() {
            return;
        }
        let stopper = match self.shared().stopper.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(stop) = stopper {
            stop(ids);
        }
    }

    /// See [`RedbStore::set_follow_ups`].
    pub fn set_follow_ups(&self, plan: Arc<dyn FollowUps>) {
        self.shared().set_follow_ups(plan);
    }

    /// See [`RedbStore::finish`].
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

    /// See [`RedbStore::finish_with`]. On PostgreSQL, a finish by a replica
    /// whose lease was taken over changes nothing.
    pub async fn finish_with(
        &self,
        delivery: DeliveryId,
        attempt: Attempt,
        next: Next,
        follow_ups: Vec<NewDelivery>,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        match self {
            Store::Redb(r) => r.finish_with(delivery, attempt, next, follow_ups).await,
            Store::Postgres(p) => p.finish_with(delivery, attempt, next, follow_ups).await,
        }
    }

    /// See [`RedbStore::defer`].
    pub async fn defer(&self, delivery: DeliveryId, until_ms: u64) -> Result<(), StoreError> {
        match self {
            Store::Redb(r) => r.defer(delivery, until_ms).await,
            Store::Postgres(p) => p.defer(delivery, until_ms).await,
        }
    }

    /// See [`RedbStore::replay`].
    pub async fn replay(
        &self,
        event_key: &str,
        deliveries: Vec<NewDelivery>,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        match self {
            Store::Redb(r) => r.replay(event_key, deliveries).await,
            Store::Postgres(p) => p.replay(event_key, deliveries).await,
        }
    }

    /// See [`RedbStore::prune`].
    pub async fn prune(
        &self,
        now_ms: u64,
        events_older_than_ms: u64,
    ) -> Result<PruneStats, StoreError> {
        match self {
            Store::Redb(r) => r.prune(now_ms, events_older_than_ms).await,
            Store::Postgres(p) => p.prune(now_ms, events_older_than_ms).await,
        }
    }

    /// See [`RedbStore::close`].
    pub async fn close(&self) -> Result<(), StoreError> {
        match self {
            Store::Redb(r) => r.close().await,
            Store::Postgres(p) => p.close().await,
        }
    }

    /// See [`RedbStore::writer_stopped`].
    pub async fn writer_stopped(&self) -> String {
        match self {
            Store::Redb(r) => r.writer_stopped().await,
            Store::Postgres(p) => p.writer_stopped().await,
        }
    }

    /// See [`RedbStore::notified`]. On PostgreSQL it is also woken by other
    /// replicas' commits (LISTEN/NOTIFY).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared().notify.notified()
    }

    /// Group-commit statistics since open.
    pub fn batch_stats(&self) -> BatchStats {
        self.shared().counters.snapshot()
    }

    /// See [`RedbStore::is_writable`]; on PostgreSQL, whether the last call
    /// to the database worked.
    pub fn is_writable(&self) -> bool {
        match self {
            Store::Redb(r) => r.is_writable(),
            Store::Postgres(p) => p.is_writable(),
        }
    }

    /// Runs a blocking read (any of the sync read methods) on tokio's blocking
    /// pool: `store.read(|s| s.queue_depth()).await`.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|_| StoreError::Internal("store read task failed"))?
    }

    /// What a `respond:` answered for the event `key` when it was accepted,
    /// if anything: the answer a duplicate of it gets. `None` when the event
    /// had none or is gone.
    pub async fn reply_of(&self, key: &str) -> Result<Option<Reply>, StoreError> {
        match self {
            Store::Redb(r) => {
                let (r, key) = (r.clone(), key.to_owned());
                tokio::task::spawn_blocking(move || r.reply_of(&key))
                    .await
                    .map_err(|_| StoreError::Internal("store read task failed"))?
            }
            Store::Postgres(p) => p.reply_of(key).await,
        }
    }

    /// See [`RedbStore::get_event`]. Blocking.
    pub fn get_event(&self, key: &str) -> Result<Option<EventDetail>, StoreError> {
        match self {
            Store::Redb(r) => r.get_event(key),
            Store::Postgres(p) => {
                let (p, key) = (p.clone(), key.to_owned());
                wait(async move { p.get_event(&key).await })
            }
        }
    }

    /// See [`RedbStore::list_events`]. Blocking.
    pub fn list_events(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<EventSummary>, StoreError> {
        match self {
            Store::Redb(r) => r.list_events(limit, before),
            Store::Postgres(p) => {
                let (p, before) = (p.clone(), before.map(str::to_owned));
                wait(async move { p.list_events(limit, before.as_deref()).await })
            }
        }
    }

    /// See [`RedbStore::list_deliveries`]. Blocking.
    pub fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        match self {
            Store::Redb(r) => r.list_deliveries(state, limit),
            Store::Postgres(p) => {
                let p = p.clone();
                wait(async move { p.list_deliveries(state, limit).await })
            }
        }
    }

    /// See [`RedbStore::queue_depth`]. Blocking.
    pub fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        match self {
            Store::Redb(r) => r.queue_depth(),
            Store::Postgres(p) => {
                let p = p.clone();
                wait(async move { p.queue_depth().await })
            }
        }
    }

    /// See [`RedbStore::next_due_ms`]. Blocking.
    pub fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Redb(r) => r.next_due_ms(),
            Store::Postgres(p) => {
                let p = p.clone();
                wait(async move { p.next_due_ms().await })
            }
        }
    }
}

#[cfg(test)]
impl Store {
    /// The redb database under a redb store, for tests that look at its tables.
    pub(crate) fn redb_db(&self) -> &redb::Database {
        match self {
            Store::Redb(r) => &r.inner.db,
            Store::Postgres(_) => panic!("not a redb store"),
        }
    }
}
