//! `hookrouter migrate --from redb:PATH --to postgres://…`: a single node's
//! queue copied into PostgreSQL, so it can grow into a cluster.
//!
//! Owns reading a redb file (through the redb engine's own open, which takes
//! the file's lock, requeues what a stopped server left leased and upgrades
//! an old layout, and its row codecs) and writing, per table, what replicas
//! need to carry on: every event; its unfinished deliveries with their
//! attempts so far, due times and attempt counts; and every live dedup key,
//! event- and rule-level; and the bursts still waiting, the drop counts and
//! delay slots of `limit:`. Finished deliveries stay in the redb file as
//! history.
//!
//! Idempotent: an event is written with its deliveries and their attempts in
//! one transaction, and only when its key is new (`ON CONFLICT DO NOTHING`),
//! so running it again, or after an interruption, copies nothing twice.
//! Dedup keys are keyed the same way. Each table's copy is one function, so a
//! later migration's columns are one more function or one more column here.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deadpool_postgres::Transaction;
use redb::{ReadableDatabase, ReadableTable};

use super::commit::no_nul;
use super::{db_err, migrate, pool_err, timed, to_db};
use crate::store::schema::{
    self, ATTEMPTS, DEBOUNCE, DEDUP, DELIVERIES, EVENT_DELIVERIES, EVENTS, LIMIT_HITS, LIMIT_NEXT,
    attempts_of, delivery_ids_of, load_delivery,
};
use crate::store::types::{Attempt, DeliveryId, DeliveryRecord, DeliveryState, NewEvent};
use crate::store::{RedbStore, StoreError};

/// Events read from redb and written to PostgreSQL per transaction: large
/// enough to amortise the commit, small enough to hold in memory.
const EVENTS_PER_CHUNK: usize = 200;
/// Dedup keys per transaction.
const KEYS_PER_CHUNK: usize = 1000;

/// What one run copied. Counts are of rows new to PostgreSQL: a second run
/// over the same file reports zeros, with the events found there already.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportStats {
    pub events: u64,
    /// Events that were in PostgreSQL already (an earlier run copied them).
    pub events_present: u64,
    pub deliveries: u64,
    pub attempts: u64,
    pub dedup_keys: u64,
    pub rule_dedup_keys: u64,
}

impl fmt::Display for ImportStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "copied {} events ({} already there), {} unfinished deliveries with {} attempts, \
             {} dedup keys and {} rule dedup keys",
            self.events,
            self.events_present,
            self.deliveries,
            self.attempts,
            self.dedup_keys,
            self.rule_dedup_keys
        )
    }
}

