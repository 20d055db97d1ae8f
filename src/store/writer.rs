//! The single writer thread and everything that mutates the database.
//!
//! Owns group commit: one `std::thread` receives commands from a bounded
//! channel, drains everything queued (up to [`MAX_BATCH`]), applies all of it
//! in ONE redb write transaction (taking in, before it commits, whatever was
//! queued while it applied), commits durably (redb's default
//! `Durability::Immediate`, i.e. fsync) and only then answers each caller.
//! One fsync thus covers many webhooks under load, and nobody is told "stored"
//! before the data is on disk.
//!
//! It also owns the policies applied inside a transaction: event- and
//! rule-level dedup, id allocation, leasing, attempt bookkeeping, prune.
//! It does not own the public handle, the read side or the table layout
//! (`mod.rs`, `schema.rs`).
//!
//! Failure isolation: a command that refers to something missing (unknown
//! event or delivery) is rejected before it writes anything, and the batch goes
//! on. Any other error (storage, corrupt row) aborts the whole transaction;
//! the batch is then retried one command per transaction, so one poisonous
//! command cannot fail its neighbours, while a dead disk fails each of them
//! with its own error.

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot};

use super::StoreError;
use super::schema::{
    META_SCHEMA, SCHEMA_VERSION, WriteTables, decode_event_keys, delivery_ids_of, event_dedup_key,
    load_delivery, rule_dedup_key, v1, with_deliveries,
};
use super::types::{
    Attempt, BatchStats, Committed, DeliveryId, DeliveryRecord, DeliveryState, Leased,
    MAX_DETAIL_BYTES, NewDelivery, NewEvent, Next, PruneStats,
};

/// Most commands applied in one write transaction. Bounds how long a batch
/// holds the writer (and how much an aborted batch has to redo one by one).
pub(super) const MAX_BATCH: usize = 512;

/// Events examined per prune chunk.
pub(super) const PRUNE_EVENTS_PER_CHUNK: usize = 256;

/// A write request.
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
    Prune(PruneChunk),
}

/// One bounded step of a prune; `Store::prune` loops over these so that other
/// writers get the writer between chunks.
pub(super) struct PruneChunk {
    pub now_ms: u64,
    pub cutoff_ms: u64,
    /// Last event key examined by the previous chunk.
    pub after: Option<String>,
    /// Events are finished; only dedup keys remain.
    pub events_done: bool,
}

pub(super) struct PruneOut {
    pub stats: PruneStats,
    /// Where the next chunk resumes the event scan; `None` when it is done.
    pub cursor: Option<String>,
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
    Leased(Vec<LeasedRow>),
    Ids(Vec<DeliveryId>),
    Pruned(PruneOut),
}

