//! Bursts and budgets on PostgreSQL: the decisions an event's commit takes
//! for each matched rule with `delay:`, `debounce:` or `limit:` ([`Pacing`]),
//! the same as the redb engine's (`ops::bursts`), from rows every replica
//! shares (migration 0004), so they hold across replicas and restarts:
//!
//! - `over: drop`: admissions of the rolling window are counted in
//!   `hookrouter_limit_hits`; a full window records the rule's deliveries
//!   `dropped`.
//! - `over: delay`: `hookrouter_limit_next` holds the next free start slot;
//!   each admission takes it and moves it on by `window / count`.
//! - `debounce:` the `hookrouter_bursts` row of (rule, key) names the
//!   burst's waiting deliveries. An event of a burst still waiting takes
//!   their place (they become `coalesced`), due `quiet` after it but no later
//!   than `max_wait` after the first; otherwise it starts a new burst.
//!
//! Two replicas committing on one key are serialised by a transaction-scoped
//! advisory lock per burst and per limit key (as `decide` guards groups),
//! taken for a whole batch at its start, in hash order, before any row lock:
//! no two commits can wait on each other in a cycle.
//!
//! Times are the events' accepted times (`received_ms`, the accepting
//! replica's clock), as on redb, and as due times are everywhere: replicas'
//! clocks must agree (NTP) for windows to be exact. A replica whose clock is
//! ahead records admissions "in the future"; those are counted by every
//! replica until they leave the window, so skew moves a window's edges by
//! the skew, never lets a burst through unchecked.
//!
//! Also [`defer`]: a leased delivery handed back unrun, due later (a named
//! limit paused by a 429).

use std::sync::Arc;

use deadpool_postgres::Transaction;

use super::commit::no_nul;
use super::decide::{Decider, after_commit};
use super::{PgStore, col, db_err, from_db, to_db};
use crate::rules::Over;
use crate::store::StoreError;
use crate::store::types::{
    DebounceInfo, DeliveryId, DeliveryRecord, DeliveryState, NewDelivery, NewEvent, Pacing,
};

/// Waits for the lock of every burst and limit key the events of a batch
/// may touch, in hash order. Nothing is taken for a batch without pacing.
pub(super) async fn lock_batch<'a>(
    txn: &Transaction<'_>,
    events: impl Iterator<Item = &'a NewEvent>,
) -> Result<(), StoreError> {
    let mut names: Vec<String> = Vec::new();
    for ev in events {
        for p in ev.deliveries.iter().filter_map(|d| d.pacing.as_deref()) {
            if let Some(d) = &p.debounce {
                names.push(format!("debounce/{}", no_nul(&d.key)));
            }
            for l in &p.limits {
                names.push(format!("limit/{}", no_nul(&l.key)));
            }
        }
    }
    if names.is_empty() {
        return Ok(());
    }
    names.sort_unstable();
    names.dedup();
    let hashes = txn
        .query(
            "SELECT DISTINCT hashtextextended(current_schema() || '/' || n, 0) AS h
             FROM unnest($1::text[]) AS n ORDER BY h",
            &[&names],
        )
        .await
        .map_err(db_err)?;
    for h in &hashes {
        let h: i64 = col(h, "h")?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&h])
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// When a delivery is due, and whether it may be handed out leased at once.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub due_ms: u64,
    /// Due at once and not dropped.
    pub now: bool,
}

/// The pacing decisions of one event's commit, one per paced rule.
pub(super) struct Paced {
    at: u64,
    rules: Vec<Decided>,
}

struct Decided {
    pacing: Arc<Pacing>,
    due_ms: u64,
    dropped: Option<String>,
    burst: Option<Burst>,
    /// This event's deliveries of the rule that wait in the burst.
    created: Vec<DeliveryId>,
}

struct Burst {
    key: String,
    replaces: Vec<i64>,
    info: DebounceInfo,
    floor_ms: u64,
}

impl Paced {
    /// For an event accepted at `at`.
    pub fn new(at: u64) -> Self {
        Paced {
            at,
            rules: Vec::new(),
        }
    }

