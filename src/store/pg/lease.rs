//! Leases on PostgreSQL: taking due deliveries, renewing them while they
//! run, and finishing them with their token.
//!
//! Owns the claim (`FOR UPDATE SKIP LOCKED`, so replicas leasing at once
//! take different rows without waiting on each other), the token each lease
//! gets (`gen_random_uuid()`), its expiry from the database clock (replicas'
//! clocks may disagree; the database's is the one they share), the takeover
//! of leases that ran out (a replica died or hung), and the finish that
//! names its token: a replica whose lease was taken over changes nothing.
//! What a lease or a finish decides about groups, `concurrency:`, expiry
//! and cancel requests is in `decide`; renewal also tells the runner of a
//! delivery cancelled elsewhere to stop it.

use std::time::Duration;

use super::commit::no_nul;
use super::decide::{Decider, after_commit};
use super::{PgStore, col, db_err, to_db};
use crate::store::StoreError;
use crate::store::types::{
    Attempt, AttemptOutcome, DeliveryId, DeliveryState, Leases, MAX_DETAIL_BYTES, NewDelivery, Next,
};

/// The database's clock in unix ms, as SQL.
pub(super) const DB_NOW_MS: &str = "(extract(epoch FROM now()) * 1000)::bigint";

impl PgStore {
    /// Leases up to `limit` deliveries: `Pending` ones due by `now_ms`, then
    /// `Leased` ones whose lease ran out by the database's clock, each
    /// decided as the redb engine does (expiry, groups and their `on_busy`,
    /// the action's `concurrency:`, cancel requests; see `decide`). The
    /// lease lasts `--lease-ttl` (not `_lease_ms`: a lease here is a lock
    /// between replicas, kept alive by renewal, not a safety net for a hung
    /// worker).
    pub async fn lease(
        &self,
        now_ms: u64,
        limit: usize,
        _lease_ms: u64,
    ) -> Result<Leases, StoreError> {
        let budget = limit;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        if limit == 0 {
            return Ok(Leases::default());
        }
        let (rows, stop) = self
            .run(async {
                let mut client = self.client().await?;
                let txn = client.transaction().await.map_err(db_err)?;
                let mut cx = Decider::new(self, &txn, now_ms);
                for (p, was_leased) in cx.candidates(limit).await? {
                    if cx.full(budget) {
                        break;
                    }
                    cx.decide(p, was_leased, budget).await?;
                }
                let (leased, stop, wake) = cx.into_parts();
                txn.commit().await.map_err(db_err)?;
                after_commit(self, &client, wake, &stop).await;
                Ok((leased, stop))
            })
            .await?;
        let mut held = self.held();
        let mut leased = Vec::with_capacity(rows.len());
        for (l, token) in rows {
            held.insert(l.delivery.id, token);
            leased.push(l);
        }
        Ok(Leases { leased, stop })
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
                           (SELECT min(due_at_ms) FROM hookrouter_deliveries
                              WHERE state = 'pending' AND waiting IS NULL),
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
    let mut cx = Decider::new(store, &txn, crate::clock::now_ms());
    if cx.lock_for_finish(id).await?.is_none() {
        return Err(StoreError::UnknownDelivery(id));
    }
    let Some(p) = cx.held_row(id, token).await? else {
        tracing::debug!(delivery = id, "finish with a stale lease; nothing changed");
        return Ok(Vec::new());
    };
    let rec = &p.rec;
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
        cx.finished(&p).await?;
        let (_, _, wake) = cx.into_parts();
        txn.commit().await.map_err(db_err)?;
        after_commit(store, &client, wake, &[]).await;
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
    // Its slot is free whatever came of the attempt (a retry waits its
    // turn again). The follow-ups (`then:` children on a success, the
    // `on_failure` deliveries on a death) commit with the outcome, and a
    // cancelled run creates none.
    cx.finished(&p).await?;
    let ids = if cancelled {
        Vec::new()
    } else {
        cx.create(&rec.event_key, &follow_ups).await?
    };
    let (_, _, woke) = cx.into_parts();
    let wake = woke || matches!(next, Next::RetryAt(_));
    txn.commit().await.map_err(db_err)?;
    after_commit(store, &client, wake, &[]).await;
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
                    // Rows another transaction holds are renewed next time
                    // (well within the lease), rather than waited for.
                    let rows = client
                        .query(
                            &format!(
                                "UPDATE hookrouter_deliveries d SET lease_until_ms = {DB_NOW_MS} + $3
                                 FROM (SELECT d2.id FROM hookrouter_deliveries d2
                                       JOIN unnest($1::bigint[], $2::text[]) AS h(id, token)
                                         ON d2.id = h.id AND d2.lease_token = h.token
                                       WHERE d2.state = 'leased'
                                       ORDER BY d2.id FOR UPDATE OF d2 SKIP LOCKED) AS mine
                                 WHERE d.id = mine.id
                                 RETURNING d.id, d.cancel IS NOT NULL AS cancelled"
                            ),
                            &[&ids, &tokens, &store.lease_ttl_ms()],
                        )
                        .await
                        .map_err(db_err)?;
                    let mut cancelled = Vec::new();
                    for r in &rows {
                        if col::<bool>(r, "cancelled")? {
                            cancelled.push(super::from_db(col(r, "id")?));
                        }
                    }
                    Ok(cancelled)
                })
                .await;
            match renewed {
                // A cancel decided on another replica, whose word did not
                // reach this one (or not before the run started): stop now.
                Ok(cancelled) => store.stop_local(&cancelled),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot renew leases; they may be taken over.");
                }
            }
        }
        drop(store);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
