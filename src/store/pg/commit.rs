//! The committer task: every accepted event of this replica, with its
//! deliveries, in as few transactions as the database's pace allows.
//!
//! Owns batching concurrent commits into one transaction (as the redb writer
//! group-commits), event- and rule-level dedup with `INSERT … ON CONFLICT`
//! (so a duplicate racing on another replica waits for the first commit and
//! then resolves to one accepted and one duplicate), and the wake-up sent
//! after the commit. Keys are sorted within a batch: two replicas then take
//! the dedup rows' locks in the same order and cannot deadlock.

use std::collections::HashMap;
use std::sync::Arc;

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

async fn commit_batch(
    store: &PgStore,
    batch: &[Request],
    event_keys: &[String],
) -> Result<(Vec<Answer>, deadpool_postgres::Object), StoreError> {
    let mut client = store.client().await?;
    let txn = client.transaction().await.map_err(db_err)?;
    // Durable on return, whatever the database's default says.
    txn.batch_execute("SET LOCAL synchronous_commit = on")
        .await
        .map_err(db_err)?;
    super::bursts::lock_batch(&txn, batch.iter().map(|r| &r.ev)).await?;
    let mut answers = Vec::with_capacity(batch.len());
    for (req, key) in batch.iter().zip(event_keys) {
        answers.push(commit_one(store, &txn, req, key).await?);
    }
    txn.commit().await.map_err(db_err)?;
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

/// A leased delivery and its token, until the commit is known.
struct Tokened {
    leased: Leased,
    delivery_token: Option<String>,
}

async fn commit_one(
    store: &PgStore,
    txn: &Transaction<'_>,
    req: &Request,
    key: &str,
) -> Result<(Committed, Vec<Tokened>), StoreError> {
    let ev = &req.ev;
    let received = to_db(ev.received_ms);
    if !ev.dedup_key.is_empty() {
        // A live key stays; an expired one is taken over by this event.
        let fresh = txn
            .query_opt(
                "INSERT INTO hookrouter_dedup (key, event_key, until_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET event_key = EXCLUDED.event_key, until_ms = EXCLUDED.until_ms
                 WHERE hookrouter_dedup.until_ms <= $4
                 RETURNING 1",
                &[&ev.dedup_key.as_bytes(), &key, &to_db(ev.dedup_until_ms), &received],
            )
            .await
            .map_err(db_err)?;
        if fresh.is_none() {
            let first = txn
                .query_opt(
                    "SELECT event_key FROM hookrouter_dedup WHERE key = $1",
                    &[&ev.dedup_key.as_bytes()],
                )
                .await
                .map_err(db_err)?;
            let original = match &first {
                Some(row) => col::<String>(row, "event_key")?,
                None => String::new(),
            };
            return Ok((Committed::Duplicate { key: original }, Vec::new()));
        }
    }
    // The answer has a column of its own (the row is the redb row
    // without it), so a duplicate reads it without decoding the event.
    let reply = ev.reply.as_ref().map(serde_json::to_vec).transpose()?;
    txn.execute(
        "INSERT INTO hookrouter_events (key, received_ms, dedup_key, row_json, reply) VALUES ($1, $2, $3, $4, $5)",
        &[&key, &received, &ev.dedup_key.as_bytes(), &req.row, &reply],
    )
    .await
    .map_err(db_err)?;

    // Rule-level keys: judged once per (rule, key) against keys recorded
    // before this event, so the rule's several actions sharing it all stay.
    let mut rule_keys: HashMap<(&str, &str), bool> = HashMap::new();
    let mut wanted: Vec<(&str, &str)> = ev
        .deliveries
        .iter()
        .filter_map(|d| d.dedup_key.as_deref().map(|k| (d.rule.as_str(), k)))
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    for (rule, k) in wanted {
        let fresh = txn
            .query_opt(
                "INSERT INTO hookrouter_rule_dedup (rule, key, until_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (rule, key) DO UPDATE SET until_ms = EXCLUDED.until_ms
                 WHERE hookrouter_rule_dedup.until_ms <= $4
                 RETURNING 1",
                &[&rule, &k.as_bytes(), &to_db(ev.dedup_until_ms), &received],
            )
            .await
            .map_err(db_err)?;
        rule_keys.insert((rule, k), fresh.is_some());
    }

    let event = Arc::new(ev.event.clone());
    let mut ids = Vec::new();
    let mut leased = Vec::new();
    let mut dead = Vec::new();
    let mut paced = super::bursts::Paced::new(ev.received_ms);
    for d in &ev.deliveries {
        if let Some(k) = &d.dedup_key {
            if rule_keys.get(&(d.rule.as_str(), k.as_str())) == Some(&false) {
                continue;
            }
        }
        let plan = paced.admit(txn, d).await?;
        let lease = req.leased && d.error.is_none() && plan.now;
        let mut rec = insert(store, txn, key, d, ev.received_ms, plan.due_ms, lease).await?;
        paced.place(txn, d, &mut rec.0).await?;
        ids.push(rec.0.id);
        if rec.0.state == DeliveryState::Dead {
            dead.push(rec.0.clone());
        }
        if lease {
            leased.push(Tokened {
                leased: Leased {
                    delivery: rec.0,
                    event: Arc::clone(&event),
                },
                delivery_token: rec.1,
            });
        }
    }
    paced.settle(txn).await?;
    // Deliveries that could not be planned are dead already; their rule's
    // on_failure deliveries commit with the event.
    if !dead.is_empty() {
        let mut cx = Decider::new(store, txn, ev.received_ms);
        for rec in &dead {
            cx.failed_at_birth(rec).await?;
        }
    }
    Ok((
        Committed::Accepted {
            key: key.to_owned(),
            deliveries: ids,
        },
        leased,
    ))
}

/// Inserts one delivery, `Pending` due at `due_ms` (or `Dead` when it could
/// not be planned, or leased to this replica), and returns its record with
/// its lease token.
pub(super) async fn insert(
    store: &PgStore,
    txn: &Transaction<'_>,
    event_key: &str,
    d: &NewDelivery,
    created_ms: u64,
    due_ms: u64,
    lease: bool,
) -> Result<(DeliveryRecord, Option<String>), StoreError> {
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
    let json = serde_json::to_value(&doc)?;
    let row = txn
        .query_one(
            &format!(
                "INSERT INTO hookrouter_deliveries
                   (event_key, state, due_at_ms, created_ms, last_error, record, lease_token, lease_until_ms)
                 SELECT $1, $2, $3, $4, $5, $6, t.token,
                        CASE WHEN t.token IS NULL THEN NULL
                             ELSE (extract(epoch FROM now()) * 1000)::bigint + $8 END
                 FROM (SELECT CASE WHEN $7 THEN gen_random_uuid()::text END AS token) t
                 RETURNING {DELIVERY_COLS}, lease_token"
            ),
            &[
                &event_key,
                &state.as_str(),
                &to_db(due_ms),
                &to_db(created_ms),
                &d.error.as_deref().map(no_nul),
                &json,
                &(state == DeliveryState::Leased),
                &store.lease_ttl_ms(),
            ],
        )
        .await
        .map_err(db_err)?;
    let token: Option<String> = col(&row, "lease_token")?;
    let rec = decode_delivery(&row)?;
    Ok((rec, token))
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
