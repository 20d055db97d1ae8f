//! Reads, replay, cancel and prune on PostgreSQL: what any replica answers
//! for the admin API, the command line and retention.
//!
//! Owns the queries behind event and delivery listings, queue depth,
//! replaying an event (new deliveries, due now), cancelling an event's or a
//! group's unfinished deliveries, and pruning finished events whose dedup
//! window closed, in bounded transactions.

use super::decide::{Decider, after_commit};
use super::{DELIVERY_COLS, PgStore, col, db_err, decode_delivery, from_db, to_db};
use crate::store::StoreError;
use crate::store::types::{
    Attempt, AttemptOutcome, CancelOutcome, DedupKey, DeliveryCounts, DeliveryDetail, DeliveryId,
    DeliveryRecord, DeliveryState, EventDetail, EventSummary, NewDelivery, PruneStats, QueueDepth,
};

/// Events removed per prune transaction.
const PRUNE_CHUNK: i64 = 500;

impl PgStore {
    /// An event with its deliveries and their attempts.
    pub async fn get_event(&self, key: &str) -> Result<Option<EventDetail>, StoreError> {
        self.run(async {
            let client = self.client().await?;
            let Some(ev) = client
                .query_opt(
                    "SELECT received_ms, dedup_key, row_json FROM hookrouter_events WHERE key = $1",
                    &[&key],
                )
                .await
                .map_err(db_err)?
            else {
                return Ok(None);
            };
            let bytes: Vec<u8> = col(&ev, "row_json")?;
            let row = crate::store::schema::decode_event_row(&bytes)?;
            let dedup: Vec<u8> = col(&ev, "dedup_key")?;
            let dedup = String::from_utf8_lossy(&dedup);
            let rows = client
                .query(
                    &format!(
                        "SELECT {DELIVERY_COLS} FROM hookrouter_deliveries WHERE event_key = $1 ORDER BY id"
                    ),
                    &[&key],
                )
                .await
                .map_err(db_err)?;
            let attempts = client
                .query(
                    "SELECT a.delivery_id, a.at_ms, a.duration_ms, a.outcome, a.status, a.detail
                     FROM hookrouter_attempts a JOIN hookrouter_deliveries d ON d.id = a.delivery_id
                     WHERE d.event_key = $1 ORDER BY a.delivery_id, a.seq",
                    &[&key],
                )
                .await
                .map_err(db_err)?;
            let mut deliveries = Vec::with_capacity(rows.len());
            for r in &rows {
                let record = decode_delivery(r)?;
                let mut history = Vec::new();
                for a in &attempts {
                    if from_db(col(a, "delivery_id")?) == record.id {
                        history.push(decode_attempt(a)?);
                    }
                }
                deliveries.push(DeliveryDetail { record, history });
            }
            Ok(Some(EventDetail {
                key: key.to_owned(),
                received_ms: from_db(col(&ev, "received_ms")?),
                dedup: DedupKey::from_stored(&dedup),
                event: row.event,
                deliveries,
            }))
        })
        .await
    }

