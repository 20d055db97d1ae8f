//! The committer task: every accepted event of this replica, with its
//! deliveries, in as few transactions as the database's pace allows.
//!
//! Owns batching concurrent commits into one transaction (as the redb writer
//! group-commits), event- and rule-level dedup with `INSERT … ON CONFLICT`
//! (so a duplicate racing on another replica waits for the first commit and
//! then resolves to one accepted and one duplicate), and the wake-up sent
//! after the commit. Keys are sorted within a batch: two replicas then take
//! the dedup rows' locks in the same order and cannot deadlock.
//!
//! A batch costs a fixed handful of round trips, not a few per event: each
//! table gets one multi-row statement (arrays through `unnest`), prepared
//! once per connection, and statements that do not depend on each other
//! are pipelined on the one connection (see [`commit_batch`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use deadpool_postgres::Transaction;
use tokio::sync::{mpsc, oneshot};

use super::decide::Decider;
use super::{DELIVERY_COLS, PgStore, col, db_err, decode_delivery, to_db};
use crate::store::StoreError;
use crate::store::ops::KeyGen;
use crate::store::types::{
    Committed, DeliveryId, DeliveryRecord, DeliveryState, Leased, NewDelivery, NewEvent, Reply,
};

/// Commits that may wait for the committer before senders wait too.
pub(super) const QUEUE_CAPACITY: usize = 8192;

/// Most events in one transaction: a failure fails them all, and each
/// sender waits for the whole batch.
const MAX_BATCH: usize = 256;

pub(super) struct Request {
    pub ev: NewEvent,
    pub row: Vec<u8>,
    /// Create the deliveries leased to this replica, for it to run at once.
    pub leased: bool,
    pub reply: oneshot::Sender<Result<(Committed, Vec<Leased>), StoreError>>,
}

/// Runs until every sender is gone (the store closed or dropped), having
/// answered every request it took; then says the store stopped.
pub(super) async fn run(
    weak: std::sync::Weak<super::Inner>,
    mut rx: mpsc::Receiver<Request>,
    mut keys: KeyGen,
) {
    while let Some(first) = rx.recv().await {
        // Held for one batch only, so dropping every handle closes the channel.
        let Some(store) = PgStore::from_weak(&weak) else {
            let _ = first.reply.send(Err(StoreError::Closed));
            continue;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        batch.sort_by(|a, b| a.ev.dedup_key.cmp(&b.ev.dedup_key));
        let n = batch.len();
        // Keys are taken in arrival (here: sorted) order; a ULID per event.
        let event_keys: Vec<String> = batch.iter().map(|r| keys.next(r.ev.received_ms)).collect();
        let out = store.run(commit_batch(&store, &batch, &event_keys)).await;
        match out {
            Ok((answers, client)) => {
                store.shared().counters.committed(n);
                let wake = answers
                    .iter()
                    .any(|(c, l)| matches!(c, Committed::Accepted { deliveries, .. } if deliveries.len() > l.len()));
                if wake {
                    store.wake_all(&client).await;
                }
                let mut unclaimed = Vec::new();
                for (req, answer) in batch.into_iter().zip(answers) {
                    if let Err(Ok((_, leased))) = req.reply.send(Ok(answer)) {
                        // The caller gave up (timed out or went away): no
                        // one will run what was leased for it.
                        unclaimed.extend(leased.into_iter().map(|l| l.delivery.id));
                    }
                }
                if !unclaimed.is_empty() {
                    store.unlease(&unclaimed).await;
                }
            }
            Err(e) => {
                // Never retried here: after a lost connection the commit may
                // have landed, and only the sender's retry, meeting the dedup
                // key, can tell; a second insert by this task could not.
                store.shared().counters.failed();
                tracing::warn!(error = %e, events = n, "Commit to PostgreSQL failed; answering 503.");
                for req in batch {
                    let _ = req.reply.send(Err(StoreError::Database(e.to_string())));
                }
            }
        }
    }
    if let Some(store) = PgStore::from_weak(&weak) {
        let _ = store.inner.stopped_tx.send(Some("it stopped".to_owned()));
    }
}

type Answer = (Committed, Vec<Leased>);

/// Claims the batch's event-level dedup keys: a live key stays, an expired
/// one is taken over by this event. `ON CONFLICT` makes a key another
/// replica is committing wait for that commit, then count as live. Rows
/// are inserted (and their locks taken) in the arrays' order, which is
/// sorted. Returns the keys claimed.
const CLAIM_EVENT_KEYS: &str = "WITH u AS (
       SELECT * FROM unnest($1::bytea[], $2::text[], $3::bigint[], $4::bigint[])
         WITH ORDINALITY AS u(key, event_key, until_ms, received_ms, n))
     INSERT INTO hookrouter_dedup (key, event_key, until_ms)
     SELECT key, event_key, until_ms FROM u ORDER BY n
     ON CONFLICT (key) DO UPDATE SET event_key = EXCLUDED.event_key, until_ms = EXCLUDED.until_ms
     WHERE hookrouter_dedup.until_ms <= (SELECT u.received_ms FROM u WHERE u.key = EXCLUDED.key)
     RETURNING key";