/// A leased delivery and its event's stored row.
pub(super) type LeasedRow = (DeliveryRecord, Arc<Vec<u8>>);

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
    fn committed(&self, commands: usize) {
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

    fn failed(&self) {
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

/// Unix time in ms from the system clock, for timestamps the callers do not
/// supply (replay and follow-up deliveries, lease recovery on open).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Event keys: ULIDs whose timestamp is the receive time, monotonic within
/// this process so keys sort in commit order even within one millisecond.
/// `list_events` pages by key and `prune` range-scans by key.
///
/// Its random bits come from a generator seeded once, when the store opens
/// (see `crate::entropy`), so no key ever waits on, or fails for, a random
/// source.
pub(super) struct KeyGen(ulid::Generator, rand::rngs::StdRng);

impl KeyGen {
    pub(super) fn new() -> Result<Self, StoreError> {
        use rand::SeedableRng as _;
        let rng = rand::rngs::StdRng::from_seed(crate::entropy::seed()?);
        Ok(KeyGen(ulid::Generator::new(), rng))
    }

    fn next(&mut self, ms: u64) -> String {
        let at = UNIX_EPOCH + Duration::from_millis(ms);
        match self.0.generate_from_datetime_with_source(at, &mut self.1) {
            Ok(u) => u.to_string(),
            // Only after 2^80 keys in one millisecond; a random ULID is still unique.
            Err(_) => ulid::Ulid::from_datetime_with_source(at, &mut self.1).to_string(),
        }
    }
}

/// Prepares a freshly opened database: creates the tables, checks the schema
/// version, and turns every `Leased` delivery back into `Pending`, due `now`.
/// A lease outliving its process means the worker may or may not have run
/// the action; running it again is the at-least-once promise.
/// Returns the number of pending deliveries.
pub(super) fn prepare(db: &Database, now: u64) -> Result<u64, StoreError> {
    let txn = db.begin_write()?;
    let found = {
        let meta = txn.open_table(super::schema::META)?;
        meta.get(META_SCHEMA)?.map(|g| g.value())
    };
    match found {
        None | Some(SCHEMA_VERSION) => {}
        Some(1) => migrate_v1(&txn)?,
        // Layout 3 writes delivery rows in postcard form and still reads the
        // JSON rows of layout 2, so moving up is only the version number.
        Some(2) => {}
        Some(v) => {
            return Err(StoreError::Schema {
                found: v,
                supported: SCHEMA_VERSION,
            });
        }
    }
    let pending = {
        let mut t = WriteTables::open(&txn)?;
        if found != Some(SCHEMA_VERSION) {
            t.meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
        }
        let mut leased = Vec::new();
        for item in t.leased.iter()? {
            let (k, _) = item?;
            leased.push(k.value());
        }
        if !leased.is_empty() {
            tracing::info!(
                count = leased.len(),
                "requeueing deliveries leased before restart"
            );
        }
        for (until, id) in leased {
            t.leased.remove((until, id))?;
            if let Some(mut rec) = load_delivery(&t.deliveries, id)? {
                rec.state = DeliveryState::Pending;
                rec.lease_until_ms = None;
                rec.due_at_ms = now;
                t.put_delivery(&rec)?;
                t.due.insert((now, id), ())?;
            }
        }
        t.due.len()?
    };
    txn.commit()?;
    Ok(pending)
}

/// Moves a layout-1 file to layout 2, in the caller's transaction: the
/// `done` index goes (its length follows from the other states), and the
/// expiry index of rule-level dedup keys becomes `rule_dedup` (event-level
/// keys are found from the event row).
fn migrate_v1(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut rule_keys = Vec::new();
    {
        let expiry = txn.open_table(v1::DEDUP_EXPIRY)?;
        let dedup = txn.open_table(super::schema::DEDUP)?;
        for item in expiry.iter()? {
            let (k, _) = item?;
            let (_, dedup_key) = k.value();
            if !dedup_key.starts_with('r') {
                continue;
            }
            if let Some(g) = dedup.get(dedup_key)? {
                rule_keys.push((g.value().0.to_owned(), dedup_key.to_owned()));
            }
        }
    }
    {
        let mut rule_dedup = txn.open_table(super::schema::RULE_DEDUP)?;
        for (event, dedup_key) in &rule_keys {
            rule_dedup.insert((event.as_str(), dedup_key.as_str()), ())?;
        }
    }
    txn.delete_table(v1::DONE)?;
    txn.delete_table(v1::DEDUP_EXPIRY)?;
    tracing::info!(
        rule_dedup_keys = rule_keys.len(),
        "data file moved to layout 2"
    );
    Ok(())
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
    let result = transact_ops(
        db,
        &mut Growing {
            batch: &mut batch,
            refill,
        },
        keys,
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
                let answer = match transact(db, &[&op], keys) {
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

/// Side effects of applying ops, decided inside the transaction.
#[derive(Default)]
struct Effects {
    /// Something was written: commit (fsync) rather than abort.
    dirty: bool,
    /// Due work was created or rescheduled: wake the dispatcher after commit.
    wake: bool,
}

pub(super) struct Transacted {
    pub outs: Vec<Result<Out, StoreError>>,
    pub committed: bool,
    pub wake: bool,
}

/// The ops of one transaction, which may grow while it is being applied.
trait Ops {
    fn len(&self) -> usize;
    fn get(&self, i: usize) -> &Op;
    /// Adds what arrived meanwhile; false when nothing did.
    fn refill(&mut self) -> bool;
}

impl Ops for &[&Op] {
    fn len(&self) -> usize {
        <[&Op]>::len(self)
    }
    fn get(&self, i: usize) -> &Op {
        self[i]
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
    fn get(&self, i: usize) -> &Op {
        &self.batch[i].0
    }
    fn refill(&mut self) -> bool {
        let before = self.batch.len();
        (self.refill)(self.batch);
        self.batch.len() > before
    }
}

/// Applies `ops` in one write transaction. `Err` means nothing was written.
pub(super) fn transact(
    db: &Database,
    mut ops: &[&Op],
    keys: &mut KeyGen,
) -> Result<Transacted, StoreError> {
    transact_ops(db, &mut ops, keys)
}

fn transact_ops(
    db: &Database,
    ops: &mut impl Ops,
    keys: &mut KeyGen,
) -> Result<Transacted, StoreError> {
    let mut txn = db.begin_write()?;
    let mut fx = Effects::default();
    match apply_all(&txn, ops, keys, &mut fx) {
        Ok(outs) => {
            // Leases and successful attempts need no fsync of their own: the
            // next durable commit persists them with everything else, and if
            // a crash comes first, the delivery is still leased in the file,
            // so it is due again at the next start and runs again (at least
            // once, never lost). A retry schedule, a death and its on_failure
            // deliveries are kept durably: they carry the attempt count that
            // bounds the retries.
            if (0..ops.len()).all(|i| match ops.get(i) {
                Op::Lease { .. } => true,
                Op::Finish {
                    next, follow_ups, ..
                } => *next == Next::Done && follow_ups.is_empty(),
                _ => false,
            }) {
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
) -> Result<Vec<Result<Out, StoreError>>, StoreError> {
    let mut t = WriteTables::open(txn)?;
    let now = now_ms();
    let mut outs = Vec::with_capacity(ops.len());
    loop {
        while outs.len() < ops.len() {
            match apply(&mut t, ops.get(outs.len()), now, keys, fx) {
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
        Op::Commit(ev, row, lease_ms) => {
            commit(t, ev, row, *lease_ms, keys, fx).map(|(c, leased)| Out::Committed(c, leased))
        }
        Op::Lease {
            now_ms,
            limit,
            lease_ms,
        } => lease(t, *now_ms, *limit, *lease_ms, fx).map(Out::Leased),
        Op::Finish {
            delivery,
            attempt,
            next,
            follow_ups,
        } => finish(t, *delivery, attempt, *next, follow_ups, now, fx).map(Out::Ids),
        Op::Replay {
            event_key,
            deliveries,
        } => replay(t, event_key, deliveries, now, fx).map(Out::Ids),
        Op::Prune(chunk) => prune(t, chunk, fx).map(Out::Pruned),
    }
}

/// The stored row of a new event: `{"event":{..,"body":..},..}`, the same
/// JSON document `Event` serializes to, with the body spliced in. A JSON
/// body goes in as the sender wrote it (it was checked on the way in), so
/// the row costs a copy of the payload, not a re-encoding of it.
pub(super) fn event_row(ev: &NewEvent) -> Result<Vec<u8>, StoreError> {
    let e = &ev.event;
    let encoded;
    let body = match e.body.raw_json() {
        Some(raw) => raw,
        None => {
            encoded = serde_json::to_vec(e.body.value())?;
            encoded.as_slice()
        }
    };
    let head = serde_json::to_vec(&EventHead {
        id: &e.id,
        kind: &e.kind,
        source: &e.source,
        provider: &e.provider,
        received_at: &e.received_at,
        headers: &e.headers,
        query: &e.query,
    })?;
    let tail = serde_json::to_vec(&RowTail {
        received_ms: ev.received_ms,
        dedup_key: &ev.dedup_key,
        dedup_until_ms: ev.dedup_until_ms,
    })?;
    let (Some((b'}', head)), Some((b'{', tail))) = (head.split_last(), tail.split_first()) else {
        return Err(StoreError::Internal(
            "an event row did not encode as an object",
        ));
    };
    let mut json = Vec::with_capacity(head.len() + body.len() + tail.len() + 24);
    json.extend_from_slice(b"{\"event\":");
    json.extend_from_slice(head);
    json.extend_from_slice(b",\"body\":");
    json.extend_from_slice(body);
    json.extend_from_slice(b"},");
    json.extend_from_slice(tail);
    Ok(super::schema::encode_event_row(json))
}

/// An event's fields other than its body, as `Event` serializes them.
#[derive(Serialize)]
struct EventHead<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    source: &'a str,
    provider: &'a str,
    received_at: &'a str,
    headers: &'a std::collections::BTreeMap<String, String>,
    query: &'a std::collections::BTreeMap<String, String>,
}

/// The row's fields after the event.
#[derive(Serialize)]
struct RowTail<'a> {
    received_ms: u64,
    dedup_key: &'a str,
    dedup_until_ms: u64,
}

/// The event key behind `dedup_key` if the entry exists and expires after
/// `at_ms`.
fn live_dedup(
    t: &WriteTables<'_>,
    dedup_key: &str,
    at_ms: u64,
) -> Result<Option<String>, StoreError> {
    Ok(t.dedup.get(dedup_key)?.and_then(|g| {
        let (event_key, expires) = g.value();
        (expires > at_ms).then(|| event_key.to_owned())
    }))
}

/// Records (or renews) a dedup entry. It is removed when its event is
/// pruned, which happens only after it expired (see [`prune_event`]).
fn put_dedup(
    t: &mut WriteTables<'_>,
    dedup_key: &str,
    event_key: &str,
    expires: u64,
) -> Result<(), StoreError> {
    t.dedup.insert(dedup_key, (event_key, expires))?;
    Ok(())
}

/// Where a new delivery is linked to its event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Indexed {
    /// In the event row's header, which the caller writes.
    InRow,
    /// In `event_deliveries`: the event row already exists.
    Table,
}

/// Creates a delivery, `Pending` and due at `due_ms`, or already `Leased`
/// until `lease_until` (its caller runs it from memory).
fn create_delivery(
    t: &mut WriteTables<'_>,
    event_key: &str,
    d: &NewDelivery,
    due_ms: u64,
    lease_until: Option<u64>,
    index: Indexed,
) -> Result<DeliveryRecord, StoreError> {
    let id = t.next_delivery_id()?;
    let rec = DeliveryRecord {
        id,
        event_key: event_key.to_owned(),
        rule: d.rule.clone(),
        action: d.action,
        kind: d.kind.clone(),
        state: if lease_until.is_some() {
            DeliveryState::Leased
        } else {
            DeliveryState::Pending
        },
        attempts: 0,
        due_at_ms: due_ms,
        created_ms: due_ms,
        lease_until_ms: lease_until,
        success: None,
        last_error: None,
        on_failure: d.on_failure.clone(),
    };
    t.put_delivery(&rec)?;
    match lease_until {
        Some(until) => t.leased.insert((until, id), ())?,
        None => t.due.insert((due_ms, id), ())?,
    };
    if index == Indexed::Table {
        t.event_deliveries.insert((event_key, id), ())?;
    }
    Ok(rec)
}

/// Records an event and its deliveries. With `lease_ms`, the deliveries are
/// created leased and their records returned for the caller to run.
fn commit(
    t: &mut WriteTables<'_>,
    ev: &NewEvent,
    row: &[u8],
    lease_ms: Option<u64>,
    keys: &mut KeyGen,
    fx: &mut Effects,
) -> Result<(Committed, Vec<DeliveryRecord>), StoreError> {
    let at = ev.received_ms;
    let event_dedup = (!ev.dedup_key.is_empty()).then(|| event_dedup_key(&ev.dedup_key));
    if let Some(k) = &event_dedup {
        if let Some(original) = live_dedup(t, k, at)? {
            return Ok((Committed::Duplicate { key: original }, Vec::new()));
        }
    }

    // Rule-level keys are judged against what was recorded before this event,
    // so a rule's several actions (sharing one key) are all kept.
    let mut blocked = HashSet::new();
    let mut fresh = Vec::new();
    let mut seen = HashSet::new();
    for d in &ev.deliveries {
        if let Some(k) = &d.dedup_key {
            let k = rule_dedup_key(&d.rule, k);
            if seen.insert(k.clone()) {
                if live_dedup(t, &k, at)?.is_some() {
                    blocked.insert(k);
                } else {
                    fresh.push(k);
                }
            }
        }
    }

    let key = keys.next(at);
    fx.dirty = true;
    if let Some(k) = &event_dedup {
        put_dedup(t, k, &key, ev.dedup_until_ms)?;
    }
    for k in &fresh {
        put_dedup(t, k, &key, ev.dedup_until_ms)?;
        t.rule_dedup.insert((key.as_str(), k.as_str()), ())?;
    }

    let mut ids = Vec::with_capacity(ev.deliveries.len());
    let mut leased = Vec::new();
    for d in &ev.deliveries {
        let skip = d
            .dedup_key
            .as_ref()
            .is_some_and(|k| blocked.contains(&rule_dedup_key(&d.rule, k)));
        if skip {
            continue;
        }
        let rec = create_delivery(
            t,
            &key,
            d,
            at,
            lease_ms.map(|l| at.saturating_add(l)),
            Indexed::InRow,
        )?;
        ids.push(rec.id);
        if lease_ms.is_some() {
            leased.push(rec);
        }
    }
    // The ids were handed out in one run, so the row's header names them all
    // and `event_deliveries` is not touched.
    match (ids.first(), ids.last()) {
        (Some(&first), Some(&last)) => {
            t.events.insert(
                key.as_str(),
                with_deliveries(row, first..last + 1).as_slice(),
            )?;
        }
        _ => {
            t.events.insert(key.as_str(), row)?;
        }
    }
    // Leased deliveries are the caller's to run; only queued ones need the
    // dispatcher to look.
    if !ids.is_empty() && lease_ms.is_none() {
        fx.wake = true;
    }
    Ok((
        Committed::Accepted {
            key,
            deliveries: ids,
        },
        leased,
    ))
}

fn lease(
    t: &mut WriteTables<'_>,
    now: u64,
    limit: usize,
    lease_ms: u64,
    fx: &mut Effects,
) -> Result<Vec<LeasedRow>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Candidates: pending deliveries due by now, and leases that ran out
    // (their expiry is their due time). Both indexes are sorted by
    // (time, id), so the first `limit` of each suffice.
    let mut candidates: Vec<(u64, DeliveryId, bool)> = Vec::new();
    for item in t.due.range(..=(now, u64::MAX))?.take(limit) {
        let (k, _) = item?;
        let (at, id) = k.value();
        candidates.push((at, id, false));
    }
    for item in t.leased.range(..=(now, u64::MAX))?.take(limit) {
        let (k, _) = item?;
        let (at, id) = k.value();
        candidates.push((at, id, true));
    }
    candidates.sort_unstable();
    candidates.truncate(limit);

    let until = now.saturating_add(lease_ms);
    let mut rows: HashMap<String, Arc<Vec<u8>>> = HashMap::new();
    let mut out = Vec::with_capacity(candidates.len());
    for (at, id, was_leased) in candidates {
        if was_leased {
            t.leased.remove((at, id))?;
        } else {
            t.due.remove((at, id))?;
        }
        fx.dirty = true;
        let Some(mut rec) = load_delivery(&t.deliveries, id)? else {
            tracing::warn!(delivery = id, "index entry without delivery row; dropped");
            continue;
        };
        let cached = rows.get(&rec.event_key).cloned();
        let found = match cached {
            Some(r) => Some(r),
            None => t
                .events
                .get(rec.event_key.as_str())?
                .map(|g| Arc::new(g.value().to_vec())),
        };
        let row = match found {
            Some(r) => {
                rows.insert(rec.event_key.clone(), r.clone());
                r
            }
            None => {
                // Cannot run without its event; park it where people look.
                tracing::warn!(delivery = id, event = %rec.event_key, "delivery without event; marked dead");
                rec.state = DeliveryState::Dead;
                rec.lease_until_ms = None;
                rec.last_error = Some("event record missing".to_owned());
                t.put_delivery(&rec)?;
                t.dead.insert(id, ())?;
                continue;
            }
        };
        rec.state = DeliveryState::Leased;
        rec.lease_until_ms = Some(until);
        t.put_delivery(&rec)?;
        t.leased.insert((until, id), ())?;
        out.push((rec, row));
    }
    Ok(out)
}

/// Cuts `s` to at most `max` bytes on a char boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn finish(
    t: &mut WriteTables<'_>,
    id: DeliveryId,
    attempt: &Attempt,
    next: Next,
    follow_ups: &[NewDelivery],
    now: u64,
    fx: &mut Effects,
) -> Result<Vec<DeliveryId>, StoreError> {
    let Some(mut rec) = load_delivery(&t.deliveries, id)? else {
        return Err(StoreError::UnknownDelivery(id));
    };
    if !follow_ups.is_empty() && t.events.get(rec.event_key.as_str())?.is_none() {
        return Err(StoreError::UnknownEvent(rec.event_key));
    }

    let mut attempt = attempt.clone();
    if let Some(detail) = &mut attempt.detail {
        truncate(detail, MAX_DETAIL_BYTES);
    }
    let n = rec.attempts.saturating_add(1);
    if rec.state.is_final() || next != Next::Done {
        t.attempts
            .insert((id, n), serde_json::to_vec(&attempt)?.as_slice())?;
    }
    rec.attempts = n;
    fx.dirty = true;
    if attempt.outcome != "ok" {
        rec.last_error = Some(match (&attempt.detail, attempt.status) {
            (Some(d), _) => d.clone(),
            (None, Some(status)) => format!("{} (status {status})", attempt.outcome),
            (None, None) => attempt.outcome.clone(),
        });
    }

    if rec.state.is_final() {
        // A worker whose lease ran out finished after another one did: keep
        // its attempt for the record, but the first decision stands and its
        // follow-ups were already created.
        tracing::debug!(delivery = id, state = %rec.state, "finish on a finished delivery; attempt recorded only");
        t.put_delivery(&rec)?;
        return Ok(Vec::new());
    }
    match rec.state {
        DeliveryState::Pending => {
            t.due.remove((rec.due_at_ms, id))?;
        }
        DeliveryState::Leased => {
            if let Some(until) = rec.lease_until_ms {
                t.leased.remove((until, id))?;
            }
        }
        DeliveryState::Done | DeliveryState::Dead => {}
    }
    rec.lease_until_ms = None;
    match next {
        Next::Done => {
            rec.state = DeliveryState::Done;
            rec.success = Some(attempt);
        }
        Next::RetryAt(at) => {
            rec.state = DeliveryState::Pending;
            rec.due_at_ms = at;
            t.due.insert((at, id), ())?;
            // The dispatcher may be sleeping past `at`.
            fx.wake = true;
        }
        Next::Dead => {
            rec.state = DeliveryState::Dead;
            t.dead.insert(id, ())?;
        }
    }
    t.put_delivery(&rec)?;

    let mut ids = Vec::with_capacity(follow_ups.len());
    for d in follow_ups {
        ids.push(create_delivery(t, &rec.event_key, d, now, None, Indexed::Table)?.id);
        fx.wake = true;
    }
    Ok(ids)
}

fn replay(
    t: &mut WriteTables<'_>,
    event_key: &str,
    deliveries: &[NewDelivery],
    now: u64,
    fx: &mut Effects,
) -> Result<Vec<DeliveryId>, StoreError> {
    if t.events.get(event_key)?.is_none() {
        return Err(StoreError::UnknownEvent(event_key.to_owned()));
    }
    let mut ids = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        ids.push(create_delivery(t, event_key, d, now, None, Indexed::Table)?.id);
        fx.dirty = true;
        fx.wake = true;
    }
    Ok(ids)
}

fn prune(
    t: &mut WriteTables<'_>,
    chunk: &PruneChunk,
    fx: &mut Effects,
) -> Result<PruneOut, StoreError> {
    let mut stats = PruneStats {
        chunks: 1,
        ..PruneStats::default()
    };
    let mut cursor = None;
    if !chunk.events_done {
        // Keys are ULIDs stamped no earlier than the receive time, so every
        // key below this one was received before the cutoff.
        let cutoff_key = ulid::Ulid::from_parts(chunk.cutoff_ms, 0).to_string();
        let lower = match &chunk.after {
            Some(after) => Bound::Excluded(after.as_str()),
            None => Bound::Unbounded,
        };
        let mut scanned = Vec::new();
        for item in t
            .events
            .range::<&str>((lower, Bound::Excluded(cutoff_key.as_str())))?
            .take(PRUNE_EVENTS_PER_CHUNK)
        {
            let (k, _) = item?;
            scanned.push(k.value().to_owned());
        }
        if scanned.len() == PRUNE_EVENTS_PER_CHUNK {
            cursor = scanned.last().cloned();
        }
        for key in &scanned {
            if prune_event(t, key, chunk.now_ms, &mut stats)? {
                fx.dirty = true;
            }
        }
    }

    Ok(PruneOut { stats, cursor })
}

/// Removes one event with its deliveries, attempts and dedup entries, if
/// every delivery is final and its dedup window has closed; says whether it
/// did. Events with work left are kept whatever their age, and so are events
/// still guarding against duplicates (the server keeps retention at least as
/// long as the dedup window, so for it this is no extra wait).
fn prune_event(
    t: &mut WriteTables<'_>,
    key: &str,
    now_ms: u64,
    stats: &mut PruneStats,
) -> Result<bool, StoreError> {
    let Some(row) = t
        .events
        .get(key)?
        .map(|g| decode_event_keys(g.value()))
        .transpose()?
    else {
        return Ok(false);
    };
    if row.dedup_until_ms > now_ms {
        return Ok(false);
    }
    let ids = delivery_ids_of(&t.event_deliveries, key, row.first_deliveries.clone())?;
    let mut records = Vec::with_capacity(ids.len());
    for &id in &ids {
        match load_delivery(&t.deliveries, id)? {
            Some(rec) if !rec.state.is_final() => return Ok(false),
            rec => records.push((id, rec)),
        }
    }
    t.raise_id_floor()?;
    for (id, rec) in records {
        let mut removed = 0u64;
        t.attempts.retain_in((id, 0u32)..=(id, u32::MAX), |_, _| {
            removed += 1;
            false
        })?;
        stats.attempts += removed;
        if let Some(rec) = rec {
            stats.attempts += u64::from(rec.success.is_some());
        }
        t.dead.remove(id)?;
        t.deliveries.remove(id)?;
        t.event_deliveries.remove((key, id))?;
        stats.deliveries += 1;
    }

    // Dedup entries go with their event, unless a later event took the key
    // over (it may, once this one's entry expired).
    let mut dedup_keys = Vec::new();
    if !row.dedup_key.is_empty() {
        dedup_keys.push(event_dedup_key(&row.dedup_key));
    }
    for item in t.rule_dedup.range((key, "")..)? {
        let (k, _) = item?;
        let (event, dedup_key) = k.value();
        if event != key {
            break;
        }
        dedup_keys.push(dedup_key.to_owned());
    }
    for dedup_key in &dedup_keys {
        t.rule_dedup.remove((key, dedup_key.as_str()))?;
        let owner = t.dedup.get(dedup_key.as_str())?.map(|g| g.value().0 == key);
        if owner == Some(true) {
            t.dedup.remove(dedup_key.as_str())?;
            stats.dedup_keys += 1;
        }
    }
    t.events.remove(key)?;
    stats.events += 1;
    Ok(true)
}
