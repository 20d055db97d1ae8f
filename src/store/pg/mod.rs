//! The PostgreSQL engine of the store, for several replicas on one database.
//!
//! Owns the `PgStore` handle: its pool, its committer task (`commit`), the
//! leases this process holds (`lease`, which also renews them while they
//! run), the reads, replay, cancel and prune (`read`), the agent controls'
//! decisions (groups, `concurrency:`, expiry, cancels: `decide`), bursts
//! and budgets (`debounce:`, `limit:`, `delay:`, and deferring a delivery
//! under a paused limit: `bursts`), the schema
//! (`migrate`) and the connection (`connect`). It speaks the same contract,
//! in the same types, as the redb engine; `super::Store` chooses between
//! them.
//!
//! Every database call is bounded by `--store-timeout`: a database that is
//! down or slow makes calls fail with [`StoreError::Database`] (503), and
//! the next call tries again, so recovery needs no restart.

mod bursts;
mod commit;
mod connect;
mod decide;
pub mod import;
mod lease;
pub(crate) mod migrate;
mod read;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;
use tokio_util::sync::CancellationToken;

use super::StoreError;
use super::types::{DeliveryId, DeliveryRecord, DeliveryState};
use super::writer::Shared;

/// The channel replicas wake each other on after a commit that made work due.
const CHANNEL: &str = "hookrouter_due";

/// The channel that names running deliveries a cancel marked (ids,
/// comma-separated), so the replica running one stops it at once. Lease
/// renewal says the same later, for a replica that missed the word.
const CANCEL_CHANNEL: &str = "hookrouter_cancel";

/// What `--store postgres://…` is opened with.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// How long a lease lasts without renewal (`--lease-ttl`).
    pub lease_ttl: Duration,
    /// The most any database call may take (`--store-timeout`).
    pub timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            lease_ttl: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Handle to the PostgreSQL store. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

struct Inner {
    pool: Pool,
    opts: PgOptions,
    /// The database without credentials, for status pages.
    described: String,
    /// To the committer task; `None` once closed.
    commits: Mutex<Option<mpsc::Sender<commit::Request>>>,
    shared: Arc<Shared>,
    /// The token of every lease this process holds, by delivery. A finish
    /// names its token from here, so a lease another replica took over
    /// (after this one's expired) cannot be finished by this one.
    held: Mutex<HashMap<DeliveryId, String>>,
    /// Whether the last database call succeeded.
    healthy: AtomicBool,
    /// Stops the committer, the renewer and the listener.
    stop: CancellationToken,
    stopped: watch::Receiver<Option<String>>,
    stopped_tx: watch::Sender<Option<String>>,
}

