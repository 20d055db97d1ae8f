//! Opening a data file: creating the tables, checking the layout version and
//! moving an older layout to the current one, and requeueing the deliveries
//! a stopped process left leased. Runs once, before the writer thread starts.

use redb::{Database, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::StoreError;
use super::schema::{META_SCHEMA, SCHEMA_VERSION, WriteTables, group_id, load_delivery, v1};
use super::types::DeliveryState;

/// Prepares a freshly opened database: creates the tables, checks the schema
/// version, and turns every `Leased` delivery back into `Pending`, due `now`.
/// A lease outliving its process means the worker may or may not have run
/// the action; running it again is the at-least-once promise. A leased
/// delivery whose cancel was requested ends `Cancelled` instead: it is
/// never run again. Every group with waiting members gets its oldest one
/// due, since no running member is left to make room on its way out.
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
        // Layout 4 adds tables (created below) and a row form; its rows
        // are written as they change and the older forms still read.
        // Layout 5 adds tables (created below), two final states and a
        // tail to delivery rows; layout-4 rows read as they are.
        Some(2..=4) => {}
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
                rec.lease_until_ms = None;
                if rec.cancel.is_some() {
                    rec.state = DeliveryState::Cancelled;
                    t.cancelled.insert(id, ())?;
                    t.put_delivery(&rec)?;
                    continue;
                }
                rec.state = DeliveryState::Pending;
                // Its attempt started before the stop: `start_within` is
                // met, and the run is owed again (at least once), not
                // expired.
                rec.deadline_ms = None;
                // A group member rejoins its group's queue at its place (ids
                // are arrival order), ahead of the members that waited. It
                // keeps the time it was due: made due as its group's head,
                // it must sort ahead of newer members never yet looked at,
                // which wait in `due` at their arrival times.
                if let Some(slot) = &rec.group {
                    rec.waited = true;
                    let gid = group_id(&rec, slot);
                    t.group_wait.insert((gid.as_str(), id), ())?;
                } else {
                    rec.due_at_ms = now;
                    t.due.insert((now, id), ())?;
                }
                t.put_delivery(&rec)?;
            }
        }
        let mut heads: Vec<(String, u64)> = Vec::new();
        for item in t.group_wait.iter()? {
            let (k, _) = item?;
            let (gid, id) = k.value();
            if heads.last().is_none_or(|(g, _)| g != gid) {
                heads.push((gid.to_owned(), id));
            }
        }
        for (gid, id) in heads {
            t.group_wait.remove((gid.as_str(), id))?;
            if let Some(rec) = load_delivery(&t.deliveries, id)? {
                t.due.insert((rec.due_at_ms, id), ())?;
            }
        }
        t.due.len()? + t.group_wait.len()?
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
