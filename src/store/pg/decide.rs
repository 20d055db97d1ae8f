//! The agent controls on PostgreSQL: what a lease, a finish or a cancel
//! decides about groups (`group:` with its `on_busy`), `concurrency: N`,
//! `start_within` and cancel requests, and the follow-ups those decisions
//! create (`on_failure`, `on_cancel`, the reactions of a delivery created
//! dead), each inside the caller's transaction. The redb engine takes the
//! same decisions in `ops::lease` and `ops::cancel`; this is their
//! counterpart, with the same outcomes.
//!
//! Across replicas, a group and an action's lane (the deliveries its
//! `concurrency:` limits) are each guarded by a transaction-scoped advisory
//! lock on a hash of their name. Whoever counts a group's running members,
//! admits one, or makes its next waiting member due again holds that lock
//! until commit, so two replicas never both fill the last slot. A lease only
//! *tries* the locks (a group busy in another transaction is left for the
//! next lease, a moment later), while finishes and cancels wait for them,
//! always before any row lock and in hash order: no two transactions can
//! wait on each other in a cycle.
//!
//! A pending delivery that waits for room rather than for its due time has
//! `waiting` set (`group` or `lane`) and is out of the due index; it becomes
//! due again ("promoted") when a running member of its group or lane
//! leaves. Another reason to hold a pending delivery would be one more
//! `waiting` word with its own way back to due.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::commit::{insert, no_nul};
use super::lease::DB_NOW_MS;
use super::{DELIVERY_COLS, PgStore, col, db_err, decode_delivery, from_db};
use crate::event::Event;
use crate::rules::{ActionList, OnBusy};
use crate::store::StoreError;
use crate::store::ops::REASON_NEWER;
use crate::store::types::{
    CancelOutcome, DeliveryId, DeliveryRecord, DeliveryState, FailureContext, FollowUps, Leased,
    NewDelivery,
};

/// The columns that place a delivery in its group and lane, selected after
/// [`DELIVERY_COLS`] by every query that decides about it.
const PLACE_COLS: &str = "rule, list, action_path, group_key, waiting";

/// Why a waiting delivery waits.
const GROUP: &str = "group";
const LANE: &str = "lane";

/// A delivery as a decision needs it: its record and its place.
pub(super) struct Placed {
    pub rec: DeliveryRecord,
    rule: String,
    list: String,
    path: String,
    group_key: Option<String>,
    waiting: Option<String>,
}

impl Placed {
    fn from_row(row: &Row) -> Result<Placed, StoreError> {
        Ok(Placed {
            rec: decode_delivery(row)?,
            rule: col(row, "rule")?,
            list: col(row, "list")?,
            path: col(row, "action_path")?,
            group_key: col(row, "group_key")?,
            waiting: col(row, "waiting")?,
        })
    }

    /// The name of its group's lock, if it has a group.
    fn group_lock(&self) -> Option<String> {
        self.group_key
            .as_ref()
            .map(|k| format!("group/{}/{}/{}/{k}", self.rule, self.list, self.path))
    }

    /// The name of its action's lane lock.
    fn lane_lock(&self) -> String {
        format!("lane/{}/{}/{}", self.rule, self.list, self.path)
    }
}

/// Deliveries selected with their place.
fn select(filter: &str) -> String {
    format!("SELECT {DELIVERY_COLS}, {PLACE_COLS} FROM hookrouter_deliveries WHERE {filter}")
}

/// The decisions of one transaction and what they leave to do after its
/// commit.
pub(super) struct Decider<'t, 'c> {
    store: &'t PgStore,
    txn: &'t Transaction<'c>,
    plan: Option<Arc<dyn FollowUps>>,
    /// The caller's clock: due times and `start_within` deadlines are
    /// judged by it, as on redb.
    now: u64,
    /// The advisory locks this transaction holds, by name.
    locked: HashSet<String>,
    events: HashMap<String, Arc<Event>>,
    /// Deliveries this transaction moved (leased, ended, made to wait): a
    /// candidate among them was decided already, by its group's admission.
    moved: HashSet<DeliveryId>,
    /// Deliveries leased by this transaction, with their tokens.
    leased: Vec<(Leased, String)>,
    /// Running deliveries marked cancelled: their replicas must stop them.
    stop: Vec<DeliveryId>,
    /// Work became due: wake the replicas after the commit.
    wake: bool,
}