impl PgStore {
    /// Connects, applies missing migrations (under the advisory lock), and
    /// starts the committer, the lease renewer and the listener for other
    /// replicas' wake-ups.
    pub async fn open(url: &str, opts: PgOptions) -> Result<PgStore, StoreError> {
        let pool = connect::pool(url, opts.timeout)?;
        {
            let mut client =
                timed(opts.timeout, async { pool.get().await.map_err(pool_err) }).await?;
            let client: &mut tokio_postgres::Client = &mut client;
            timed(opts.timeout * 6, migrate::run(client)).await?;
        }
        let (tx, rx) = mpsc::channel(commit::QUEUE_CAPACITY);
        let (stopped_tx, stopped) = watch::channel(None);
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                opts,
                described: super::StoreUrl::Postgres(url.to_owned()).describe(),
                commits: Mutex::new(Some(tx)),
                shared: Arc::new(Shared::default()),
                held: Mutex::new(HashMap::new()),
                healthy: AtomicBool::new(true),
                stop: CancellationToken::new(),
                stopped,
                stopped_tx,
            }),
        };
        let keys = super::ops::KeyGen::new()?;
        tokio::spawn(commit::run(store.downgrade(), rx, keys));
        tokio::spawn(lease::renew(store.downgrade()));
        tokio::spawn(listen(url.to_owned(), store.downgrade()));
        // Work may be waiting from before this replica started.
        store.inner.shared.notify.notify_one();
        Ok(store)
    }

    fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    fn from_weak(weak: &std::sync::Weak<Inner>) -> Option<PgStore> {
        weak.upgrade().map(|inner| PgStore { inner })
    }

    pub(in crate::store) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The database, without credentials.
    pub fn describe(&self) -> String {
        self.inner.described.clone()
    }

    /// The pool's size, idle connections and waiting callers.
    pub fn pool_status(&self) -> super::PoolStatus {
        let s = self.inner.pool.status();
        super::PoolStatus {
            max_size: s.max_size,
            size: s.size,
            available: s.available,
            waiting: s.waiting,
        }
    }

    fn lease_ttl_ms(&self) -> i64 {
        i64::try_from(self.inner.opts.lease_ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// A pooled connection, within the timeout.
    async fn client(&self) -> Result<Object, StoreError> {
        let got = timed(self.inner.opts.timeout, async {
            self.inner.pool.get().await.map_err(pool_err)
        })
        .await;
        self.note(&got);
        got
    }

    /// Runs `f` bounded by the store timeout and records whether it worked.
    async fn run<T>(
        &self,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let out = timed(self.inner.opts.timeout, f).await;
        self.note(&out);
        out
    }

    fn note<T>(&self, out: &Result<T, StoreError>) {
        match out {
            Ok(_) => self.inner.healthy.store(true, Ordering::Relaxed),
            Err(e) if e.is_unavailable() => self.inner.healthy.store(false, Ordering::Relaxed),
            Err(_) => {}
        }
    }

    /// Whether the last database call worked and the committer runs.
    pub fn is_writable(&self) -> bool {
        let running = match self.inner.commits.lock() {
            Ok(g) => g.as_ref().is_some_and(|tx| !tx.is_closed()),
            Err(_) => false,
        };
        running && self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Stops accepting commits once those queued are answered.
    pub async fn close(&self) -> Result<(), StoreError> {
        let tx = match self.inner.commits.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        // The committer answers what is queued, then ends and says so.
        drop(tx);
        self.inner.stop.cancel();
        let mut stopped = self.inner.stopped.clone();
        let _ = stopped.wait_for(Option::is_some).await;
        Ok(())
    }

    /// Resolves once the store has been closed.
    pub async fn writer_stopped(&self) -> String {
        let mut stopped = self.inner.stopped.clone();
        match stopped.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "it stopped".to_owned(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<DeliveryId, String>> {
        match self.inner.held.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Wakes this replica's dispatcher and, after the commit that made work
    /// due, the other replicas'. Sent outside the transaction: a NOTIFY
    /// inside it serialises commits on the notify queue's lock.
    async fn wake_all(&self, client: &Object) {
        self.inner.shared.notify.notify_one();
        let _ = timed(self.inner.opts.timeout, async {
            client
                .batch_execute(&format!("NOTIFY {CHANNEL}"))
                .await
                .map_err(db_err)
        })
        .await;
    }
}

impl PgStore {
    /// Tells every replica (this one too, through its listener) to stop the
    /// runs of `ids`; sent after the commit that marked them.
    async fn tell_stop(&self, client: &Object, ids: &[DeliveryId]) {
        // A payload must stay under 8000 bytes.
        for chunk in ids.chunks(256) {
            let payload = chunk
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let _ = timed(self.inner.opts.timeout, async {
                client
                    .execute("SELECT pg_notify($1, $2)", &[&CANCEL_CHANNEL, &payload])
                    .await
                    .map_err(db_err)
            })
            .await;
        }
    }

    /// Stops the runs of `ids` this replica holds (the dispatcher's stopper
    /// ignores the others).
    fn stop_local(&self, ids: &[DeliveryId]) {
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
}

/// Listens for other replicas' wake-ups, and for the runs a cancel on any
/// replica marked, on a connection of its own (a pooled one would be
/// recycled). Without it, or while it is down, the dispatcher still polls at
/// least once a second and lease renewal reports cancelled runs.
async fn listen(url: String, weak: std::sync::Weak<Inner>) {
    use futures_like::poll_messages;
    loop {
        let Some(store) = PgStore::from_weak(&weak) else {
            return;
        };
        let stop = store.inner.stop.clone();
        let timeout = store.inner.opts.timeout;
        drop(store);
        let session = async {
            let (config, tls) = connect::parse(&url)?;
            if tls {
                // LISTEN over TLS is left to polling for now.
                std::future::pending::<()>().await;
            }
            let (client, connection) = timed(timeout, async {
                config.connect(tokio_postgres::NoTls).await.map_err(db_err)
            })
            .await?;
            let weak = weak.clone();
            let pump = tokio::spawn(poll_messages(connection, move |channel, payload| {
                if let Some(s) = PgStore::from_weak(&weak) {
                    if channel == CANCEL_CHANNEL {
                        s.stop_local(&decide::parse_ids(payload));
                    } else {
                        s.inner.shared.notify.notify_one();
                    }
                }
            }));
            client
                .batch_execute(&format!("LISTEN {CHANNEL}; LISTEN {CANCEL_CHANNEL}"))
                .await
                .map_err(db_err)?;
            let _ = pump.await;
            Ok::<(), StoreError>(())
        };
        tokio::select! {
            () = stop.cancelled() => return,
            r = session => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "LISTEN connection lost; polling until it is back");
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Drives a connection and calls `on_notify` for each notification.
mod futures_like {
    use std::future::poll_fn;

    use tokio_postgres::AsyncMessage;

    pub(super) async fn poll_messages<S, T>(
        mut connection: tokio_postgres::Connection<S, T>,
        on_notify: impl Fn(&str, &str),
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => on_notify(n.channel(), n.payload()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    }
}

/// Bounds `f` by `limit`; running out is a database error (503).
async fn timed<T>(
    limit: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(StoreError::Database(format!(
            "no answer from the database within {}",
            humantime::format_duration(limit)
        ))),
    }
}

pub(crate) fn db_err(e: tokio_postgres::Error) -> StoreError {
    // The driver's own text for a server error is only "db error".
    match e.as_db_error() {
        Some(db) => StoreError::Database(format!("{} ({})", db.message(), db.code().code())),
        None => StoreError::Database(e.to_string()),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Database(format!("no database connection: {e}"))
}

/// A column, or a corrupt-record error instead of the driver's panic.
fn col<'a, T: FromSql<'a>>(row: &'a Row, name: &str) -> Result<T, StoreError> {
    row.try_get(name)
        .map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The delivery columns every query that decodes a record selects.
const DELIVERY_COLS: &str = "id, event_key, state, attempts, due_at_ms, created_ms, \
     lease_until_ms, last_error, success, cancel, waited, record";

/// A delivery row as a record: the document written at creation, with the
/// columns that change since laid over it.
fn decode_delivery(row: &Row) -> Result<DeliveryRecord, StoreError> {
    let doc: serde_json::Value = col(row, "record")?;
    let mut rec: DeliveryRecord = serde_json::from_value(doc)?;
    rec.id = from_db(col(row, "id")?);
    rec.event_key = col(row, "event_key")?;
    let state: String = col(row, "state")?;
    rec.state = state
        .parse::<DeliveryState>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    rec.attempts = u32::try_from(col::<i32>(row, "attempts")?).unwrap_or(0);
    rec.due_at_ms = from_db(col(row, "due_at_ms")?);
    rec.created_ms = from_db(col(row, "created_ms")?);
    rec.lease_until_ms = col::<Option<i64>>(row, "lease_until_ms")?.map(from_db);
    rec.last_error = col(row, "last_error")?;
    rec.success = match col::<Option<serde_json::Value>>(row, "success")? {
        Some(v) => Some(serde_json::from_value(v)?),
        None => None,
    };
    rec.cancel = col(row, "cancel")?;
    rec.waited = col(row, "waited")?;
    Ok(rec)
}

/// Checks a `postgres://` URL without connecting (for the flag's parser).
pub(crate) fn check_url(url: &str) -> Result<(), StoreError> {
    connect::parse(url).map(|_| ())
}

/// Connects and applies the missing migrations; the versions applied.
pub async fn migrate_schema(url: &str, timeout: Duration) -> Result<Vec<i32>, StoreError> {
    let pool = connect::pool(url, timeout)?;
    let mut client = timed(timeout, async { pool.get().await.map_err(pool_err) }).await?;
    let client: &mut tokio_postgres::Client = &mut client;
    timed(timeout * 6, migrate::run(client)).await
}
