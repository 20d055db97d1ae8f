//! Leases on PostgreSQL: taking due deliveries, renewing them while they
//! run, and finishing them with their token.
//!
//! Owns the claim (`FOR UPDATE SKIP LOCKED`, so replicas leasing at once
//! take different rows without waiting on each other), the token each lease
//! gets (`gen_random_uuid()`), its expiry from the database clock (replicas'
//! clocks may disagree; the database's is the one they share), the takeover
//! of leases that ran out (a replica died or hung), and the finish that
//! names its token: a replica whose lease was taken over changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::commit::{insert, no_nul};
use super::{DELIVERY_COLS, PgStore, col, db_err, decode_delivery, to_db};
use crate::store::StoreError;
use crate::store::types::{
    Attempt, AttemptOutcome, DeliveryId, DeliveryState, Leased, Leases, MAX_DETAIL_BYTES,
    NewDelivery, Next,
};

/// The database's clock in unix ms, as SQL.
const DB_NOW_MS: &str = "(extract(epoch FROM now()) * 1000)::bigint";

impl PgStore {
    /// Leases up to `limit` deliveries: `Pending` ones due by `now_ms`, then
    /// `Leased` ones whose lease ran out by the database's clock. The lease
    /// lasts `--lease-ttl` (not `_lease_ms`: a lease here is a lock between
    /// replicas, kept alive by renewal, not a safety net for a hung worker).
    pub async fn lease(
        &self,
        now_ms: u64,
        limit: usize,
        _lease_ms: u64,
    ) -> Result<Leases, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        if limit == 0 {
            return Ok(Leases::default());
        }
        let rows = self
            .run(async {
                let mut client = self.client().await?;
                let txn = client.transaction().await.map_err(db_err)?;
                let claim = format!(
                    "WITH due AS (
                         SELECT id FROM hookrouter_deliveries
                         WHERE state = 'pending' AND due_at_ms <= $1 AND cancel IS NULL
                         ORDER BY due_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED
                     ), expired AS (
                         SELECT id FROM hookrouter_deliveries
                         WHERE state = 'leased' AND lease_until_ms <= {DB_NOW_MS} AND cancel IS NULL
                         ORDER BY lease_until_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED
                     ), picked AS (
                         SELECT id FROM (SELECT id FROM due UNION ALL SELECT id FROM expired) u LIMIT $2
                     )
                     UPDATE hookrouter_deliveries d
                     SET state = 'leased', lease_token = gen_random_uuid()::text,
                         lease_until_ms = {DB_NOW_MS} + $3
                     FROM picked WHERE d.id = picked.id
                     RETURNING {cols}, d.lease_token",
                    cols = DELIVERY_COLS
                        .split(", ")
                        .map(|c| format!("d.{}", c.trim()))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                // A marked run whose replica died never finishes: it ends
                // cancelled when its lease runs out, and never runs again.
                txn.execute(
                    &format!(
                        "UPDATE hookrouter_deliveries SET state = 'cancelled',
                           lease_token = NULL, lease_until_ms = NULL
                         WHERE state = 'leased' AND cancel IS NOT NULL
                           AND lease_until_ms <= {DB_NOW_MS}"
                    ),
                    &[],
                )
                .await
                .map_err(db_err)?;
                let rows = txn
                    .query(&claim, &[&to_db(now_ms), &limit, &self.lease_ttl_ms()])
                    .await
                    .map_err(db_err)?;
                let mut out = Vec::with_capacity(rows.len());
                let mut events: HashMap<String, Arc<crate::event::Event>> = HashMap::new();
                for row in &rows {
                    let rec = decode_delivery(row)?;
                    let token: String = col(row, "lease_token")?;
                    let event = match events.get(&rec.event_key) {
                        Some(e) => Arc::clone(e),
                        None => {
                            let ev = txn
                                .query_opt(
                                    "SELECT row_json FROM hookrouter_events WHERE key = $1",
                                    &[&rec.event_key],
                                )
                                .await
                                .map_err(db_err)?
                                .ok_or_else(|| StoreError::UnknownEvent(rec.event_key.clone()))?;
                            let bytes: Vec<u8> = col(&ev, "row_json")?;
                            let e = Arc::new(crate::store::schema::decode_event_row(&bytes)?.event);
                            events.insert(rec.event_key.clone(), Arc::clone(&e));
                            e
                        }
                    };
                    out.push((Leased { delivery: rec, event }, token));
                }
                txn.commit().await.map_err(db_err)?;
                Ok(out)
            })
            .await?;
        let mut held = self.held();
        let mut leased = Vec::with_capacity(rows.len());
        for (l, token) in rows {
            held.insert(l.delivery.id, token);
            leased.push(l);
        }
        Ok(Leases {
            leased,
            stop: Vec::new(),
        })
    }

    /// Records an attempt and moves the delivery on, if this replica still
    /// holds its lease; a stale lease (taken over after it ran out) changes
    /// nothing and creates no follow-ups.
    pub async fn finish_with(
        &self,
        delivery: DeliveryId,
        attempt: Attempt,
        next: Next,
        follow_ups: Vec<NewDelivery>,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let token = self.held().get(&delivery).cloned();
        // The action has run: losing its outcome to a database outage would
        // leave the lease renewed for ever and the delivery never finished.
        // So a finish the database could not take is tried again until it
        // can (the token makes a repeat harmless: once one landed, or the
        // lease was taken over, the next changes nothing), or until the
        // store closes.
        let mut pause = Duration::from_millis(200);
        let out = loop {
            let out = self
                .run(finish(
                    self,
                    delivery,
                    token.as_deref(),
                    attempt.clone(),
                    next,
                    follow_ups.clone(),
                ))
                .await;
            match out {
                Err(StoreError::Database(e)) if !self.inner.stop.is_cancelled() => {
                    tracing::warn!(delivery, error = %e, "Cannot record a finished delivery yet; trying again.");
                    tokio::select! {
                        () = self.inner.stop.cancelled() => break Err(StoreError::Database(e)),
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                out => break out,
            }
        };
        // Done, or given up: either way this replica stops renewing the
        // lease, so an unrecorded run is taken over once it runs out.
        let mut held = self.held();
        if held.get(&delivery) == token.as_ref() {
            held.remove(&delivery);
        }
        out
    }

    /// When the next lease could find work, by this replica's clock.
    pub async fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        self.run(async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    &format!(
                        "SELECT LEAST(
                           (SELECT min(due_at_ms) FROM hookrouter_deliveries WHERE state = 'pending'),
                           (SELECT min(lease_until_ms) FROM hookrouter_deliveries WHERE state = 'leased')
                              - {DB_NOW_MS} + $1
                         ) AS next"
                    ),
                    &[&to_db(crate::clock::now_ms())],
                )
                .await
                .map_err(db_err)?;
            Ok(col::<Option<i64>>(&row, "next")?.map(super::from_db))
        })
        .await
    }
}