/// The events that hold the keys a batch could not claim. A statement of
/// its own: only a new statement sees a commit that the claim waited for.
const ORIGINALS: &str = "SELECT key, event_key FROM hookrouter_dedup WHERE key = ANY($1::bytea[])";

const INSERT_EVENTS: &str =
    "INSERT INTO hookrouter_events (key, received_ms, dedup_key, row_json, reply)
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bytea[], $5::bytea[])";

/// Rule-level keys, as [`CLAIM_EVENT_KEYS`] (sorted by rule and key).
const CLAIM_RULE_KEYS: &str = "WITH u AS (
       SELECT * FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::bigint[])
         WITH ORDINALITY AS u(rule, key, until_ms, received_ms, n))
     INSERT INTO hookrouter_rule_dedup (rule, key, until_ms)
     SELECT rule, key, until_ms FROM u ORDER BY n
     ON CONFLICT (rule, key) DO UPDATE SET until_ms = EXCLUDED.until_ms
     WHERE hookrouter_rule_dedup.until_ms <= (
       SELECT u.received_ms FROM u WHERE u.rule = EXCLUDED.rule AND u.key = EXCLUDED.key)
     RETURNING rule, key";

/// Deliveries, in the arrays' order, each leased to this replica (with a
/// fresh token and an expiry from the database clock) when `leased` says
/// so. `RETURNING` answers in the order the rows were inserted.
static INSERT_DELIVERIES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO hookrouter_deliveries
           (event_key, state, due_at_ms, created_ms, last_error, record, lease_token, lease_until_ms)
         SELECT event_key, state, due_at_ms, created_ms, last_error, record,
                CASE WHEN leased THEN gen_random_uuid()::text END,
                CASE WHEN leased THEN (extract(epoch FROM now()) * 1000)::bigint + $8 END
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::json[], $7::bool[])
           WITH ORDINALITY AS u(event_key, state, due_at_ms, created_ms, last_error, record, leased, n)
         ORDER BY n
         RETURNING {DELIVERY_COLS}, lease_token"
    )
});

/// One request of the batch as its transaction goes on.
struct Slot<'a> {
    req: &'a Request,
    /// The key its event gets if accepted.
    key: &'a str,
    /// Set when its dedup key is live: the key of the event holding it.
    original: Option<String>,
}

