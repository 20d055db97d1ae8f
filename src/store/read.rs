//! The redb engine's read side: blocking snapshot reads for inspection (an
//! event with its history, event and delivery listings) and for scheduling
//! (queue depth, the next due time). redb read transactions are snapshots, so
//! these run beside the writer thread; callers off the runtime's workers use
//! `Store::read` or `spawn_blocking`.

use super::*;

impl RedbStore {
    /// An event with its deliveries and their attempts. Blocking.
    pub fn get_event(&self, key: &str) -> Result<Option<EventDetail>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let Some(row) = schema::load_event(&events, key)? else {
            return Ok(None);
        };
        let event_deliveries = txn.open_table(EVENT_DELIVERIES)?;
        let deliveries = txn.open_table(DELIVERIES)?;
        let attempts = txn.open_table(ATTEMPTS)?;
        let mut out = Vec::new();
        for id in delivery_ids_of(&event_deliveries, key, row.first_deliveries.clone())? {
            if let Some(record) = load_delivery(&deliveries, id)? {
                let mut history: Vec<_> = attempts_of(&attempts, id)?
                    .into_iter()
                    .map(|(_, a)| a)
                    .collect();
                history.extend(record.success.clone());
                out.push(DeliveryDetail { record, history });
            }
        }
        Ok(Some(EventDetail {
            key: key.to_owned(),
            received_ms: row.received_ms,
            dedup: DedupKey::from_stored(&row.dedup_key),
            event: row.event,
            deliveries: out,
        }))
    }

    /// See [`Store::reply_of`]. Blocking.
    pub fn reply_of(&self, key: &str) -> Result<Option<Reply>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        match events.get(key)? {
            Some(row) => schema::decode_event_reply(row.value()),
            None => Ok(None),
        }
    }

    /// Events newest first, `limit` of them, strictly older than the key
    /// `before` when given (pass the last key of a page to get the next).
    /// Blocking.
    pub fn list_events(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let events = txn.open_table(EVENTS)?;
        let event_deliveries = txn.open_table(EVENT_DELIVERIES)?;
        let deliveries = txn.open_table(DELIVERIES)?;
        let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        for item in events
            .range::<&str>((Bound::Unbounded, upper))?
            .rev()
            .take(limit)
        {
            let (k, v) = item?;
            let key = k.value();
            let row = schema::decode_event_row(v.value())?;
            let mut counts = DeliveryCounts::default();
            for id in delivery_ids_of(&event_deliveries, key, row.first_deliveries.clone())? {
                if let Some(rec) = load_delivery(&deliveries, id)? {
                    *counts.slot(rec.state) += 1;
                }
            }
            out.push(EventSummary {
                key: key.to_owned(),
                event_id: row.event.id,
                kind: row.event.kind,
                source: row.event.source,
                provider: row.event.provider,
                received_at: row.event.received_at,
                received_ms: row.received_ms,
                deliveries: counts,
            });
        }
        Ok(out)
    }

    /// Up to `limit` deliveries. Blocking.
    ///
    /// Order depends on what is most useful per state: `None` (all) and
    /// the final states: newest first (highest id). `Pending`: next due
    /// first, then the members waiting in groups. `Leased`: earliest lease
    /// expiry first.
    pub fn list_deliveries(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let deliveries = txn.open_table(DELIVERIES)?;
        let mut ids = Vec::new();
        match state {
            None => {
                let mut out = Vec::new();
                for item in deliveries.iter()?.rev().take(limit) {
                    let (_, v) = item?;
                    out.push(decode_delivery(v.value())?);
                }
                return Ok(out);
            }
            Some(DeliveryState::Pending | DeliveryState::Leased) => {
                let def = if state == Some(DeliveryState::Pending) {
                    DUE
                } else {
                    LEASED
                };
                let index = txn.open_table(def)?;
                for item in index.iter()?.take(limit) {
                    let (k, _) = item?;
                    ids.push(k.value().1);
                }
                if state == Some(DeliveryState::Pending) {
                    let waiting = txn.open_table(GROUP_WAIT)?;
                    for item in waiting.iter()?.take(limit.saturating_sub(ids.len())) {
                        let (k, _) = item?;
                        ids.push(k.value().1);
                    }
                }
            }
            Some(DeliveryState::Done) => {
                // No index: nearly every delivery ends done, so the newest
                // rows are a short walk.
                let mut out = Vec::new();
                for item in deliveries.iter()?.rev() {
                    if out.len() == limit {
                        break;
                    }
                    let (_, v) = item?;
                    let rec = decode_delivery(v.value())?;
                    if rec.state == DeliveryState::Done {
                        out.push(rec);
                    }
                }
                return Ok(out);
            }
            Some(other) => {
                if let Some(def) = final_index(other) {
                    let index = txn.open_table(def)?;
                    for item in index.iter()?.rev().take(limit) {
                        let (k, _) = item?;
                        ids.push(k.value());
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(rec) = load_delivery(&deliveries, id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Deliveries per state in the whole store; O(1). Blocking.
    pub fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let count = |state: DeliveryState| -> Result<u64, StoreError> {
            match final_index(state) {
                Some(def) => Ok(txn.open_table(def)?.len()?),
                None => Ok(0),
            }
        };
        let mut depth = QueueDepth {
            pending: txn.open_table(DUE)?.len()? + txn.open_table(GROUP_WAIT)?.len()?,
            leased: txn.open_table(LEASED)?.len()?,
            done: 0,
            dead: count(DeliveryState::Dead)?,
            skipped: count(DeliveryState::Skipped)?,
            superseded: count(DeliveryState::Superseded)?,
            cancelled: count(DeliveryState::Cancelled)?,
            expired: count(DeliveryState::Expired)?,
            coalesced: count(DeliveryState::Coalesced)?,
            dropped: count(DeliveryState::Dropped)?,
        };
        // `Done` has no index of its own: it is every other delivery.
        let all = txn.open_table(DELIVERIES)?.len()?;
        let others: u64 = DeliveryState::ALL.iter().map(|&s| depth.get(s)).sum();
        depth.done = all.saturating_sub(others);
        Ok(depth)
    }

    /// When the next lease could find work: the earliest due time of a
    /// `Pending` delivery or lease expiry of a `Leased` one; `None` if there
    /// is neither. Lets the dispatcher sleep until then (or until
    /// [`Store::notified`]). Blocking.
    pub fn next_due_ms(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let due = txn.open_table(DUE)?.first()?.map(|(k, _)| k.value().0);
        let lease = txn.open_table(LEASED)?.first()?.map(|(k, _)| k.value().0);
        Ok(match (due, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}