    fn find(&mut self, p: &Arc<Pacing>) -> Option<&mut Decided> {
        self.rules.iter_mut().find(|r| Arc::ptr_eq(&r.pacing, p))
    }

    /// The plan of delivery `d`: decided once per rule (its deliveries share
    /// one `Pacing`), at its first delivery that is created.
    pub async fn admit(
        &mut self,
        txn: &Transaction<'_>,
        d: &NewDelivery,
    ) -> Result<Plan, StoreError> {
        let Some(p) = &d.pacing else {
            return Ok(Plan {
                due_ms: self.at,
                now: true,
            });
        };
        if self.find(p).is_none() {
            let decided = admit(txn, p, self.at).await?;
            self.rules.push(decided);
        }
        let at = self.at;
        let Some(r) = self.find(p) else {
            return Err(StoreError::Internal("a rule's pacing was not decided"));
        };
        Ok(Plan {
            due_ms: r.due_ms,
            now: r.dropped.is_none() && r.due_ms <= at,
        })
    }

    /// Applies the rule's decision to `rec`, just inserted for `d`: records
    /// it `dropped`, or gives it its burst.
    pub async fn place(
        &mut self,
        txn: &Transaction<'_>,
        d: &NewDelivery,
        rec: &mut DeliveryRecord,
    ) -> Result<(), StoreError> {
        if rec.state.is_final() {
            return Ok(());
        }
        let Some(r) = d.pacing.as_ref().and_then(|p| self.find(p)) else {
            return Ok(());
        };
        if let Some(why) = &r.dropped {
            txn.execute(
                "UPDATE hookrouter_deliveries SET state = 'dropped', last_error = $2,
                   lease_token = NULL, lease_until_ms = NULL
                 WHERE id = $1",
                &[&to_db(rec.id), &no_nul(why)],
            )
            .await
            .map_err(db_err)?;
            rec.state = DeliveryState::Dropped;
            rec.last_error = Some(why.clone());
            rec.lease_until_ms = None;
        } else if let Some(b) = &r.burst {
            txn.execute(
                "UPDATE hookrouter_deliveries SET record = jsonb_set(record::jsonb, '{debounce}', $2::jsonb)::json
                 WHERE id = $1",
                &[&to_db(rec.id), &serde_json::to_value(b.info)?],
            )
            .await
            .map_err(db_err)?;
            rec.debounce = Some(b.info);
            r.created.push(rec.id);
        }
        Ok(())
    }