/// One transaction for the whole batch, as a fixed handful of multi-row
/// statements (arrays through `unnest`) rather than a few per event: each
/// statement is a round trip, and round trips, not the database's work,
/// bounded the committer. Statements are prepared once per connection
/// (`prepare_cached`), and independent ones are pipelined (issued together
/// on the one connection). In order:
///
/// 1. `BEGIN`;
/// 2. `SET LOCAL synchronous_commit` with the event-level dedup claim
///    (then the originals of the duplicates, if any);
/// 3. the accepted events' rows with the rule-level dedup claim;
/// 4. their deliveries;
/// 5. the `on_failure` deliveries of deliveries created dead (rare);
/// 6. `COMMIT`.
async fn commit_batch(
    store: &PgStore,
    batch: &[Request],
    event_keys: &[String],
) -> Result<(Vec<Answer>, deadpool_postgres::Object), StoreError> {
    let mut client = store.client().await?;
    let txn = client.transaction().await.map_err(db_err)?;
    let mut slots: Vec<Slot> = batch
        .iter()
        .zip(event_keys)
        .map(|(req, key)| Slot {
            req,
            key,
            original: None,
        })
        .collect();
    // Durable on return, whatever the database's default says.
    let paced_batch = batch
        .iter()
        .any(|r| r.ev.deliveries.iter().any(|d| d.pacing.is_some()));
    if paced_batch {
        // The burst and limit keys' locks come before any row lock (the
        // dedup claim), in one order for every replica: see `bursts`.
        txn.batch_execute("SET LOCAL synchronous_commit = on")
            .await
            .map_err(db_err)?;
        super::bursts::lock_batch(&txn, batch.iter().map(|r| &r.ev)).await?;
        claim_event_keys(&txn, &mut slots).await?;
    } else {
        tokio::try_join!(
            async {
                txn.batch_execute("SET LOCAL synchronous_commit = on")
                    .await
                    .map_err(db_err)
            },
            claim_event_keys(&txn, &mut slots),
        )?;
    }
    let accepted: Vec<&Slot> = slots.iter().filter(|s| s.original.is_none()).collect();
    let (_, rule_keys) = tokio::try_join!(
        insert_events(&txn, &accepted),
        claim_rule_keys(&txn, &accepted),
    )?;

    // Each accepted event's deliveries, in its rules' order; one whose
    // rule-level key is live (recorded before this event) is not created.
    // Deliveries that carry `debounce:`, `limit:` or `delay:` get their
    // due time (and whether they may run at once) from the rule's pacing
    // decision, taken here in this transaction, per event, in batch order.
    let mut planned: Vec<Vec<Planned>> = Vec::with_capacity(accepted.len());
    let mut made_for: Vec<Vec<&NewDelivery>> = Vec::with_capacity(accepted.len());
    let mut paced: Vec<super::bursts::Paced> = Vec::with_capacity(accepted.len());
    for (slot, fresh) in accepted.iter().zip(&rule_keys) {
        let ev = &slot.req.ev;
        let mut plans = Vec::with_capacity(ev.deliveries.len());
        let mut ds = Vec::with_capacity(ev.deliveries.len());
        let mut pace = super::bursts::Paced::new(ev.received_ms);
        for d in &ev.deliveries {
            if let Some(k) = &d.dedup_key
                && fresh.get(&(d.rule.as_str(), k.as_str())) == Some(&false)
            {
                continue;
            }
            let at = pace.admit(&txn, d).await?;
            let lease = slot.req.leased && d.error.is_none() && at.now;
            let (doc, error) = plan(slot.key, d, ev.received_ms, at.due_ms, lease);
            plans.push(Planned { doc, error });
            ds.push(d);
        }
        planned.push(plans);
        made_for.push(ds);
        paced.push(pace);
    }
    let flat: Vec<&Planned> = planned.iter().flatten().collect();
    let mut made = insert_deliveries(store, &txn, &flat).await?.into_iter();

    let mut outcomes: Vec<(Committed, Vec<Tokened>)> = Vec::with_capacity(accepted.len());
    let mut dead: Vec<(u64, DeliveryRecord)> = Vec::new();
    for ((slot, ds), mut pace) in accepted.iter().zip(&made_for).zip(paced) {
        let mut ids = Vec::with_capacity(ds.len());
        let mut leased = Vec::new();
        let mut event: Option<Arc<crate::event::Event>> = None;
        for d in ds {
            let (mut rec, token) = made.next().ok_or_else(unanswered)?;
            pace.place(&txn, d, &mut rec).await?;
            ids.push(rec.id);
            if rec.state == DeliveryState::Dead {
                dead.push((slot.req.ev.received_ms, rec.clone()));
            }
            if rec.state == DeliveryState::Leased {
                let event = event.get_or_insert_with(|| Arc::new(slot.req.ev.event.clone()));
                leased.push(Tokened {
                    leased: Leased {
                        delivery: rec,
                        event: Arc::clone(event),
                    },
                    delivery_token: token,
                });
            }
        }
        pace.settle(&txn).await?;
        outcomes.push((
            Committed::Accepted {
                key: slot.key.to_owned(),
                deliveries: ids,
            },
            leased,
        ));
    }
    // Deliveries that could not be planned are dead already; their rule's
    // on_failure deliveries commit with the event.
    for (received_ms, rec) in &dead {
        let mut cx = Decider::new(store, &txn, *received_ms);
        cx.failed_at_birth(rec).await?;
    }
    txn.commit().await.map_err(db_err)?;
    let mut outcomes = outcomes.into_iter();
    let answers = slots
        .iter()
        .map(|s| match &s.original {
            Some(key) => Ok((Committed::Duplicate { key: key.clone() }, Vec::new())),
            None => outcomes.next().ok_or_else(unanswered),
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    // Held only once the commit is known.
    {
        let mut held = store.held();
        for (_, leased) in &answers {
            for l in leased {
                if let Some(token) = &l.delivery_token {
                    held.insert(l.leased.delivery.id, token.clone());
                }
            }
        }
    }
    let answers = answers
        .into_iter()
        .map(|(c, l)| (c, l.into_iter().map(|t| t.leased).collect()))
        .collect();
    Ok((answers, client))
}

fn unanswered() -> StoreError {
    StoreError::Corrupt("fewer rows came back than were written".to_owned())
}

/// A leased delivery and its token, until the commit is known.
struct Tokened {
    leased: Leased,
    delivery_token: Option<String>,
}

/// Claims the event-level dedup keys of a (sorted) batch, setting
/// `original` on each request whose key is live. Requests without a key
/// are accepted.
///
/// A statement cannot touch one row twice, so two requests of the batch
/// with the same key (a sender's retry racing its first try) go in
/// successive statements, judged as if committed one after the other: the
/// second finds the first's key live. That is rare; one statement is usual.
async fn claim_event_keys(txn: &Transaction<'_>, slots: &mut [Slot<'_>]) -> Result<(), StoreError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut rounds: Vec<Vec<&mut Slot>> = Vec::new();
    for slot in slots.iter_mut() {
        let req = slot.req;
        if req.ev.dedup_key.is_empty() {
            continue;
        }
        let r = seen.entry(req.ev.dedup_key.as_str()).or_insert(0);
        match rounds.get_mut(*r) {
            Some(round) => round.push(slot),
            None => rounds.push(vec![slot]),
        }
        *r += 1;
    }
    for round in rounds {
        let keys: Vec<&[u8]> = round
            .iter()
            .map(|s| s.req.ev.dedup_key.as_bytes())
            .collect();
        let owners: Vec<&str> = round.iter().map(|s| s.key).collect();
        let until: Vec<i64> = round
            .iter()
            .map(|s| to_db(s.req.ev.dedup_until_ms))
            .collect();
        let received: Vec<i64> = round.iter().map(|s| to_db(s.req.ev.received_ms)).collect();
        let stmt = txn.prepare_cached(CLAIM_EVENT_KEYS).await.map_err(db_err)?;
        let rows = txn
            .query(&stmt, &[&keys, &owners, &until, &received])
            .await
            .map_err(db_err)?;
        let claimed = rows
            .iter()
            .map(|r| col::<Vec<u8>>(r, "key"))
            .collect::<Result<HashSet<_>, _>>()?;
        let lost: Vec<&mut Slot> = round
            .into_iter()
            .filter(|s| !claimed.contains(s.req.ev.dedup_key.as_bytes()))
            .collect();
        if lost.is_empty() {
            continue;
        }
        // Read before the next round, which may take an expired key over.
        let keys: Vec<&[u8]> = lost.iter().map(|s| s.req.ev.dedup_key.as_bytes()).collect();
        let stmt = txn.prepare_cached(ORIGINALS).await.map_err(db_err)?;
        let rows = txn.query(&stmt, &[&keys]).await.map_err(db_err)?;
        let mut holders = HashMap::with_capacity(rows.len());
        for r in &rows {
            holders.insert(col::<Vec<u8>>(r, "key")?, col::<String>(r, "event_key")?);
        }
        for slot in lost {
            let holder = holders.get(slot.req.ev.dedup_key.as_bytes());
            slot.original = Some(holder.cloned().unwrap_or_default());
        }
    }
    Ok(())
}