async fn finish(
    store: &PgStore,
    id: DeliveryId,
    token: Option<&str>,
    attempt: Attempt,
    next: Next,
    follow_ups: Vec<NewDelivery>,
) -> Result<Vec<DeliveryId>, StoreError> {
    let mut client = store.client().await?;
    let txn = client.transaction().await.map_err(db_err)?;
    let row = txn
        .query_opt(
            &format!(
                "SELECT {DELIVERY_COLS} FROM hookrouter_deliveries
                 WHERE id = $1 AND state = 'leased' AND lease_token = $2 FOR UPDATE"
            ),
            &[&to_db(id), &token],
        )
        .await
        .map_err(db_err)?;
    let Some(row) = row else {
        let exists = txn
            .query_opt(
                "SELECT 1 FROM hookrouter_deliveries WHERE id = $1",
                &[&to_db(id)],
            )
            .await
            .map_err(db_err)?;
        if exists.is_none() {
            return Err(StoreError::UnknownDelivery(id));
        }
        tracing::debug!(delivery = id, "finish with a stale lease; nothing changed");
        return Ok(Vec::new());
    };
    let rec = decode_delivery(&row)?;
    let cancelled = rec.cancel.is_some();
    if next == Next::Skipped {
        txn.execute(
            "UPDATE hookrouter_deliveries SET state = $2, last_error = $3,
               lease_token = NULL, lease_until_ms = NULL WHERE id = $1",
            &[
                &to_db(id),
                &if cancelled { "cancelled" } else { "skipped" },
                &attempt.detail.as_deref().map(no_nul),
            ],
        )
        .await
        .map_err(db_err)?;
        txn.commit().await.map_err(db_err)?;
        return Ok(Vec::new());
    }
    let mut attempt = attempt;
    if let Some(detail) = &mut attempt.detail {
        truncate(detail, MAX_DETAIL_BYTES);
        *detail = no_nul(detail);
    }
    let n = i32::try_from(rec.attempts.saturating_add(1)).unwrap_or(i32::MAX);
    txn.execute(
        "INSERT INTO hookrouter_attempts (delivery_id, seq, at_ms, duration_ms, outcome, status, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &to_db(id),
            &n,
            &to_db(attempt.at_ms),
            &to_db(attempt.duration_ms),
            &attempt.outcome.as_str(),
            &attempt.status,
            &attempt.detail,
        ],
    )
    .await
    .map_err(db_err)?;
    let last_error = if attempt.outcome == AttemptOutcome::Ok {
        rec.last_error.clone()
    } else {
        Some(match (&attempt.detail, attempt.status) {
            (Some(d), _) => d.clone(),
            (None, Some(status)) => format!("{} (status {status})", attempt.outcome),
            (None, None) => attempt.outcome.to_string(),
        })
    };
    let (state, due, success) = match next {
        _ if cancelled => (DeliveryState::Cancelled, rec.due_at_ms, None),
        Next::Done => (
            DeliveryState::Done,
            rec.due_at_ms,
            Some(serde_json::to_value(&attempt)?),
        ),
        Next::Dead => (DeliveryState::Dead, rec.due_at_ms, None),
        Next::RetryAt(at) => (DeliveryState::Pending, at, None),
        Next::Skipped => (DeliveryState::Skipped, rec.due_at_ms, None),
    };
    txn.execute(
        "UPDATE hookrouter_deliveries SET state = $2, attempts = $3, due_at_ms = $4,
           last_error = $5, success = $6, lease_token = NULL, lease_until_ms = NULL
         WHERE id = $1",
        &[
            &to_db(id),
            &state.as_str(),
            &n,
            &to_db(due),
            &last_error,
            &success,
        ],
    )
    .await
    .map_err(db_err)?;
    let mut ids = Vec::new();
    if !cancelled {
        let now = crate::clock::now_ms();
        for d in &follow_ups {
            let (r, _) = insert(store, &txn, &rec.event_key, d, now, now, false).await?;
            ids.push(r.id);
        }
    }
    txn.commit().await.map_err(db_err)?;
    if !ids.is_empty() || matches!(next, Next::RetryAt(_)) {
        store.wake_all(&client).await;
    }
    Ok(ids)
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