    /// Events newest first, strictly older than `before` when given.
    pub async fn list_events(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT e.key, e.received_ms, e.row_json,
                       COALESCE((SELECT json_object_agg(s.state, s.n) FROM
                         (SELECT state, count(*) AS n FROM hookrouter_deliveries d
                          WHERE d.event_key = e.key GROUP BY state) s), '{}')::jsonb AS counts
                     FROM hookrouter_events e
                     WHERE $1::text IS NULL OR e.key < $1
                     ORDER BY e.key DESC LIMIT $2",
                    &[&before, &limit],
                )
                .await
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let bytes: Vec<u8> = col(r, "row_json")?;
                let row = crate::store::schema::decode_event_row(&bytes)?;
                let counts_doc: serde_json::Value = col(r, "counts")?;
                let mut counts = DeliveryCounts::default();
                for state in DeliveryState::ALL {
                    let n = counts_doc
                        .get(state.as_str())
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0);
                    *counts.slot(state) = u32::try_from(n).unwrap_or(u32::MAX);
                }
                out.push(EventSummary {
                    key: col(r, "key")?,
                    event_id: row.event.id,
                    kind: row.event.kind,
                    source: row.event.source,
                    provider: row.event.provider,
                    received_at: row.event.received_at,
                    received_ms: from_db(col(r, "received_ms")?),
                    deliveries: counts,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Up to `limit` deliveries, in the order the redb engine lists them.
    pub async fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (filter, order) = match state {
            None => ("TRUE", "id DESC"),
            Some(DeliveryState::Pending) => ("state = $1", "due_at_ms, id"),
            Some(DeliveryState::Leased) => ("state = $1", "lease_until_ms, id"),
            Some(_) => ("state = $1", "id DESC"),
        };
        let word = state.map_or("", DeliveryState::as_str);
        self.run(async {
            let client = self.client().await?;
            let sql = format!(
                "SELECT {DELIVERY_COLS} FROM hookrouter_deliveries
                 WHERE {filter} AND $1::text IS NOT NULL ORDER BY {order} LIMIT $2"
            );
            let rows = client.query(&sql, &[&word, &limit]).await.map_err(db_err)?;
            rows.iter().map(decode_delivery).collect()
        })
        .await
    }

    /// Deliveries per state.
    pub async fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        self.run(async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT state, count(*) AS n FROM hookrouter_deliveries GROUP BY state",
                    &[],
                )
                .await
                .map_err(db_err)?;
            let mut depth = QueueDepth::default();
            for r in &rows {
                let word: String = col(r, "state")?;
                let n = from_db(col(r, "n")?);
                let Ok(state) = word.parse::<DeliveryState>() else {
                    continue;
                };
                match state {
                    DeliveryState::Pending => depth.pending = n,
                    DeliveryState::Leased => depth.leased = n,
                    DeliveryState::Done => depth.done = n,
                    DeliveryState::Dead => depth.dead = n,
                    DeliveryState::Skipped => depth.skipped = n,
                    DeliveryState::Superseded => depth.superseded = n,
                    DeliveryState::Cancelled => depth.cancelled = n,
                    DeliveryState::Expired => depth.expired = n,
                    DeliveryState::Coalesced => depth.coalesced = n,
                    DeliveryState::Dropped => depth.dropped = n,
                }
            }
            Ok(depth)
        })
        .await
    }

    /// New `Pending` deliveries, due now, for an existing event.
    pub async fn replay(
        &self,
        event_key: &str,
        deliveries: Vec<NewDelivery>,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let ids = self
            .run(async {
                let mut client = self.client().await?;
                let txn = client.transaction().await.map_err(db_err)?;
                let exists = txn
                    .query_opt(
                        "SELECT 1 FROM hookrouter_events WHERE key = $1 FOR SHARE",
                        &[&event_key],
                    )
                    .await
                    .map_err(db_err)?;
                if exists.is_none() {
                    return Err(StoreError::UnknownEvent(event_key.to_owned()));
                }
                let fresh: Vec<NewDelivery> = deliveries
                    .iter()
                    .map(|d| NewDelivery {
                        dedup_key: None,
                        ..d.clone()
                    })
                    .collect();
                let mut cx = Decider::new(self, &txn, crate::clock::now_ms());
                let ids = cx.create(event_key, &fresh).await?;
                let (_, _, wake) = cx.into_parts();
                txn.commit().await.map_err(db_err)?;
                after_commit(self, &client, wake, &[]).await;
                Ok(ids)
            })
            .await?;
        Ok(ids)
    }

    /// Cancels the unfinished deliveries of an event (of `rule` only, when
    /// given): waiting ones end `cancelled`; running ones are marked, named
    /// to be stopped (on whichever replica runs them), and end `cancelled`
    /// when their attempt is recorded. Each rule affected runs its
    /// `on_cancel` once for the event.
    pub async fn cancel_event(
        &self,
        event_key: &str,
        rule: Option<&str>,
        reason: &str,
    ) -> Result<CancelOutcome, StoreError> {
        self.run(async {
            let mut client = self.client().await?;
            let txn = client.transaction().await.map_err(db_err)?;
            let exists = txn
                .query_opt(
                    "SELECT 1 FROM hookrouter_events WHERE key = $1",
                    &[&event_key],
                )
                .await
                .map_err(db_err)?;
            if exists.is_none() {
                return Err(StoreError::UnknownEvent(event_key.to_owned()));
            }
            let mut cx = Decider::new(self, &txn, crate::clock::now_ms());
            let out = cx
                .cancel(
                    "event_key = $1 AND ($2::text IS NULL OR rule = $2)",
                    &[&event_key, &rule],
                    reason,
                )
                .await?;
            let (_, stop, wake) = cx.into_parts();
            txn.commit().await.map_err(db_err)?;
            after_commit(self, &client, wake, &stop).await;
            Ok(out)
        })
        .await
    }

    /// Cancels the unfinished deliveries of `rule` in group `key`.
    pub async fn cancel_group(
        &self,
        rule: &str,
        key: &str,
        reason: &str,
    ) -> Result<CancelOutcome, StoreError> {
        self.run(async {
            let mut client = self.client().await?;
            let txn = client.transaction().await.map_err(db_err)?;
            let key = super::commit::no_nul(key);
            let mut cx = Decider::new(self, &txn, crate::clock::now_ms());
            let out = cx
                .cancel("rule = $1 AND group_key = $2", &[&rule, &key], reason)
                .await?;
            let (_, stop, wake) = cx.into_parts();
            txn.commit().await.map_err(db_err)?;
            after_commit(self, &client, wake, &stop).await;
            Ok(out)
        })
        .await
    }

    /// Deletes finished events received before `now_ms -
    /// events_older_than_ms` whose dedup window closed, with their
    /// deliveries and attempts, and every expired dedup key.
    pub async fn prune(
        &self,
        now_ms: u64,
        events_older_than_ms: u64,
    ) -> Result<PruneStats, StoreError> {
        let cutoff = to_db(now_ms.saturating_sub(events_older_than_ms));
        let now = to_db(now_ms);
        let mut total = PruneStats::default();
        loop {
            let chunk = self
                .run(async {
                    let mut client = self.client().await?;
                    let txn = client.transaction().await.map_err(db_err)?;
                    let row = txn
                        .query_one(
                            "WITH gone AS (
                               SELECT e.key FROM hookrouter_events e
                               WHERE e.received_ms < $1
                                 AND NOT EXISTS (SELECT 1 FROM hookrouter_deliveries d
                                   WHERE d.event_key = e.key AND d.state IN ('pending', 'leased'))
                                 AND NOT EXISTS (SELECT 1 FROM hookrouter_dedup k
                                   WHERE k.key = e.dedup_key AND k.event_key = e.key AND k.until_ms > $2)
                               ORDER BY e.key LIMIT $3 FOR UPDATE SKIP LOCKED
                             ), attempts AS (
                               DELETE FROM hookrouter_attempts a USING hookrouter_deliveries d, gone
                               WHERE a.delivery_id = d.id AND d.event_key = gone.key RETURNING 1
                             ), deliveries AS (
                               DELETE FROM hookrouter_deliveries d USING gone
                               WHERE d.event_key = gone.key RETURNING 1
                             ), events AS (
                               DELETE FROM hookrouter_events e USING gone
                               WHERE e.key = gone.key RETURNING 1
                             )
                             SELECT (SELECT count(*) FROM events) AS events,
                                    (SELECT count(*) FROM deliveries) AS deliveries,
                                    (SELECT count(*) FROM attempts) AS attempts",
                            &[&cutoff, &now, &PRUNE_CHUNK],
                        )
                        .await
                        .map_err(db_err)?;
                    let keys = txn
                        .execute(
                            "DELETE FROM hookrouter_dedup WHERE key IN
                               (SELECT key FROM hookrouter_dedup WHERE until_ms <= $1 LIMIT $2)",
                            &[&now, &PRUNE_CHUNK],
                        )
                        .await
                        .map_err(db_err)?;
                    let rule_keys = txn
                        .execute(
                            "DELETE FROM hookrouter_rule_dedup WHERE (rule, key) IN
                               (SELECT rule, key FROM hookrouter_rule_dedup WHERE until_ms <= $1 LIMIT $2)",
                            &[&now, &PRUNE_CHUNK],
                        )
                        .await
                        .map_err(db_err)?;
                    txn.commit().await.map_err(db_err)?;
                    Ok(PruneStats {
                        events: from_db(col(&row, "events")?),
                        deliveries: from_db(col(&row, "deliveries")?),
                        attempts: from_db(col(&row, "attempts")?),
                        dedup_keys: keys + rule_keys,
                        chunks: 1,
                    })
                })
                .await?;
            total.add(&chunk);
            let full = i64::try_from(chunk.events).unwrap_or(i64::MAX) >= PRUNE_CHUNK
                || i64::try_from(chunk.dedup_keys).unwrap_or(i64::MAX) >= PRUNE_CHUNK;
            if !full {
                return Ok(total);
            }
        }
    }
}

fn decode_attempt(row: &tokio_postgres::Row) -> Result<Attempt, StoreError> {
    let outcome: String = col(row, "outcome")?;
    Ok(Attempt {
        at_ms: from_db(col(row, "at_ms")?),
        duration_ms: from_db(col(row, "duration_ms")?),
        outcome: outcome
            .parse::<AttemptOutcome>()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
        status: col(row, "status")?,
        detail: col(row, "detail")?,
    })
}