    /// Records each burst's new waiting deliveries (this event's) and ends
    /// the ones they replace `coalesced`.
    pub async fn settle(self, txn: &Transaction<'_>) -> Result<(), StoreError> {
        for r in self.rules {
            let Some(b) = r.burst else {
                continue;
            };
            let waiting: Vec<i64> = r.created.iter().map(|&id| to_db(id)).collect();
            txn.execute(
                "INSERT INTO hookrouter_bursts (key, waiting, first_ms, count, floor_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (key) DO UPDATE SET waiting = EXCLUDED.waiting,
                   first_ms = EXCLUDED.first_ms, count = EXCLUDED.count,
                   floor_ms = EXCLUDED.floor_ms",
                &[
                    &b.key.as_bytes(),
                    &waiting,
                    &to_db(b.info.first_ms),
                    &i32::try_from(b.info.count).unwrap_or(i32::MAX),
                    &to_db(b.floor_ms),
                ],
            )
            .await
            .map_err(db_err)?;
            if b.replaces.is_empty() {
                continue;
            }
            let by = r.created.first().copied().unwrap_or(0);
            txn.execute(
                "UPDATE hookrouter_deliveries SET state = 'coalesced', last_error = $2,
                   waiting = NULL
                 WHERE id = ANY($1) AND state = 'pending'",
                &[&b.replaces, &format!("coalesced into delivery {by}")],
            )
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }
}

/// Decides the due time, drop or burst of a rule's deliveries for an event
/// accepted at `at`, under the locks of [`lock_batch`]. Writes the limit
/// counts and slots it takes.
async fn admit(
    txn: &Transaction<'_>,
    pacing: &Arc<Pacing>,
    at: u64,
) -> Result<Decided, StoreError> {
    let decided = |due_ms, dropped, burst| Decided {
        pacing: Arc::clone(pacing),
        due_ms,
        dropped,
        burst,
        created: Vec::new(),
    };
    // A burst still waiting absorbs the event: its limits were counted
    // when it began, and its floor holds.
    if let Some(d) = &pacing.debounce
        && let Some(row) = waiting_burst(txn, &d.key).await?
    {
        let due = at
            .saturating_add(d.quiet_ms)
            .min(row.first_ms.saturating_add(d.max_wait_ms))
            .max(row.floor_ms);
        let burst = Burst {
            key: d.key.clone(),
            replaces: row.waiting,
            info: DebounceInfo {
                count: row.count.saturating_add(1),
                first_ms: row.first_ms,
            },
            floor_ms: row.floor_ms,
        };
        return Ok(decided(due, None, Some(burst)));
    }
    let drops: Vec<_> = pacing
        .limits
        .iter()
        .filter(|l| l.over == Over::Drop)
        .collect();
    for l in &drops {
        let since = at.saturating_sub(l.window_ms);
        // No upper bound: an admission stamped ahead of this replica's
        // clock (another replica's is ahead) counts too.
        let row = txn
            .query_one(
                "SELECT COALESCE(sum(n), 0)::bigint AS used FROM hookrouter_limit_hits
                 WHERE key = $1 AND at_ms > $2",
                &[&l.key.as_bytes(), &to_db(since)],
            )
            .await
            .map_err(db_err)?;
        let used = from_db(col(&row, "used")?);
        if used >= u64::from(l.count) {
            let why = format!(
                "limit {} allows {} per {}s",
                l.label,
                l.count,
                l.window_ms / 1000
            );
            return Ok(decided(at, Some(why), None));
        }
    }
    let mut floor = at.saturating_add(pacing.delay_ms);
    for l in &pacing.limits {
        let key = l.key.as_bytes();
        match l.over {
            Over::Drop => {
                txn.execute(
                    "INSERT INTO hookrouter_limit_hits (key, at_ms, n) VALUES ($1, $2, 1)
                     ON CONFLICT (key, at_ms) DO UPDATE SET n = hookrouter_limit_hits.n + 1",
                    &[&key, &to_db(at)],
                )
                .await
                .map_err(db_err)?;
                // Counts older than the window are of no use any more.
                txn.execute(
                    "DELETE FROM hookrouter_limit_hits WHERE key = $1 AND at_ms <= $2",
                    &[&key, &to_db(at.saturating_sub(l.window_ms))],
                )
                .await
                .map_err(db_err)?;
            }
            Over::Delay => {
                let step = to_db((l.window_ms / u64::from(l.count.max(1))).max(1));
                let row = txn
                    .query_one(
                        "INSERT INTO hookrouter_limit_next (key, next_ms) VALUES ($1, $2::bigint + $3::bigint)
                         ON CONFLICT (key) DO UPDATE
                           SET next_ms = GREATEST(hookrouter_limit_next.next_ms, $2::bigint) + $3::bigint
                         RETURNING next_ms - $3::bigint AS slot",
                        &[&key, &to_db(at), &step],
                    )
                    .await
                    .map_err(db_err)?;
                floor = floor.max(from_db(col(&row, "slot")?));
            }
        }
    }
    let burst = pacing.debounce.as_ref().map(|d| Burst {
        key: d.key.clone(),
        replaces: Vec::new(),
        info: DebounceInfo {
            count: 1,
            first_ms: at,
        },
        floor_ms: floor,
    });
    let due = match &pacing.debounce {
        Some(d) => floor.max(at.saturating_add(d.quiet_ms)),
        None => floor,
    };
    Ok(decided(due, None, burst))
}

struct BurstRow {
    waiting: Vec<i64>,
    first_ms: u64,
    count: u32,
    floor_ms: u64,
}

/// The burst of `key` if its deliveries are all still waiting, with their
/// rows locked: a replica leasing one of them (due by now) either took it
/// first, and the event starts a new burst, or skips it.
async fn waiting_burst(txn: &Transaction<'_>, key: &str) -> Result<Option<BurstRow>, StoreError> {
    let Some(row) = txn
        .query_opt(
            "SELECT waiting, first_ms, count, floor_ms FROM hookrouter_bursts WHERE key = $1",
            &[&key.as_bytes()],
        )
        .await
        .map_err(db_err)?
    else {
        return Ok(None);
    };
    let burst = BurstRow {
        waiting: col(&row, "waiting")?,
        first_ms: from_db(col(&row, "first_ms")?),
        count: u32::try_from(col::<i32>(&row, "count")?).unwrap_or(0),
        floor_ms: from_db(col(&row, "floor_ms")?),
    };
    if burst.waiting.is_empty() {
        return Ok(None);
    }
    let all_waiting = |rows: &[tokio_postgres::Row]| -> Result<bool, StoreError> {
        if rows.len() != burst.waiting.len() {
            return Ok(false);
        }
        for r in rows {
            let state: String = col(r, "state")?;
            if state != "pending" || col::<Option<String>>(r, "cancel")?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    };
    // Looked at first without locks: a burst that has started needs none.
    let rows = txn
        .query(
            "SELECT state, cancel FROM hookrouter_deliveries WHERE id = ANY($1)",
            &[&burst.waiting],
        )
        .await
        .map_err(db_err)?;
    if !all_waiting(&rows)? {
        return Ok(None);
    }
    let rows = txn
        .query(
            "SELECT state, cancel FROM hookrouter_deliveries WHERE id = ANY($1)
             ORDER BY id FOR UPDATE",
            &[&burst.waiting],
        )
        .await
        .map_err(db_err)?;
    Ok(all_waiting(&rows)?.then_some(burst))
}

/// [`PgStore::defer`]'s transaction: the delivery, if this replica still
/// holds its lease (`token`), is pending again, due at `until_ms`, with no
/// attempt recorded; its slot in its group and lane is free.
async fn defer(
    store: &PgStore,
    id: DeliveryId,
    token: Option<&str>,
    until_ms: u64,
) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let txn = client.transaction().await.map_err(db_err)?;
    let mut cx = Decider::new(store, &txn, crate::clock::now_ms());
    if cx.lock_for_finish(id).await?.is_none() {
        return Err(StoreError::UnknownDelivery(id));
    }
    let Some(p) = cx.held_row(id, token).await? else {
        // Not leased (or no longer by this replica): left alone.
        return Ok(());
    };
    txn.execute(
        "UPDATE hookrouter_deliveries SET state = 'pending', due_at_ms = $2,
           lease_token = NULL, lease_until_ms = NULL
         WHERE id = $1",
        &[&to_db(id), &to_db(until_ms)],
    )
    .await
    .map_err(db_err)?;
    cx.finished(&p).await?;
    let (_, _, wake) = cx.into_parts();
    txn.commit().await.map_err(db_err)?;
    after_commit(store, &client, wake, &[]).await;
    // Its replica's dispatcher looks again when it is due.
    store.shared().notify.notify_one();
    Ok(())
}

impl PgStore {
    /// Hands a leased delivery back without running it: `Pending` again, due
    /// at `until_ms`, with no attempt recorded (a limit it runs under is
    /// paused). A delivery this replica does not hold leased is left alone.
    pub async fn defer(&self, delivery: DeliveryId, until_ms: u64) -> Result<(), StoreError> {
        let token = self.held().get(&delivery).cloned();
        let out = self
            .run(defer(self, delivery, token.as_deref(), until_ms))
            .await;
        if out.is_ok() {
            let mut held = self.held();
            if held.get(&delivery) == token.as_ref() {
                held.remove(&delivery);
            }
        }
        out
    }
}