impl<'t, 'c> Decider<'t, 'c> {
    pub fn new(store: &'t PgStore, txn: &'t Transaction<'c>, now: u64) -> Self {
        let plan = match store.shared().follow_ups.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        Decider {
            store,
            txn,
            plan,
            now,
            locked: HashSet::new(),
            events: HashMap::new(),
            moved: HashSet::new(),
            leased: Vec::new(),
            stop: Vec::new(),
            wake: false,
        }
    }

    /// What is left to do after the commit: the deliveries leased (with
    /// their tokens), the running ones to stop, whether to wake replicas.
    pub fn into_parts(self) -> (Vec<(Leased, String)>, Vec<DeliveryId>, bool) {
        (self.leased, self.stop, self.wake)
    }

    /// The action's `concurrency:` in the running rules.
    fn concurrency(&self, rec: &DeliveryRecord) -> Option<u32> {
        self.plan
            .as_ref()
            .and_then(|p| p.concurrency(&rec.action_ref()))
    }

    // ---- locks ----

    /// Waits for every lock in `names`, in the order of their hashes. Only
    /// before the transaction locks any row, and once.
    async fn lock_all(&mut self, mut names: Vec<String>) -> Result<(), StoreError> {
        names.retain(|n| !self.locked.contains(n));
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return Ok(());
        }
        let hashes = self
            .txn
            .query(
                "SELECT DISTINCT hashtextextended(current_schema() || '/' || n, 0) AS h
                 FROM unnest($1::text[]) AS n ORDER BY h",
                &[&names],
            )
            .await
            .map_err(db_err)?;
        for h in &hashes {
            let h: i64 = col(h, "h")?;
            self.txn
                .execute("SELECT pg_advisory_xact_lock($1)", &[&h])
                .await
                .map_err(db_err)?;
        }
        self.locked.extend(names);
        Ok(())
    }

    /// Takes the lock `name` if nobody holds it; says whether this
    /// transaction holds it now.
    async fn try_lock(&mut self, name: String) -> Result<bool, StoreError> {
        if self.locked.contains(&name) {
            return Ok(true);
        }
        let row = self
            .txn
            .query_one(
                "SELECT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '/' || $1, 0)) AS got",
                &[&name],
            )
            .await
            .map_err(db_err)?;
        let got: bool = col(&row, "got")?;
        if got {
            self.locked.insert(name);
        }
        Ok(got)
    }

    /// Tries the locks a decision about `p` needs: its group's, and its
    /// lane's when `lane`.
    async fn try_locks(&mut self, p: &Placed, lane: bool) -> Result<bool, StoreError> {
        if let Some(g) = p.group_lock() {
            if !self.try_lock(g).await? {
                return Ok(false);
            }
        }
        if lane && !self.try_lock(p.lane_lock()).await? {
            return Ok(false);
        }
        Ok(true)
    }

    // ---- groups and lanes ----

    /// Running members of `p`'s group (`group`) or of its action's lane.
    async fn running(&self, p: &Placed, group: bool) -> Result<i64, StoreError> {
        let row = self
            .txn
            .query_one(
                "SELECT count(*) AS n FROM hookrouter_deliveries
                 WHERE state = 'leased' AND rule = $1 AND list = $2 AND action_path = $3
                   AND (NOT $5 OR group_key = $4)",
                &[&p.rule, &p.list, &p.path, &p.group_key, &group],
            )
            .await
            .map_err(db_err)?;
        col(&row, "n")
    }

    /// Makes the oldest member waiting on `p`'s group (or lane) due again,
    /// at the due time it had before it waited, so it sorts ahead of newer
    /// ones.
    async fn promote(&mut self, p: &Placed, why: &str) -> Result<(), StoreError> {
        let row = self
            .txn
            .query_opt(
                "UPDATE hookrouter_deliveries SET waiting = NULL WHERE id = (
                   SELECT id FROM hookrouter_deliveries
                   WHERE state = 'pending' AND waiting = $5
                     AND rule = $1 AND list = $2 AND action_path = $3
                     AND ($5 = 'lane' OR group_key = $4)
                   ORDER BY id LIMIT 1)
                 RETURNING id",
                &[&p.rule, &p.list, &p.path, &p.group_key, &why],
            )
            .await
            .map_err(db_err)?;
        if row.is_some() {
            self.wake = true;
        }
        Ok(())
    }

    /// `p`, running or due, left: its group's and lane's next waiting
    /// members may take the room, under the locks this transaction holds.
    async fn left(&mut self, p: &Placed) -> Result<(), StoreError> {
        if p.waiting.is_some() {
            return Ok(());
        }
        if p.group_lock().is_some_and(|g| self.locked.contains(&g)) {
            self.promote(p, GROUP).await?;
        }
        if self.locked.contains(&p.lane_lock()) {
            self.promote(p, LANE).await?;
        }
        Ok(())
    }

    /// `p` waits for room (`why`: its group or its lane).
    async fn wait(&mut self, p: &mut Placed, why: &str) -> Result<(), StoreError> {
        self.txn
            .execute(
                "UPDATE hookrouter_deliveries SET waiting = $2, waited = waited OR $2 = 'group'
                 WHERE id = $1",
                &[&super::to_db(p.rec.id), &why],
            )
            .await
            .map_err(db_err)?;
        p.waiting = Some(why.to_owned());
        self.moved.insert(p.rec.id);
        if why == GROUP {
            p.rec.waited = true;
        }
        Ok(())
    }

    async fn lane_full(&self, p: &Placed, concurrency: Option<u32>) -> Result<bool, StoreError> {
        match concurrency {
            Some(n) => Ok(self.running(p, false).await? >= i64::from(n)),
            None => Ok(false),
        }
    }

    // ---- final states and follow-ups ----

    /// Moves `p` to a final state; a running or due member that leaves
    /// makes room in its group and lane.
    async fn end(
        &mut self,
        p: &Placed,
        state: DeliveryState,
        last_error: Option<&str>,
        cancel: Option<&str>,
    ) -> Result<(), StoreError> {
        self.txn
            .execute(
                "UPDATE hookrouter_deliveries SET state = $2,
                   last_error = COALESCE($3, last_error), cancel = COALESCE($4, cancel),
                   lease_token = NULL, lease_until_ms = NULL, waiting = NULL
                 WHERE id = $1",
                &[
                    &super::to_db(p.rec.id),
                    &state.as_str(),
                    &last_error.map(no_nul),
                    &cancel.map(no_nul),
                ],
            )
            .await
            .map_err(db_err)?;
        self.moved.insert(p.rec.id);
        self.left(p).await
    }

    /// Creates `rec`'s rule's `on_failure` deliveries, due now (none for a
    /// delivery that is itself a reaction: those do not chain).
    async fn on_failure(
        &mut self,
        rec: &DeliveryRecord,
        failure: FailureContext,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        if rec.list != ActionList::Actions {
            return Ok(Vec::new());
        }
        let Some(plan) = self.plan.clone() else {
            return Ok(Vec::new());
        };
        let mut ids = Vec::new();
        for d in plan.on_failure(&rec.rule, &failure) {
            let (made, _) = insert(
                self.store,
                self.txn,
                &rec.event_key,
                &d,
                self.now,
                self.now,
                false,
            )
            .await?;
            ids.push(made.id);
            self.wake = true;
        }
        Ok(ids)
    }

    /// The `on_failure` deliveries of a delivery created dead (it could not
    /// be planned).
    pub async fn failed_at_birth(
        &mut self,
        rec: &DeliveryRecord,
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let failure = FailureContext {
            delivery: rec.id,
            action: rec.action,
            attempts: 0,
            last_error: rec.last_error.clone(),
            reason: None,
        };
        self.on_failure(rec, failure).await
    }

    /// Creates `rule`'s `on_cancel` deliveries for the event unless it has
    /// them already: they run once per cancelled event.
    async fn on_cancel(
        &mut self,
        event_key: &str,
        rule: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let Some(plan) = self.plan.clone() else {
            return Ok(());
        };
        let had = self
            .txn
            .query_opt(
                "SELECT 1 FROM hookrouter_deliveries
                 WHERE event_key = $1 AND rule = $2 AND list = 'on_cancel' LIMIT 1",
                &[&event_key, &rule],
            )
            .await
            .map_err(db_err)?;
        if had.is_some() {
            return Ok(());
        }
        for d in plan.on_cancel(rule, reason) {
            insert(
                self.store, self.txn, event_key, &d, self.now, self.now, false,
            )
            .await?;
            self.wake = true;
        }
        Ok(())
    }

    /// Creates follow-ups for an existing event, due now (`then:` children,
    /// `on_failure` deliveries, a replay); for each one created dead, its
    /// rule's `on_failure` deliveries too. Returns the ids of all of them.
    pub async fn create(
        &mut self,
        event_key: &str,
        follow_ups: &[NewDelivery],
    ) -> Result<Vec<DeliveryId>, StoreError> {
        let mut ids = Vec::with_capacity(follow_ups.len());
        for d in follow_ups {
            let (rec, _) = insert(
                self.store, self.txn, event_key, d, self.now, self.now, false,
            )
            .await?;
            ids.push(rec.id);
            self.wake = true;
            if rec.state == DeliveryState::Dead {
                ids.extend(self.failed_at_birth(&rec).await?);
            }
        }
        Ok(ids)
    }

    /// Ends `p` `Expired` if its start deadline passed before any attempt
    /// started, with its rule's `on_failure` (`failure.reason: expired`).
    /// Says whether it did.
    async fn expire_if_late(&mut self, p: &Placed) -> Result<bool, StoreError> {
        let late = p.rec.attempts == 0 && p.rec.deadline_ms.is_some_and(|d| self.now > d);
        if !late {
            return Ok(false);
        }
        let why = "not started within start_within";
        self.end(p, DeliveryState::Expired, Some(why), None).await?;
        let failure = FailureContext {
            delivery: p.rec.id,
            action: p.rec.action,
            attempts: 0,
            last_error: Some(why.to_owned()),
            reason: Some("expired".to_owned()),
        };
        self.on_failure(&p.rec, failure).await?;
        Ok(true)
    }

    // ---- leasing ----

    /// Leases `p` to this replica with a fresh token, expiring by the
    /// database's clock.
    async fn grant(&mut self, p: &Placed) -> Result<(), StoreError> {
        let row = self
            .txn
            .query_one(
                &format!(
                    "UPDATE hookrouter_deliveries SET state = 'leased',
                       lease_token = gen_random_uuid()::text,
                       lease_until_ms = {DB_NOW_MS} + $2, waiting = NULL
                     WHERE id = $1
                     RETURNING {DELIVERY_COLS}, lease_token"
                ),
                &[&super::to_db(p.rec.id), &self.store.lease_ttl_ms()],
            )
            .await
            .map_err(db_err)?;
        let rec = decode_delivery(&row)?;
        let token: String = col(&row, "lease_token")?;
        self.moved.insert(rec.id);
        let event = match self.events.get(&rec.event_key) {
            Some(e) => Arc::clone(e),
            None => {
                let ev = self
                    .txn
                    .query_opt(
                        "SELECT row_json FROM hookrouter_events WHERE key = $1",
                        &[&rec.event_key],
                    )
                    .await
                    .map_err(db_err)?
                    .ok_or_else(|| StoreError::UnknownEvent(rec.event_key.clone()))?;
                let bytes: Vec<u8> = col(&ev, "row_json")?;
                let e = Arc::new(crate::store::schema::decode_event_row(&bytes)?.event);
                self.events.insert(rec.event_key.clone(), Arc::clone(&e));
                e
            }
        };
        self.leased.push((
            Leased {
                delivery: rec,
                event,
            },
            token,
        ));
        Ok(())
    }

    /// Up to `limit` candidates, locked (skipping rows another transaction
    /// holds): pending deliveries due by `now`, then leases that ran out by
    /// the database's clock, in (due time, id) order.
    pub async fn candidates(&self, limit: i64) -> Result<Vec<(Placed, bool)>, StoreError> {
        let due = self
            .txn
            .query(
                &format!(
                    "{} ORDER BY due_at_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                    select("state = 'pending' AND waiting IS NULL AND due_at_ms <= $1")
                ),
                &[&super::to_db(self.now), &limit],
            )
            .await
            .map_err(db_err)?;
        let expired = self
            .txn
            .query(
                &format!(
                    "{} ORDER BY lease_until_ms, id LIMIT $1 FOR UPDATE SKIP LOCKED",
                    select(&format!(
                        "state = 'leased' AND lease_until_ms <= {DB_NOW_MS}"
                    ))
                ),
                &[&limit],
            )
            .await
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(due.len() + expired.len());
        for r in &due {
            out.push((Placed::from_row(r)?, false));
        }
        for r in &expired {
            out.push((Placed::from_row(r)?, true));
        }
        out.sort_by_key(|(p, was_leased)| {
            let at = if *was_leased {
                p.rec.lease_until_ms.unwrap_or(0)
            } else {
                p.rec.due_at_ms
            };
            (at, p.rec.id)
        });
        out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(out)
    }

    /// Whether this transaction leased `budget` deliveries already.
    pub fn full(&self, budget: usize) -> bool {
        self.leased.len() >= budget
    }

    /// Decides one candidate, as the redb lease does: a lease that ran out
    /// is taken over (or, marked cancelled, ends `Cancelled`); a due
    /// delivery expires, waits for its lane, or is leased; a group member
    /// joins its group's queue, which admits its oldest members while it
    /// has room, or, the group full, meets its `on_busy` the first time.
    /// A candidate whose group or lane another transaction is deciding
    /// about is left for the next lease.
    pub async fn decide(
        &mut self,
        mut p: Placed,
        was_leased: bool,
        budget: usize,
    ) -> Result<(), StoreError> {
        if self.moved.contains(&p.rec.id) {
            return Ok(());
        }
        let concurrency = self.concurrency(&p.rec);
        if was_leased {
            if p.rec.cancel.is_some() {
                // Its replica died before the marked run finished: it ends
                // cancelled and never runs again.
                if self.try_locks(&p, concurrency.is_some()).await? {
                    self.end(&p, DeliveryState::Cancelled, None, None).await?;
                }
                return Ok(());
            }
            return self.grant(&p).await;
        }
        if !self.try_locks(&p, concurrency.is_some()).await? {
            return Ok(());
        }
        if self.expire_if_late(&p).await? {
            return Ok(());
        }
        let Some(slot) = p.rec.group.clone() else {
            if self.lane_full(&p, concurrency).await? {
                self.wait(&mut p, LANE).await?;
            } else {
                self.grant(&p).await?;
            }
            return Ok(());
        };
        let first_time = p.rec.attempts == 0 && !p.rec.waited;
        self.wait(&mut p, GROUP).await?;
        if self.running(&p, true).await? < i64::from(slot.limit) {
            return self.admit(&p, slot.limit, concurrency, budget).await;
        }
        if !first_time {
            return Ok(());
        }
        match slot.on_busy {
            OnBusy::Queue => {}
            OnBusy::Replace => self.supersede_waiting(&p).await?,
            OnBusy::Cancel => {
                self.supersede_waiting(&p).await?;
                self.cancel_running(&p).await?;
            }
            OnBusy::Skip => {
                self.end(&p, DeliveryState::Skipped, Some("its group was busy"), None)
                    .await?;
            }
        }
        Ok(())
    }

    /// Leases the group's oldest members while it has room and the lease
    /// its budget. The oldest member is the one with the lowest id among
    /// those waiting in the group and those due but not decided yet (a
    /// lease on another replica may hold them): if another transaction
    /// holds it, admission stops here and the next lease takes it up, so
    /// members start in order of arrival. If the budget runs out first,
    /// the oldest waiting member is made due again for the next lease.
    async fn admit(
        &mut self,
        p: &Placed,
        limit: u32,
        concurrency: Option<u32>,
        budget: usize,
    ) -> Result<(), StoreError> {
        loop {
            if self.running(p, true).await? >= i64::from(limit) {
                return Ok(());
            }
            let oldest = self
                .txn
                .query_one(
                    "SELECT min(id) AS id FROM hookrouter_deliveries
                     WHERE state = 'pending' AND rule = $1 AND list = $2 AND action_path = $3
                       AND group_key = $4
                       AND (waiting = 'group' OR (waiting IS NULL AND due_at_ms <= $5))",
                    &[
                        &p.rule,
                        &p.list,
                        &p.path,
                        &p.group_key,
                        &super::to_db(self.now),
                    ],
                )
                .await
                .map_err(db_err)?;
            let Some(oldest) = col::<Option<i64>>(&oldest, "id")? else {
                return Ok(());
            };
            let head = self
                .txn
                .query_opt(
                    &format!(
                        "{} FOR UPDATE SKIP LOCKED",
                        select("id = $1 AND state = 'pending'")
                    ),
                    &[&oldest],
                )
                .await
                .map_err(db_err)?;
            let Some(head) = head else {
                return Ok(());
            };
            let mut head = Placed::from_row(&head)?;
            if self.leased.len() >= budget {
                return self.promote(p, GROUP).await;
            }
            // Expired, it took no slot; the next oldest is looked at.
            if self.expire_if_late(&head).await? {
                continue;
            }
            if self.lane_full(&head, concurrency).await? {
                // It waits for its lane now; the group's later members
                // follow it when the lane lets it in.
                self.wait(&mut head, LANE).await?;
                return Ok(());
            }
            self.grant(&head).await?;
        }
    }

    /// Marks every waiting member of `p`'s group but `p` superseded.
    async fn supersede_waiting(&mut self, p: &Placed) -> Result<(), StoreError> {
        self.txn
            .execute(
                "UPDATE hookrouter_deliveries
                 SET state = 'superseded', waiting = NULL, last_error = $6
                 WHERE state = 'pending' AND waiting = 'group' AND rule = $1 AND list = $2
                   AND action_path = $3 AND group_key = $4 AND id <> $5",
                &[
                    &p.rule,
                    &p.list,
                    &p.path,
                    &p.group_key,
                    &super::to_db(p.rec.id),
                    &format!("superseded by delivery {}", p.rec.id),
                ],
            )
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Marks the running members of `p`'s group cancelled (`on_busy:
    /// cancel`), with their rules' `on_cancel`, and names them to be
    /// stopped wherever they run.
    async fn cancel_running(&mut self, p: &Placed) -> Result<(), StoreError> {
        let rows = self
            .txn
            .query(
                &format!(
                    "{} ORDER BY id FOR UPDATE",
                    select(
                        "state = 'leased' AND cancel IS NULL AND rule = $1 AND list = $2
                         AND action_path = $3 AND group_key = $4"
                    )
                ),
                &[&p.rule, &p.list, &p.path, &p.group_key],
            )
            .await
            .map_err(db_err)?;
        for r in &rows {
            let m = Placed::from_row(r)?;
            self.txn
                .execute(
                    "UPDATE hookrouter_deliveries SET cancel = $2 WHERE id = $1",
                    &[&super::to_db(m.rec.id), &REASON_NEWER],
                )
                .await
                .map_err(db_err)?;
            self.on_cancel(&m.rec.event_key, &m.rec.rule, REASON_NEWER)
                .await?;
            self.stop.push(m.rec.id);
        }
        Ok(())
    }

    // ---- finishing ----

    /// Before a finish of delivery `id` locks its row: waits for the locks
    /// of its group and, when its action has a `concurrency:` (or members
    /// wait on its lane), of its lane. `None`: no such delivery.
    pub async fn lock_for_finish(&mut self, id: DeliveryId) -> Result<Option<()>, StoreError> {
        let Some(row) = self
            .txn
            .query_opt(&select("id = $1"), &[&super::to_db(id)])
            .await
            .map_err(db_err)?
        else {
            return Ok(None);
        };
        let p = Placed::from_row(&row)?;
        let mut names: Vec<String> = p.group_lock().into_iter().collect();
        if self.concurrency(&p.rec).is_some() || self.lane_waits(&p).await? {
            names.push(p.lane_lock());
        }
        self.lock_all(names).await?;
        Ok(Some(()))
    }

    /// Whether members wait on `p`'s lane (a reload may have removed the
    /// `concurrency:` that made them wait).
    async fn lane_waits(&self, p: &Placed) -> Result<bool, StoreError> {
        let row = self
            .txn
            .query_opt(
                "SELECT 1 FROM hookrouter_deliveries
                 WHERE state = 'pending' AND waiting = 'lane'
                   AND rule = $1 AND list = $2 AND action_path = $3 LIMIT 1",
                &[&p.rule, &p.list, &p.path],
            )
            .await
            .map_err(db_err)?;
        Ok(row.is_some())
    }

    /// The row of delivery `id` if this replica still holds its lease
    /// (`token`), locked.
    pub async fn held_row(
        &self,
        id: DeliveryId,
        token: Option<&str>,
    ) -> Result<Option<Placed>, StoreError> {
        let row = self
            .txn
            .query_opt(
                &format!(
                    "{} FOR UPDATE",
                    select("id = $1 AND state = 'leased' AND lease_token = $2")
                ),
                &[&super::to_db(id), &token],
            )
            .await
            .map_err(db_err)?;
        row.as_ref().map(Placed::from_row).transpose()
    }

    /// A running delivery's attempt was recorded: its slot in its group
    /// and lane is free.
    pub async fn finished(&mut self, p: &Placed) -> Result<(), StoreError> {
        self.left(p).await
    }

    // ---- cancelling ----

    /// Cancels the unfinished deliveries `filter` picks (bound to
    /// `params`): a waiting one ends `Cancelled` now; a running one is
    /// marked (it ends `Cancelled` when its attempt is recorded, or when
    /// its lease runs out) and named to be stopped. Each affected (event,
    /// rule) gets its `on_cancel` deliveries once.
    pub async fn cancel(
        &mut self,
        filter: &str,
        params: &[&(dyn ToSql + Sync)],
        reason: &str,
    ) -> Result<CancelOutcome, StoreError> {
        let scope = format!(
            "({filter}) AND state IN ('pending', 'leased') AND list <> 'on_cancel' ORDER BY id"
        );
        // Read first, unlocked, to learn the groups and lanes to lock:
        // their locks come before any row's.
        let first = self
            .txn
            .query(&select(&scope), params)
            .await
            .map_err(db_err)?;
        let mut names = Vec::new();
        let mut ids = Vec::with_capacity(first.len());
        for r in &first {
            let p = Placed::from_row(r)?;
            names.extend(p.group_lock());
            names.push(p.lane_lock());
            ids.push(super::to_db(p.rec.id));
        }
        self.lock_all(names).await?;
        let rows = self
            .txn
            .query(
                &format!(
                    "{} ORDER BY id FOR UPDATE",
                    select("id = ANY($1) AND state IN ('pending', 'leased')")
                ),
                &[&ids],
            )
            .await
            .map_err(db_err)?;
        let reason = no_nul(reason);
        let mut out = CancelOutcome::default();
        let mut reacted: HashSet<(String, String)> = HashSet::new();
        for r in &rows {
            let p = Placed::from_row(r)?;
            if p.rec.state == DeliveryState::Leased {
                if p.rec.cancel.is_some() {
                    continue;
                }
                self.txn
                    .execute(
                        "UPDATE hookrouter_deliveries SET cancel = $2 WHERE id = $1",
                        &[&super::to_db(p.rec.id), &reason],
                    )
                    .await
                    .map_err(db_err)?;
                out.stopping.push(p.rec.id);
            } else {
                self.end(&p, DeliveryState::Cancelled, None, Some(&reason))
                    .await?;
            }
            out.cancelled += 1;
            if reacted.insert((p.rec.event_key.clone(), p.rec.rule.clone())) {
                self.on_cancel(&p.rec.event_key, &p.rec.rule, &reason)
                    .await?;
            }
        }
        self.stop.extend(out.stopping.iter().copied());
        Ok(out)
    }
}

/// After a commit: wakes the replicas if work became due, and tells them
/// which running deliveries to stop.
pub(super) async fn after_commit(
    store: &PgStore,
    client: &deadpool_postgres::Object,
    wake: bool,
    stop: &[DeliveryId],
) {
    if wake {
        store.wake_all(client).await;
    }
    if !stop.is_empty() {
        store.tell_stop(client, stop).await;
    }
}

/// Ids of a cancel notification's payload (comma-separated).
pub(super) fn parse_ids(payload: &str) -> Vec<DeliveryId> {
    payload
        .split(',')
        .filter_map(|s| s.trim().parse::<i64>().ok())
        .map(from_db)
        .collect()
}