/// Extends the leases this replica holds, every third of `--lease-ttl`,
/// so a long run keeps its delivery; a replica that dies stops renewing,
/// and its leases run out and are taken over.
pub(super) async fn renew(weak: std::sync::Weak<super::Inner>) {
    loop {
        let Some(store) = PgStore::from_weak(&weak) else {
            return;
        };
        let every = (store.inner.opts.lease_ttl / 3).max(Duration::from_millis(50));
        let stop = store.inner.stop.clone();
        let held: Vec<(i64, String)> = store
            .held()
            .iter()
            .map(|(id, t)| (to_db(*id), t.clone()))
            .collect();
        if !held.is_empty() {
            let (ids, tokens): (Vec<i64>, Vec<String>) = held.into_iter().unzip();
            let renewed = store
                .run(async {
                    let client = store.client().await?;
                    client
                        .execute(
                            &format!(
                                "UPDATE hookrouter_deliveries d SET lease_until_ms = {DB_NOW_MS} + $3
                                 FROM unnest($1::bigint[], $2::text[]) AS h(id, token)
                                 WHERE d.id = h.id AND d.lease_token = h.token AND d.state = 'leased'"
                            ),
                            &[&ids, &tokens, &store.lease_ttl_ms()],
                        )
                        .await
                        .map_err(db_err)
                })
                .await;
            if let Err(e) = renewed {
                tracing::warn!(error = %e, "Cannot renew leases; they may be taken over.");
            }
        }
        drop(store);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