/// The rows of the accepted events. The answer a `respond:` gave has a
/// column of its own (the row is the redb row without it), so a duplicate
/// reads it without decoding the event.
async fn insert_events(txn: &Transaction<'_>, accepted: &[&Slot<'_>]) -> Result<(), StoreError> {
    if accepted.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = accepted.iter().map(|s| s.key).collect();
    let received: Vec<i64> = accepted
        .iter()
        .map(|s| to_db(s.req.ev.received_ms))
        .collect();
    let dedup: Vec<&[u8]> = accepted
        .iter()
        .map(|s| s.req.ev.dedup_key.as_bytes())
        .collect();
    let rows: Vec<&[u8]> = accepted.iter().map(|s| s.req.row.as_slice()).collect();
    let replies = accepted
        .iter()
        .map(|s| s.req.ev.reply.as_ref().map(serde_json::to_vec).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let stmt = txn.prepare_cached(INSERT_EVENTS).await.map_err(db_err)?;
    txn.execute(&stmt, &[&keys, &received, &dedup, &rows, &replies])
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Whether each accepted event's rule-level keys were fresh, one map per
/// event in `accepted`'s order: judged once per (rule, key) and event
/// against keys recorded before it, so a rule's several actions sharing a
/// key all stay. Events of the batch sharing a key go in successive
/// statements, as in [`claim_event_keys`].
async fn claim_rule_keys<'a>(
    txn: &Transaction<'_>,
    accepted: &[&Slot<'a>],
) -> Result<Vec<HashMap<(&'a str, &'a str), bool>>, StoreError> {
    let mut fresh: Vec<HashMap<(&str, &str), bool>> = vec![HashMap::new(); accepted.len()];
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    // (the event's position in `accepted`, the event, rule, key)
    let mut rounds: Vec<Vec<(usize, &NewEvent, &str, &str)>> = Vec::new();
    for (pos, slot) in accepted.iter().enumerate() {
        let ev: &'a NewEvent = &slot.req.ev;
        let mut wanted: Vec<(&str, &str)> = ev
            .deliveries
            .iter()
            .filter_map(|d| d.dedup_key.as_deref().map(|k| (d.rule.as_str(), k)))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        for (rule, k) in wanted {
            let r = seen.entry((rule, k)).or_insert(0);
            match rounds.get_mut(*r) {
                Some(round) => round.push((pos, ev, rule, k)),
                None => rounds.push(vec![(pos, ev, rule, k)]),
            }
            *r += 1;
        }
    }
    for mut round in rounds {
        // The order the rows' locks are taken in, the same on every replica.
        round.sort_unstable_by(|a, b| (a.2, a.3).cmp(&(b.2, b.3)));
        let rules: Vec<&str> = round.iter().map(|e| e.2).collect();
        let keys: Vec<&[u8]> = round.iter().map(|e| e.3.as_bytes()).collect();
        let until: Vec<i64> = round.iter().map(|e| to_db(e.1.dedup_until_ms)).collect();
        let received: Vec<i64> = round.iter().map(|e| to_db(e.1.received_ms)).collect();
        let stmt = txn.prepare_cached(CLAIM_RULE_KEYS).await.map_err(db_err)?;
        let rows = txn
            .query(&stmt, &[&rules, &keys, &until, &received])
            .await
            .map_err(db_err)?;
        let claimed = rows
            .iter()
            .map(|r| Ok((col::<String>(r, "rule")?, col::<Vec<u8>>(r, "key")?)))
            .collect::<Result<HashSet<_>, StoreError>>()?;
        for (pos, _, rule, k) in round {
            let won = claimed.contains(&(rule.to_owned(), k.as_bytes().to_vec()));
            if let Some(m) = fresh.get_mut(pos) {
                m.insert((rule, k), won);
            }
        }
    }
    Ok(fresh)
}

/// A delivery about to be inserted.
struct Planned {
    /// As created; `id` is set by the insert. `Leased` means leased to
    /// this replica with a fresh token.
    doc: DeliveryRecord,
    /// Why it could not be planned (it is `Dead`), for its `last_error`.
    error: Option<String>,
}

/// The record of a delivery as created: `Pending` due at `due_ms`, or
/// `Dead` when it could not be planned, or leased to this replica; and its
/// error, if it is dead.
fn plan(
    event_key: &str,
    d: &NewDelivery,
    created_ms: u64,
    due_ms: u64,
    lease: bool,
) -> (DeliveryRecord, Option<String>) {
    let state = if d.error.is_some() {
        DeliveryState::Dead
    } else if lease {
        DeliveryState::Leased
    } else {
        DeliveryState::Pending
    };
    let doc = DeliveryRecord {
        id: 0,
        event_key: event_key.to_owned(),
        rule: d.rule.clone(),
        action: d.action,
        kind: d.kind,
        state,
        attempts: 0,
        due_at_ms: due_ms,
        created_ms,
        lease_until_ms: None,
        last_error: None,
        on_failure: d.on_failure.clone(),
        success: None,
        list: d.list,
        then: d.then.clone(),
        // Text columns cannot hold NUL, and the group's key is one.
        group: d.group.clone().map(|mut g| {
            g.key = no_nul(&g.key);
            g
        }),
        parent: d.parent,
        result: d.result.clone(),
        cancel: None,
        cancel_reason: d.cancel_reason.clone(),
        deadline_ms: d.start_within_ms.map(|w| created_ms.saturating_add(w)),
        waited: false,
        debounce: None,
    };
    (doc, d.error.as_deref().map(no_nul))
}

/// Inserts `planned` in one statement; their records as stored, with the
/// lease tokens of those leased, in the same order.
async fn insert_deliveries(
    store: &PgStore,
    txn: &Transaction<'_>,
    planned: &[&Planned],
) -> Result<Vec<(DeliveryRecord, Option<String>)>, StoreError> {
    if planned.is_empty() {
        return Ok(Vec::new());
    }
    let event_keys: Vec<&str> = planned.iter().map(|p| p.doc.event_key.as_str()).collect();
    let states: Vec<&str> = planned.iter().map(|p| p.doc.state.as_str()).collect();
    let due: Vec<i64> = planned.iter().map(|p| to_db(p.doc.due_at_ms)).collect();
    let created: Vec<i64> = planned.iter().map(|p| to_db(p.doc.created_ms)).collect();
    let errors: Vec<Option<&str>> = planned.iter().map(|p| p.error.as_deref()).collect();
    let docs = planned
        .iter()
        .map(|p| serde_json::to_value(&p.doc))
        .collect::<Result<Vec<_>, _>>()?;
    let leased: Vec<bool> = planned
        .iter()
        .map(|p| p.doc.state == DeliveryState::Leased)
        .collect();
    let stmt = txn
        .prepare_cached(&INSERT_DELIVERIES)
        .await
        .map_err(db_err)?;
    let rows = txn
        .query(
            &stmt,
            &[
                &event_keys,
                &states,
                &due,
                &created,
                &errors,
                &docs,
                &leased,
                &store.lease_ttl_ms(),
            ],
        )
        .await
        .map_err(db_err)?;
    if rows.len() != planned.len() {
        return Err(StoreError::Corrupt(format!(
            "{} deliveries inserted, {} came back",
            planned.len(),
            rows.len()
        )));
    }
    let mut made = Vec::with_capacity(rows.len());
    for (row, p) in rows.iter().zip(planned) {
        let rec = decode_delivery(row)?;
        // The ids are mapped back by position: refuse (and roll back)
        // rather than hand out an id for another delivery.
        let same = rec.event_key == p.doc.event_key
            && rec.rule == p.doc.rule
            && rec.list == p.doc.list
            && rec.action == p.doc.action
            && rec.then == p.doc.then;
        if !same {
            return Err(StoreError::Corrupt(
                "inserted deliveries came back in another order".to_owned(),
            ));
        }
        made.push((rec, col::<Option<String>>(row, "lease_token")?));
    }
    Ok(made)
}

/// Inserts one delivery, `Pending` due at `due_ms` (or `Dead` when it could
/// not be planned, or leased to this replica), and returns its record with
/// its lease token. For follow-ups (`then:`, `on_failure`, `on_cancel`,
/// replay), which come one at a time.
pub(super) async fn insert(
    store: &PgStore,
    txn: &Transaction<'_>,
    event_key: &str,
    d: &NewDelivery,
    created_ms: u64,
    due_ms: u64,
    lease: bool,
) -> Result<(DeliveryRecord, Option<String>), StoreError> {
    let (doc, error) = plan(event_key, d, created_ms, due_ms, lease);
    let planned = Planned { doc, error };
    insert_deliveries(store, txn, &[&planned])
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("no delivery came back".to_owned()))
}

impl PgStore {
    /// Stores an accepted event with its deliveries, or reports that its
    /// dedup key is live (here or on any replica). `Accepted` only after a
    /// synchronous commit.
    pub async fn commit(&self, ev: NewEvent) -> Result<Committed, StoreError> {
        self.queue(ev, false).await.map(|(c, _)| c)
    }

    /// [`PgStore::commit`], with the deliveries created leased to this
    /// replica and handed back to run at once.
    pub async fn commit_leased(
        &self,
        ev: NewEvent,
    ) -> Result<(Committed, Vec<Leased>), StoreError> {
        self.queue(ev, true).await
    }

    async fn queue(&self, mut ev: NewEvent, leased: bool) -> Result<Answer, StoreError> {
        let reply = ev.reply.take();
        let row = crate::store::ops::event_row(&ev)?;
        ev.reply = reply;
        if leased {
            ev.event.body.forget_text();
        }
        let sender = match self.inner.commits.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
        .ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        // The wait for the committer counts against `--store-timeout` too: a
        // database slower than that is answered 503 whatever the reason. An
        // event committed after the caller gave up is found by its retry as
        // a duplicate; what was leased for it is let go (see `run`).
        let waited = tokio::time::timeout(self.inner.opts.timeout, async {
            sender
                .send(Request {
                    ev,
                    row,
                    leased,
                    reply,
                })
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
        .await;
        match waited {
            Ok(out) => out,
            Err(_) => Err(StoreError::Database(format!(
                "no commit within {}",
                humantime::format_duration(self.inner.opts.timeout)
            ))),
        }
    }

    /// Hands back leases this replica took for deliveries it will not run:
    /// they are due again at once, for any replica. Should this fail, the
    /// leases simply run out.
    async fn unlease(&self, ids: &[DeliveryId]) {
        let tokens: Vec<(i64, String)> = {
            let mut held = self.held();
            ids.iter()
                .filter_map(|id| held.remove(id).map(|t| (to_db(*id), t)))
                .collect()
        };
        if tokens.is_empty() {
            return;
        }
        let (ids, tokens): (Vec<i64>, Vec<String>) = tokens.into_iter().unzip();
        let out = self
            .run(async {
                let client = self.client().await?;
                client
                    .execute(
                        "UPDATE hookrouter_deliveries d SET state = 'pending',
                           lease_token = NULL, lease_until_ms = NULL
                         FROM unnest($1::bigint[], $2::text[]) AS h(id, token)
                         WHERE d.id = h.id AND d.lease_token = h.token AND d.state = 'leased'",
                        &[&ids, &tokens],
                    )
                    .await
                    .map_err(db_err)?;
                self.wake_all(&client).await;
                Ok(())
            })
            .await;
        if let Err(e) = out {
            tracing::debug!(error = %e, "Cannot hand back unclaimed leases; they run out instead.");
        }
    }
}

impl PgStore {
    /// See [`crate::store::Store::reply_of`].
    pub async fn reply_of(&self, key: &str) -> Result<Option<Reply>, StoreError> {
        self.run(async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT reply FROM hookrouter_events WHERE key = $1",
                    &[&key],
                )
                .await
                .map_err(db_err)?;
            let bytes: Option<Vec<u8>> = match &row {
                Some(r) => col(r, "reply")?,
                None => None,
            };
            bytes
                .map(|b| {
                    serde_json::from_slice(&b)
                        .map_err(|e| StoreError::Corrupt(format!("event reply: {e}")))
                })
                .transpose()
        })
        .await
    }
}

/// Text for a text column: PostgreSQL's text cannot hold NUL, which action
/// output may; it becomes U+FFFD.
pub(super) fn no_nul(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}