/// Why a copy did not happen or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: no such file", .0.display())]
    Missing(PathBuf),
    #[error(
        "{}: the file is in use, most likely by a running server (redb holds a lock on it); \
         stop the server, then migrate",
        .0.display()
    )]
    InUse(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An event as it goes to PostgreSQL, with its unfinished deliveries.
struct EventCopy {
    key: String,
    received_ms: u64,
    dedup_key: String,
    row_json: Vec<u8>,
    /// The `respond:` answer a duplicate gets, as the engine stores it.
    reply: Option<Vec<u8>>,
    deliveries: Vec<(DeliveryRecord, Vec<(u32, Attempt)>)>,
}

/// A live dedup key as it goes to PostgreSQL.
enum KeyCopy {
    Event {
        key: String,
        event_key: String,
        until_ms: u64,
    },
    Rule {
        rule: String,
        key: String,
        until_ms: u64,
    },
}

/// Copies the redb file at `path` into the database at `url`, after applying
/// the schema's missing migrations. Refuses while a server holds the file.
pub async fn import_redb(
    path: &Path,
    url: &str,
    timeout: Duration,
) -> Result<ImportStats, ImportError> {
    if !path.is_file() {
        return Err(ImportError::Missing(path.to_owned()));
    }
    // Schema first, as `migrate --store` does: a database it cannot bring
    // up to date (a newer schema, say) is refused before the file is opened.
    let pool = super::connect::pool(url, timeout)?;
    let mut client = timed(timeout, async { pool.get().await.map_err(pool_err) }).await?;
    {
        let client: &mut tokio_postgres::Client = &mut client;
        timed(timeout * 6, migrate::run(client)).await?;
    }

    let redb = open_redb(path).await?;
    let now = crate::clock::now_ms();
    let mut stats = ImportStats::default();
    // Old delivery ids to the new ones, for the references a copied
    // delivery makes to another (`parent`, `on_failure`).
    let mut ids: HashMap<DeliveryId, DeliveryId> = HashMap::new();
    let mut after: Option<String> = None;
    let copied = async {
        loop {
            let chunk = {
                let redb = redb.clone();
                let after = after.clone();
                blocking(move || read_events(&redb, after.as_deref())).await?
            };
            let Some(last) = chunk.last().map(|e| e.key.clone()) else {
                break;
            };
            timed(timeout * 6, async {
                let txn = client.transaction().await.map_err(db_err)?;
                for ev in &chunk {
                    copy_event(&txn, ev, &mut ids, &mut stats).await?;
                }
                txn.commit().await.map_err(db_err)
            })
            .await?;
            if chunk.len() < EVENTS_PER_CHUNK {
                break;
            }
            after = Some(last);
        }
        let mut after: Option<String> = None;
        loop {
            let (keys, last) = {
                let redb = redb.clone();
                let after = after.clone();
                blocking(move || read_keys(&redb, after.as_deref(), now)).await?
            };
            timed(timeout * 6, async {
                let txn = client.transaction().await.map_err(db_err)?;
                for k in &keys {
                    copy_key(&txn, k, now, &mut stats).await?;
                }
                txn.commit().await.map_err(db_err)
            })
            .await?;
            match last {
                Some(l) => after = Some(l),
                None => break,
            }
        }
        let bursts = {
            let redb = redb.clone();
            blocking(move || read_bursts(&redb)).await?
        };
        timed(timeout * 6, async {
            let txn = client.transaction().await.map_err(db_err)?;
            copy_bursts(&txn, &bursts, &ids).await?;
            txn.commit().await.map_err(db_err)
        })
        .await?;
        // Running replicas poll anyway; this makes them look now.
        let _ = client
            .batch_execute(&format!("NOTIFY {}", super::CHANNEL))
            .await;
        Ok::<(), StoreError>(())
    }
    .await;
    let closed = redb.close().await;
    copied?;
    closed?;
    Ok(stats)
}

/// Opens the file the way `serve` does, which takes redb's lock on it: a
/// running server holds that lock, and the open fails.
async fn open_redb(path: &Path) -> Result<RedbStore, ImportError> {
    let owned = path.to_owned();
    let opened = tokio::task::spawn_blocking(move || RedbStore::open(&owned))
        .await
        .map_err(|_| StoreError::Internal("cannot open the redb file"))?;
    match opened {
        Ok(s) => Ok(s),
        Err(StoreError::Storage(e))
            if matches!(
                *e,
                redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch
            ) =>
        {
            Err(ImportError::InUse(path.to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| StoreError::Internal("a redb read did not finish"))?
}

/// Up to [`EVENTS_PER_CHUNK`] events after `after`, in key (arrival)
/// order, each with its unfinished deliveries and their attempts. Opening
/// the file turned every `Leased` delivery into `Pending` (or `Cancelled`),
/// so unfinished is `Pending`; a `Leased` one is taken too, due now.
fn read_events(store: &RedbStore, after: Option<&str>) -> Result<Vec<EventCopy>, StoreError> {
    let txn = store.inner.db.begin_read()?;
    let events = txn.open_table(EVENTS)?;
    let event_deliveries = txn.open_table(EVENT_DELIVERIES)?;
    let deliveries = txn.open_table(DELIVERIES)?;
    let attempts = txn.open_table(ATTEMPTS)?;
    let lower = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    let mut out = Vec::new();
    for item in events
        .range::<&str>((lower, std::ops::Bound::Unbounded))?
        .take(EVENTS_PER_CHUNK)
    {
        let (k, v) = item?;
        let key = k.value().to_owned();
        let row = schema::decode_event_row(v.value())?;
        let mut unfinished = Vec::new();
        for id in delivery_ids_of(&event_deliveries, &key, row.first_deliveries.clone())? {
            let Some(mut rec) = load_delivery(&deliveries, id)? else {
                continue;
            };
            match rec.state {
                DeliveryState::Pending => {}
                DeliveryState::Leased => {
                    rec.state = DeliveryState::Pending;
                    rec.due_at_ms = crate::clock::now_ms();
                }
                _ => continue,
            }
            rec.lease_until_ms = None;
            unfinished.push((rec, attempts_of(&attempts, id)?));
        }
        let reply = row.reply.as_ref().map(serde_json::to_vec).transpose()?;
        // The row as the PostgreSQL engine stores it (plain JSON).
        let row_json = crate::store::ops::event_row(&NewEvent {
            event: row.event,
            dedup_key: row.dedup_key.clone(),
            dedup_until_ms: row.dedup_until_ms,
            received_ms: row.received_ms,
            deliveries: Vec::new(),
            reply: None,
        })?;
        out.push(EventCopy {
            key,
            received_ms: row.received_ms,
            dedup_key: row.dedup_key,
            row_json,
            reply,
            deliveries: unfinished,
        });
    }
    Ok(out)
}

/// Up to [`KEYS_PER_CHUNK`] dedup entries after `after` that are still live
/// at `now`, and the last entry looked at (`None` at the end of the table).
fn read_keys(
    store: &RedbStore,
    after: Option<&str>,
    now: u64,
) -> Result<(Vec<KeyCopy>, Option<String>), StoreError> {
    let txn = store.inner.db.begin_read()?;
    let dedup = txn.open_table(DEDUP)?;
    let lower = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
    let mut out = Vec::new();
    let mut last = None;
    let mut looked = 0;
    for item in dedup
        .range::<&str>((lower, std::ops::Bound::Unbounded))?
        .take(KEYS_PER_CHUNK)
    {
        let (k, v) = item?;
        let stored = k.value();
        last = Some(stored.to_owned());
        looked += 1;
        let (event_key, until_ms) = v.value();
        if until_ms <= now {
            continue;
        }
        // The redb engine namespaces both kinds in one table (see
        // `schema::event_dedup_key` and `schema::rule_dedup_key`).
        if let Some(key) = stored.strip_prefix("e\u{0}") {
            out.push(KeyCopy::Event {
                key: key.to_owned(),
                event_key: event_key.to_owned(),
                until_ms,
            });
        } else if let Some((rule, key)) = stored
            .strip_prefix("r\u{0}")
            .and_then(|rest| rest.split_once('\u{0}'))
        {
            out.push(KeyCopy::Rule {
                rule: rule.to_owned(),
                key: key.to_owned(),
                until_ms,
            });
        }
    }
    // A short chunk was the end of the table.
    Ok((out, if looked < KEYS_PER_CHUNK { None } else { last }))
}

/// The state of `debounce:` and `limit:`: bursts, drop counts and delay
/// slots, one row per live key, so read whole.
#[derive(Default)]
struct BurstCopy {
    bursts: Vec<(String, schema::BurstRow)>,
    hits: Vec<(String, u64, u32)>,
    next: Vec<(String, u64)>,
}

fn read_bursts(store: &RedbStore) -> Result<BurstCopy, StoreError> {
    let txn = store.inner.db.begin_read()?;
    let mut out = BurstCopy::default();
    // A file written before bursts existed has none of these tables.
    let missing = |e: &redb::TableError| matches!(e, redb::TableError::TableDoesNotExist(_));
    match txn.open_table(DEBOUNCE) {
        Ok(t) => {
            for item in t.iter()? {
                let (k, v) = item?;
                let row: schema::BurstRow = schema::decode(v.value(), "debounce row")?;
                out.bursts.push((k.value().to_owned(), row));
            }
        }
        Err(e) if missing(&e) => {}
        Err(e) => return Err(e.into()),
    }
    match txn.open_table(LIMIT_HITS) {
        Ok(t) => {
            for item in t.iter()? {
                let (k, v) = item?;
                let (key, at) = k.value();
                out.hits.push((key.to_owned(), at, v.value()));
            }
        }
        Err(e) if missing(&e) => {}
        Err(e) => return Err(e.into()),
    }
    match txn.open_table(LIMIT_NEXT) {
        Ok(t) => {
            for item in t.iter()? {
                let (k, v) = item?;
                out.next.push((k.value().to_owned(), v.value()));
            }
        }
        Err(e) if missing(&e) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(out)
}

/// Writes the bursts still waiting (their deliveries under their new ids),
/// the drop counts and the delay slots, keeping any the database has (a
/// second run, or replicas already at work).
async fn copy_bursts(
    txn: &Transaction<'_>,
    copy: &BurstCopy,
    ids: &HashMap<DeliveryId, DeliveryId>,
) -> Result<(), StoreError> {
    for (key, row) in &copy.bursts {
        // A delivery that was not copied has finished: the burst is over.
        let Some(waiting) = row
            .waiting
            .iter()
            .map(|id| ids.get(id).map(|&n| to_db(n)))
            .collect::<Option<Vec<i64>>>()
        else {
            continue;
        };
        txn.execute(
            "INSERT INTO hookrouter_bursts (key, waiting, first_ms, count, floor_ms)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
            &[
                &key.as_bytes(),
                &waiting,
                &to_db(row.first_ms),
                &i32::try_from(row.count).unwrap_or(i32::MAX),
                &to_db(row.floor_ms),
            ],
        )
        .await
        .map_err(db_err)?;
    }
    for (key, at, n) in &copy.hits {
        txn.execute(
            "INSERT INTO hookrouter_limit_hits (key, at_ms, n) VALUES ($1, $2, $3)
             ON CONFLICT (key, at_ms) DO NOTHING",
            &[
                &key.as_bytes(),
                &to_db(*at),
                &i32::try_from(*n).unwrap_or(i32::MAX),
            ],
        )
        .await
        .map_err(db_err)?;
    }
    for (key, next) in &copy.next {
        txn.execute(
            "INSERT INTO hookrouter_limit_next (key, next_ms) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE
               SET next_ms = GREATEST(hookrouter_limit_next.next_ms, EXCLUDED.next_ms)",
            &[&key.as_bytes(), &to_db(*next)],
        )
        .await
        .map_err(db_err)?;
    }
    Ok(())
}

/// Writes one event and, when it is new to the database, its deliveries.
async fn copy_event(
    txn: &Transaction<'_>,
    ev: &EventCopy,
    ids: &mut HashMap<DeliveryId, DeliveryId>,
    stats: &mut ImportStats,
) -> Result<(), StoreError> {
    let new = txn
        .query_opt(
            "INSERT INTO hookrouter_events (key, received_ms, dedup_key, row_json, reply)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING RETURNING 1",
            &[
                &ev.key,
                &to_db(ev.received_ms),
                &ev.dedup_key.as_bytes(),
                &ev.row_json,
                &ev.reply,
            ],
        )
        .await
        .map_err(db_err)?;
    if new.is_none() {
        // Copied by an earlier run, with its deliveries.
        stats.events_present += 1;
        return Ok(());
    }
    stats.events += 1;
    for (rec, attempts) in &ev.deliveries {
        let id = copy_delivery(txn, rec, ids).await?;
        ids.insert(rec.id, id);
        for (seq, a) in attempts {
            copy_attempt(txn, id, *seq, a).await?;
            stats.attempts += 1;
        }
        stats.deliveries += 1;
    }
    Ok(())
}

/// Writes an unfinished delivery as `pending` (nobody holds a lease on a
/// copy) and returns its id here. Ids come from the database's sequence, so
/// a database already in use keeps its own; a reference to a delivery
/// copied before it is rewritten to the new id, one to a delivery left
/// behind (finished) keeps the old number.
async fn copy_delivery(
    txn: &Transaction<'_>,
    rec: &DeliveryRecord,
    ids: &HashMap<DeliveryId, DeliveryId>,
) -> Result<DeliveryId, StoreError> {
    let mut doc = rec.clone();
    doc.id = 0;
    doc.state = DeliveryState::Pending;
    doc.lease_until_ms = None;
    if let Some(p) = doc.parent.as_mut() {
        *p = ids.get(p).copied().unwrap_or(*p);
    }
    if let Some(f) = doc.on_failure.as_mut() {
        f.delivery = ids.get(&f.delivery).copied().unwrap_or(f.delivery);
    }
    let success = match &doc.success {
        Some(a) => Some(serde_json::to_value(a)?),
        None => None,
    };
    let record = serde_json::to_value(&doc)?;
    let row = txn
        .query_one(
            "INSERT INTO hookrouter_deliveries
               (event_key, state, attempts, due_at_ms, created_ms, last_error, success, cancel, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING id",
            &[
                &doc.event_key,
                &DeliveryState::Pending.as_str(),
                &i32::try_from(doc.attempts).unwrap_or(i32::MAX),
                &to_db(doc.due_at_ms),
                &to_db(doc.created_ms),
                &doc.last_error.as_deref().map(no_nul),
                &success,
                &doc.cancel.as_deref().map(no_nul),
                &record,
            ],
        )
        .await
        .map_err(db_err)?;
    let id: i64 = row.try_get(0).map_err(db_err)?;
    Ok(super::from_db(id))
}

async fn copy_attempt(
    txn: &Transaction<'_>,
    delivery: DeliveryId,
    seq: u32,
    a: &Attempt,
) -> Result<(), StoreError> {
    txn.execute(
        "INSERT INTO hookrouter_attempts (delivery_id, seq, at_ms, duration_ms, outcome, status, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        &[
            &to_db(delivery),
            &i32::try_from(seq).unwrap_or(i32::MAX),
            &to_db(a.at_ms),
            &to_db(a.duration_ms),
            &a.outcome.as_str(),
            &a.status,
            &a.detail.as_deref().map(no_nul),
        ],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Writes a live dedup key unless the database has it live already; an
/// expired one there is replaced, as a commit would.
async fn copy_key(
    txn: &Transaction<'_>,
    k: &KeyCopy,
    now: u64,
    stats: &mut ImportStats,
) -> Result<(), StoreError> {
    match k {
        KeyCopy::Event {
            key,
            event_key,
            until_ms,
        } => {
            let new = txn
                .query_opt(
                    "INSERT INTO hookrouter_dedup (key, event_key, until_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET event_key = EXCLUDED.event_key, until_ms = EXCLUDED.until_ms
                     WHERE hookrouter_dedup.until_ms <= $4
                     RETURNING 1",
                    &[&key.as_bytes(), event_key, &to_db(*until_ms), &to_db(now)],
                )
                .await
                .map_err(db_err)?;
            stats.dedup_keys += u64::from(new.is_some());
        }
        KeyCopy::Rule {
            rule,
            key,
            until_ms,
        } => {
            let new = txn
                .query_opt(
                    "INSERT INTO hookrouter_rule_dedup (rule, key, until_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (rule, key) DO UPDATE SET until_ms = EXCLUDED.until_ms
                     WHERE hookrouter_rule_dedup.until_ms <= $4
                     RETURNING 1",
                    &[rule, &key.as_bytes(), &to_db(*until_ms), &to_db(now)],
                )
                .await
                .map_err(db_err)?;
            stats.rule_dedup_keys += u64::from(new.is_some());
        }
    }
    Ok(())
}
