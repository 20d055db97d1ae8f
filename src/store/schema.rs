//! The redb table layout and the row codecs.
//!
//! Owns the table definitions, the row encodings and the small read helpers
//! shared by the writer thread and the read side. It does not own any policy
//! (dedup, leasing, retries, retention): that is `ops` and `prune`, run by
//! `writer`. Every index below is maintained in the same transaction as the
//! row it points to, so the indexes never disagree with the rows after a
//! commit.
//!
//! | table              | key                    | value                | what for |
//! |--------------------|------------------------|----------------------|----------|
//! | `events`           | event key (ULID text)  | [`EventRow`], see [`encode_event_row`] | the envelope; ULID order = arrival order |
//! | `event_deliveries` | (event key, id)        | ()                   | deliveries added to an event later (replay, on_failure) |
//! | `dedup`            | namespaced dedup key   | (event key, expires) | event- and rule-level dedup |
//! | `rule_dedup`       | (event key, dedup key) | ()                   | the rule-level keys an event recorded, for prune |
//! | `deliveries`       | id                     | [`DeliveryRecord`], see [`encode_delivery`] | the delivery rows |
//! | `due`              | (due ms, id)           | ()                   | exactly the `Pending` deliveries |
//! | `leased`           | (lease until ms, id)   | ()                   | exactly the `Leased` deliveries |
//! | `dead`             | id                     | ()                   | exactly the `Dead` deliveries |
//! | `skipped`, `superseded`, `cancelled`, `expired`, `coalesced`, `dropped` | id | () | exactly the deliveries in that final state |
//! | `group_wait`       | (group id, id)         | ()                   | `Pending` group members waiting for room, oldest first |
//! | `attempts`         | (id, attempt number)   | JSON `Attempt`       | attempts that did not end a delivery as done |
//! | `meta`             | name                   | u64                  | `next_delivery_id` floor, `schema_version` |
//! | `debounce`         | rule NUL rendered key  | JSON [`BurstRow`]    | a burst's waiting deliveries, first time and count |
//! | `limit_hits`       | (limit key, ms)        | u32                  | `over: drop` admissions in the rolling window |
//! | `limit_next`       | limit key              | u64                  | `over: delay`: the next free start slot, unix ms |
//!
//! Every table a commit touches costs it a root-to-leaf path of pages to
//! write and fsync, so the common path (an event, one delivery run at once,
//! its success) touches as few as it can: the deliveries an event is
//! accepted with are a run of ids named in its row's header rather than
//! entries of `event_deliveries`, `Done` deliveries have no index
//! table (their count is what the other states leave of `deliveries`), the
//! attempt that succeeds is kept in the delivery row, the next delivery id
//! follows from the last row rather than a counter, and dedup entries leave
//! with their event at prune instead of through an expiry index. The other
//! states keep an index table each, which keeps `queue_depth` O(1) (redb
//! stores every table's length) and makes leasing a range scan of `due` and
//! `leased`.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::types::{
    Attempt, DebounceInfo, DeliveryId, DeliveryRecord, DeliveryState, FollowUps, GroupSlot,
};
use crate::event::Event;
use crate::rules::{ActionList, ActionType};

pub(super) const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");
pub(super) const EVENT_DELIVERIES: TableDefinition<(&str, u64), ()> =
    TableDefinition::new("event_deliveries");
pub(super) const DEDUP: TableDefinition<&str, (&str, u64)> = TableDefinition::new("dedup");
pub(super) const RULE_DEDUP: TableDefinition<(&str, &str), ()> = TableDefinition::new("rule_dedup");
pub(super) const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
pub(super) const DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("due");
pub(super) const LEASED: TableDefinition<(u64, u64), ()> = TableDefinition::new("leased");
pub(super) const DEAD: TableDefinition<u64, ()> = TableDefinition::new("dead");
pub(super) const SKIPPED: TableDefinition<u64, ()> = TableDefinition::new("skipped");
pub(super) const SUPERSEDED: TableDefinition<u64, ()> = TableDefinition::new("superseded");
pub(super) const CANCELLED: TableDefinition<u64, ()> = TableDefinition::new("cancelled");
pub(super) const EXPIRED: TableDefinition<u64, ()> = TableDefinition::new("expired");
pub(super) const COALESCED: TableDefinition<u64, ()> = TableDefinition::new("coalesced");
pub(super) const DROPPED: TableDefinition<u64, ()> = TableDefinition::new("dropped");
pub(super) const DEBOUNCE: TableDefinition<&str, &[u8]> = TableDefinition::new("debounce");
pub(super) const LIMIT_HITS: TableDefinition<(&str, u64), u32> = TableDefinition::new("limit_hits");
pub(super) const LIMIT_NEXT: TableDefinition<&str, u64> = TableDefinition::new("limit_next");
/// Waiting members of a group, keyed by [`group_id`] then delivery id, so the
/// first entry of a group is its oldest waiting member (arrival order).
pub(super) const GROUP_WAIT: TableDefinition<(&str, u64), ()> = TableDefinition::new("group_wait");
pub(super) const ATTEMPTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("attempts");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// `meta` key of the lowest delivery id that may still be handed out. Ids
/// follow the last row of `deliveries`; this floor, raised by prune before it
/// removes rows, keeps the ids of pruned deliveries from coming back.
pub(super) const META_NEXT_ID: &str = "next_delivery_id";
/// `meta` key of the layout version; bumped when rows or tables change shape
/// so an older binary refuses a newer file instead of misreading it.
pub(super) const META_SCHEMA: &str = "schema_version";
pub(super) const SCHEMA_VERSION: u64 = 5;

/// Tables of layout version 1 that version 2 replaced; `migrate::prepare`
/// migrates them.
pub(super) mod v1 {
    use redb::TableDefinition;
    pub const DONE: TableDefinition<u64, ()> = TableDefinition::new("done");
    pub const DEDUP_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("dedup_expiry");
}

/// The stored form of an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EventRow {
    pub event: Event,
    pub received_ms: u64,
    pub dedup_key: String,
    pub dedup_until_ms: u64,
    /// What a `respond:` answered, for duplicates. An optional field of the
    /// row rather than a table: written only with the event, read only for
    /// a duplicate, and absent from rows written before it existed (and an
    /// older binary reading a newer row ignores it), so the layout version
    /// stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<super::types::Reply>,
    /// The deliveries the event was accepted with, from the row's header.
    #[serde(skip)]
    pub first_deliveries: std::ops::Range<u64>,
}

/// The part of an event row a duplicate's answer needs.
#[derive(Debug, Deserialize)]
pub(super) struct EventRowReply {
    #[serde(default)]
    pub reply: Option<super::types::Reply>,
}

/// A debounce burst: its waiting deliveries (one per action of the rule),
/// when its first event came and how many came. A burst whose deliveries
/// are no longer all `Pending` is over; the next event starts a new one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct BurstRow {
    pub waiting: Vec<DeliveryId>,
    pub first_ms: u64,
    pub count: u32,
    /// The earliest due time its limits and `delay:` allowed.
    pub floor_ms: u64,
}

/// The parts of an event row that prune needs. Decoding only these skips
/// building the event's headers and body, most of a row's decoding cost.
#[derive(Debug, Deserialize)]
pub(super) struct EventRowKeys {
    pub dedup_key: String,
    pub dedup_until_ms: u64,
    #[serde(skip)]
    pub first_deliveries: std::ops::Range<u64>,
}

/// Namespaced key of an event-level dedup entry. Event- and rule-level keys
/// share the `dedup` table (one expiry index, one prune pass) and must not
/// collide, hence the prefixes.
pub(super) fn event_dedup_key(key: &str) -> String {
    format!("e\u{0}{key}")
}

/// The index table of a final state other than `Done` (which has none).
pub(super) fn final_index(state: DeliveryState) -> Option<TableDefinition<'static, u64, ()>> {
    match state {
        DeliveryState::Dead => Some(DEAD),
        DeliveryState::Skipped => Some(SKIPPED),
        DeliveryState::Superseded => Some(SUPERSEDED),
        DeliveryState::Cancelled => Some(CANCELLED),
        DeliveryState::Expired => Some(EXPIRED),
        DeliveryState::Coalesced => Some(COALESCED),
        DeliveryState::Dropped => Some(DROPPED),
        DeliveryState::Pending | DeliveryState::Leased | DeliveryState::Done => None,
    }
}

/// The identity of a group: the same action of the same rule with the same
/// rendered key. NUL separates the parts; a rule name never holds one.
pub(super) fn group_id(rec: &DeliveryRecord, slot: &GroupSlot) -> String {
    let mut id = format!(
        "{}\u{0}{}\u{0}{}",
        rec.rule,
        super::types::list_word::word(rec.list),
        rec.action
    );
    for i in &rec.then {
        id.push('.');
        id.push_str(&i.to_string());
    }
    id.push('\u{0}');
    id.push_str(&slot.key);
    id
}

/// Namespaced key of a rule-level dedup entry, scoped to the rule.
pub(super) fn rule_dedup_key(rule: &str, key: &str) -> String {
    format!("r\u{0}{rule}\u{0}{key}")
}

/// All tables of one write transaction, opened once: redb refuses to open the
/// same table twice in a transaction, and every command touches several.
pub(super) struct WriteTables<'t> {
    pub events: redb::Table<'t, &'static str, &'static [u8]>,
    pub event_deliveries: redb::Table<'t, (&'static str, u64), ()>,
    pub dedup: redb::Table<'t, &'static str, (&'static str, u64)>,
    pub rule_dedup: redb::Table<'t, (&'static str, &'static str), ()>,
    pub deliveries: redb::Table<'t, u64, &'static [u8]>,
    pub due: redb::Table<'t, (u64, u64), ()>,
    pub leased: redb::Table<'t, (u64, u64), ()>,
    pub dead: redb::Table<'t, u64, ()>,
    pub skipped: redb::Table<'t, u64, ()>,
    pub superseded: redb::Table<'t, u64, ()>,
    pub cancelled: redb::Table<'t, u64, ()>,
    pub expired: redb::Table<'t, u64, ()>,
    pub coalesced: redb::Table<'t, u64, ()>,
    pub dropped: redb::Table<'t, u64, ()>,
    pub debounce: redb::Table<'t, &'static str, &'static [u8]>,
    pub limit_hits: redb::Table<'t, (&'static str, u64), u32>,
    pub limit_next: redb::Table<'t, &'static str, u64>,
    pub group_wait: redb::Table<'t, (&'static str, u64), ()>,
    pub attempts: redb::Table<'t, (u64, u32), &'static [u8]>,
    pub meta: redb::Table<'t, &'static str, u64>,
    /// The next delivery id, worked out on first use in the transaction.
    next_id: Option<u64>,
    /// The id floor in `meta` was raised in this transaction.
    floor_raised: bool,
    /// Where on_failure and on_cancel deliveries decided in the transaction
    /// come from; none when no rules are loaded (then none are created).
    pub follow_ups: Option<std::sync::Arc<dyn FollowUps>>,
}

impl<'t> WriteTables<'t> {
    /// Opens (creating on first use) every table.
    pub fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(WriteTables {
            events: txn.open_table(EVENTS)?,
            event_deliveries: txn.open_table(EVENT_DELIVERIES)?,
            dedup: txn.open_table(DEDUP)?,
            rule_dedup: txn.open_table(RULE_DEDUP)?,
            deliveries: txn.open_table(DELIVERIES)?,
            due: txn.open_table(DUE)?,
            leased: txn.open_table(LEASED)?,
            dead: txn.open_table(DEAD)?,
            skipped: txn.open_table(SKIPPED)?,
            superseded: txn.open_table(SUPERSEDED)?,
            cancelled: txn.open_table(CANCELLED)?,
            expired: txn.open_table(EXPIRED)?,
            coalesced: txn.open_table(COALESCED)?,
            dropped: txn.open_table(DROPPED)?,
            debounce: txn.open_table(DEBOUNCE)?,
            limit_hits: txn.open_table(LIMIT_HITS)?,
            limit_next: txn.open_table(LIMIT_NEXT)?,
            group_wait: txn.open_table(GROUP_WAIT)?,
            attempts: txn.open_table(ATTEMPTS)?,
            meta: txn.open_table(META)?,
            next_id: None,
            floor_raised: false,
            follow_ups: None,
        })
    }

    /// The index table of a final state, if it has one.
    pub fn final_table(&mut self, state: DeliveryState) -> Option<&mut redb::Table<'t, u64, ()>> {
        match state {
            DeliveryState::Dead => Some(&mut self.dead),
            DeliveryState::Skipped => Some(&mut self.skipped),
            DeliveryState::Superseded => Some(&mut self.superseded),
            DeliveryState::Cancelled => Some(&mut self.cancelled),
            DeliveryState::Expired => Some(&mut self.expired),
            DeliveryState::Coalesced => Some(&mut self.coalesced),
            DeliveryState::Dropped => Some(&mut self.dropped),
            DeliveryState::Pending | DeliveryState::Leased | DeliveryState::Done => None,
        }
    }

    pub fn put_delivery(&mut self, rec: &DeliveryRecord) -> Result<(), StoreError> {
        let bytes = encode_delivery(rec)?;
        self.deliveries.insert(rec.id, bytes.as_slice())?;
        Ok(())
    }

    /// Hands out the next delivery id: one past the last row, and never below
    /// the floor. Nothing extra is written, so creating deliveries touches
    /// no table but `deliveries` and its index.
    pub fn next_delivery_id(&mut self) -> Result<DeliveryId, StoreError> {
        let id = self.peek_next_id()?;
        self.next_id = Some(id + 1);
        Ok(id)
    }

    /// The id [`Self::next_delivery_id`] hands out next, worked out once per
    /// transaction.
    fn peek_next_id(&mut self) -> Result<DeliveryId, StoreError> {
        if let Some(id) = self.next_id {
            return Ok(id);
        }
        let after_last = self.deliveries.last()?.map_or(1, |(k, _)| k.value() + 1);
        let id = after_last.max(self.id_floor()?);
        self.next_id = Some(id);
        Ok(id)
    }

    fn id_floor(&self) -> Result<DeliveryId, StoreError> {
        Ok(self.meta.get(META_NEXT_ID)?.map_or(1, |g| g.value()))
    }

    /// Raises the id floor past the last delivery; prune calls it before it
    /// removes rows, so a pruned id is never handed out again.
    pub fn raise_id_floor(&mut self) -> Result<(), StoreError> {
        if self.floor_raised {
            return Ok(());
        }
        let next = self.peek_next_id()?;
        if next > self.id_floor()? {
            self.meta.insert(META_NEXT_ID, next)?;
        }
        self.floor_raised = true;
        Ok(())
    }
}

pub(super) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// First byte of a delivery row in postcard form as layout 3 wrote it.
/// Older rows are JSON and start with `{`; every form reads.
const DELIVERY_POSTCARD: u8 = 2;
/// First byte of a delivery row in postcard form with the agent fields
/// (layout 4). Rows are rewritten in this form when they next change.
const DELIVERY_POSTCARD_V4: u8 = 3;

/// Encodes a delivery row. Every delivery row is written at least twice
/// (created, then finished) and read once in between, all on the writer
/// thread, which is what bounds ingest; postcard costs a fraction of JSON.
pub(super) fn encode_delivery(rec: &DeliveryRecord) -> Result<Vec<u8>, StoreError> {
    // postcard cannot write a self-describing JSON value; the result
    // context goes in as JSON text.
    let result = match &rec.result {
        Some(v) => Some(serde_json::to_string(v)?),
        None => None,
    };
    let row = DeliveryRowRef {
        id: rec.id,
        event_key: &rec.event_key,
        rule: &rec.rule,
        action: rec.action,
        kind: rec.kind,
        state: rec.state,
        attempts: rec.attempts,
        due_at_ms: rec.due_at_ms,
        created_ms: rec.created_ms,
        lease_until_ms: rec.lease_until_ms,
        last_error: rec.last_error.as_deref(),
        on_failure: rec.on_failure.as_ref(),
        success: rec.success.as_ref(),
        list: rec.list,
        then: &rec.then,
        group: rec.group.as_ref(),
        parent: rec.parent,
        result: result.as_deref(),
        cancel: rec.cancel.as_deref(),
        cancel_reason: rec.cancel_reason.as_deref(),
        deadline_ms: rec.deadline_ms,
        waited: rec.waited,
    };
    let bytes = postcard::to_extend(&row, vec![DELIVERY_POSTCARD_V4])
        .map_err(|_| StoreError::Internal("a delivery row did not encode"))?;
    // Fields added after layout 4 follow the row, and only when set: a row
    // without them ends where layout 4 ended, and reads the same.
    match rec.debounce {
        Some(d) => postcard::to_extend(&RowTail { debounce: Some(d) }, bytes)
            .map_err(|_| StoreError::Internal("a delivery row did not encode")),
        None => Ok(bytes),
    }
}

/// What follows a layout-4 delivery row, when anything does (layout 5).
#[derive(Serialize, Deserialize)]
struct RowTail {
    debounce: Option<DebounceInfo>,
}

/// Decodes a delivery row in any form.
pub(super) fn decode_delivery(bytes: &[u8]) -> Result<DeliveryRecord, StoreError> {
    let corrupt = |e: postcard::Error| StoreError::Corrupt(format!("delivery row: {e}"));
    match bytes.split_first() {
        Some((&DELIVERY_POSTCARD_V4, rest)) => {
            let (r, tail): (DeliveryRow, _) = postcard::take_from_bytes(rest).map_err(corrupt)?;
            let tail: Option<RowTail> = if tail.is_empty() {
                None
            } else {
                Some(postcard::from_bytes(tail).map_err(corrupt)?)
            };
            let result = match r.result {
                Some(text) => Some(decode(text.as_bytes(), "delivery result")?),
                None => None,
            };
            Ok(DeliveryRecord {
                id: r.id,
                event_key: r.event_key,
                rule: r.rule,
                action: r.action,
                kind: r.kind,
                state: r.state,
                attempts: r.attempts,
                due_at_ms: r.due_at_ms,
                created_ms: r.created_ms,
                lease_until_ms: r.lease_until_ms,
                last_error: r.last_error,
                on_failure: r.on_failure,
                success: r.success,
                list: r.list,
                then: r.then,
                group: r.group,
                parent: r.parent,
                result,
                cancel: r.cancel,
                cancel_reason: r.cancel_reason,
                deadline_ms: r.deadline_ms,
                waited: r.waited,
                debounce: tail.and_then(|t| t.debounce),
            })
        }
        Some((&DELIVERY_POSTCARD, rest)) => {
            let r: DeliveryRowV3 = postcard::from_bytes(rest).map_err(corrupt)?;
            let on_failure = r.on_failure.map(|f| super::types::FailureContext {
                delivery: f.delivery,
                action: f.action,
                attempts: f.attempts,
                last_error: f.last_error,
                reason: None,
            });
            Ok(DeliveryRecord {
                id: r.id,
                event_key: r.event_key,
                rule: r.rule,
                action: r.action,
                kind: r.kind,
                state: r.state,
                attempts: r.attempts,
                due_at_ms: r.due_at_ms,
                created_ms: r.created_ms,
                lease_until_ms: r.lease_until_ms,
                last_error: r.last_error,
                list: if on_failure.is_some() {
                    ActionList::OnFailure
                } else {
                    ActionList::Actions
                },
                on_failure,
                success: r.success,
                then: Vec::new(),
                group: None,
                parent: None,
                result: None,
                cancel: None,
                cancel_reason: None,
                deadline_ms: None,
                waited: false,
                debounce: None,
            })
        }
        _ => {
            let mut rec: DeliveryRecord = decode(bytes, "delivery row")?;
            // Before the list was stored, an on_failure context said it.
            if rec.on_failure.is_some() {
                rec.list = ActionList::OnFailure;
            }
            Ok(rec)
        }
    }
}

/// A delivery row as postcard writes it: every field, in this order (postcard
/// is not self-describing, so nothing may be skipped or reordered without a
/// new tag byte).
#[derive(Serialize)]
struct DeliveryRowRef<'a> {
    id: u64,
    event_key: &'a str,
    rule: &'a str,
    action: u32,
    kind: ActionType,
    state: DeliveryState,
    attempts: u32,
    due_at_ms: u64,
    created_ms: u64,
    lease_until_ms: Option<u64>,
    last_error: Option<&'a str>,
    on_failure: Option<&'a super::types::FailureContext>,
    success: Option<&'a Attempt>,
    #[serde(with = "super::types::list_word")]
    list: ActionList,
    then: &'a [u32],
    group: Option<&'a GroupSlot>,
    parent: Option<u64>,
    result: Option<&'a str>,
    cancel: Option<&'a str>,
    cancel_reason: Option<&'a str>,
    deadline_ms: Option<u64>,
    waited: bool,
}

/// The owned twin of [`DeliveryRowRef`], for reading.
#[derive(Deserialize)]
struct DeliveryRow {
    id: u64,
    event_key: String,
    rule: String,
    action: u32,
    kind: ActionType,
    state: DeliveryState,
    attempts: u32,
    due_at_ms: u64,
    created_ms: u64,
    lease_until_ms: Option<u64>,
    last_error: Option<String>,
    on_failure: Option<super::types::FailureContext>,
    success: Option<Attempt>,
    #[serde(with = "super::types::list_word")]
    list: ActionList,
    then: Vec<u32>,
    group: Option<GroupSlot>,
    parent: Option<u64>,
    result: Option<String>,
    cancel: Option<String>,
    cancel_reason: Option<String>,
    deadline_ms: Option<u64>,
    waited: bool,
}

/// A delivery row as layout 3 wrote it (tag [`DELIVERY_POSTCARD`]).
#[derive(Deserialize)]
struct DeliveryRowV3 {
    id: u64,
    event_key: String,
    rule: String,
    action: u32,
    kind: ActionType,
    state: DeliveryState,
    attempts: u32,
    due_at_ms: u64,
    created_ms: u64,
    lease_until_ms: Option<u64>,
    last_error: Option<String>,
    on_failure: Option<FailureContextV3>,
    success: Option<Attempt>,
}

/// A failure context as layout 3 wrote it, before `reason`.
#[derive(Deserialize)]
struct FailureContextV3 {
    delivery: u64,
    action: u32,
    attempts: u32,
    last_error: Option<String>,
}

/// First byte of an LZ4-compressed event row. A plain row is JSON and starts
/// with `{`, so both forms can be told apart and old files still read.
const LZ4_ROW: u8 = 1;
/// Rows shorter than this stay plain JSON: compressing them saves no page.
const COMPRESS_FROM: usize = 512;

/// Encodes an event row: JSON, LZ4-compressed when that is smaller. A typical
/// 2.5 KB GitHub push shrinks to about a third, so several events share a
/// redb page instead of one each: fewer pages to write per commit, and a
/// smaller file.
pub(super) fn encode_event_row(json: Vec<u8>) -> Vec<u8> {
    if json.len() < COMPRESS_FROM {
        return json;
    }
    let packed = lz4_flex::block::compress_prepend_size(&json);
    if packed.len() + 1 >= json.len() {
        return json;
    }
    let mut row = Vec::with_capacity(packed.len() + 1);
    row.push(LZ4_ROW);
    row.extend_from_slice(&packed);
    row
}

/// First byte of an event row with a header: the event's first deliveries,
/// as `first id: u64 LE, count: u32 LE`, then the row itself (LZ4 or plain).
const WITH_DELIVERIES: u8 = 2;
const HEADER_LEN: usize = 1 + 8 + 4;

/// Prefixes an encoded row with the run of delivery ids it was accepted with.
pub(super) fn with_deliveries(row: &[u8], ids: std::ops::Range<u64>) -> Vec<u8> {
    let count = u32::try_from(ids.end.saturating_sub(ids.start)).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + row.len());
    out.push(WITH_DELIVERIES);
    out.extend_from_slice(&ids.start.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(row);
    out
}

/// Decodes a row written by [`encode_event_row`] (or a plain JSON row), with
/// or without a [`with_deliveries`] header.
pub(super) fn decode_event_row(bytes: &[u8]) -> Result<EventRow, StoreError> {
    let (mut row, first): (EventRow, _) = decode_event_row_as(bytes)?;
    row.first_deliveries = first;
    Ok(row)
}

/// [`decode_event_row`], for a duplicate: the stored answer only.
pub(super) fn decode_event_reply(bytes: &[u8]) -> Result<Option<super::types::Reply>, StoreError> {
    let (row, _): (EventRowReply, _) = decode_event_row_as(bytes)?;
    Ok(row.reply)
}

/// [`decode_event_row`], for prune: the dedup key, its expiry and the first
/// deliveries only.
pub(super) fn decode_event_keys(bytes: &[u8]) -> Result<EventRowKeys, StoreError> {
    let (mut keys, first): (EventRowKeys, _) = decode_event_row_as(bytes)?;
    keys.first_deliveries = first;
    Ok(keys)
}

fn decode_event_row_as<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, std::ops::Range<u64>), StoreError> {
    if bytes.first() == Some(&WITH_DELIVERIES) {
        let short = || StoreError::Corrupt("event row: short header".to_owned());
        let (first, rest) = bytes
            .get(1..)
            .and_then(<[u8]>::split_first_chunk::<8>)
            .ok_or_else(short)?;
        let (count, body) = rest.split_first_chunk::<4>().ok_or_else(short)?;
        let first = u64::from_le_bytes(*first);
        let count = u64::from(u32::from_le_bytes(*count));
        let row = decode_body_row(body)?;
        return Ok((row, first..first.saturating_add(count)));
    }
    Ok((decode_body_row(bytes)?, 0..0))
}

fn decode_body_row<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&LZ4_ROW, packed)) => {
            // LZ4 expands at most about 255:1; a larger claimed size is a
            // damaged row, not an allocation to attempt.
            let claimed = packed
                .first_chunk::<4>()
                .map(|b| u32::from_le_bytes(*b) as usize)
                .unwrap_or(usize::MAX);
            if claimed > packed.len().saturating_mul(255).saturating_add(64) {
                return Err(StoreError::Corrupt(
                    "event row: bad compressed size".to_owned(),
                ));
            }
            let json = lz4_flex::block::decompress_size_prepended(packed)
                .map_err(|e| StoreError::Corrupt(format!("event row: {e}")))?;
            decode(&json, "event row")
        }
        _ => decode(bytes, "event row"),
    }
}

pub(super) fn load_event(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<EventRow>, StoreError> {
    match t.get(key)? {
        Some(g) => Ok(Some(decode_event_row(g.value())?)),
        None => Ok(None),
    }
}

pub(super) fn load_delivery(
    t: &impl ReadableTable<u64, &'static [u8]>,
    id: DeliveryId,
) -> Result<Option<DeliveryRecord>, StoreError> {
    match t.get(id)? {
        Some(g) => Ok(Some(decode_delivery(g.value())?)),
        None => Ok(None),
    }
}

/// Ids of an event's deliveries, in creation order: the run in its row's
/// header (`first`), then any added later.
pub(super) fn delivery_ids_of(
    t: &impl ReadableTable<(&'static str, u64), ()>,
    event_key: &str,
    first: std::ops::Range<u64>,
) -> Result<Vec<DeliveryId>, StoreError> {
    let mut ids: Vec<DeliveryId> = first.collect();
    for item in t.range((event_key, 0u64)..=(event_key, u64::MAX))? {
        let (k, _) = item?;
        ids.push(k.value().1);
    }
    Ok(ids)
}

/// Attempts of a delivery, oldest first, with their numbers.
pub(super) fn attempts_of(
    t: &impl ReadableTable<(u64, u32), &'static [u8]>,
    id: DeliveryId,
) -> Result<Vec<(u32, Attempt)>, StoreError> {
    let mut out = Vec::new();
    for item in t.range((id, 0u32)..=(id, u32::MAX))? {
        let (k, v) = item?;
        out.push((k.value().1, decode(v.value(), "attempt row")?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::store::types::{AttemptOutcome, DeliveryState};

    /// A delivery row as layout 3 wrote it while its action type and attempt
    /// outcome were plain strings.
    #[derive(Serialize)]
    struct OldRow<'a> {
        id: u64,
        event_key: &'a str,
        rule: &'a str,
        action: u32,
        kind: &'a str,
        state: DeliveryState,
        attempts: u32,
        due_at_ms: u64,
        created_ms: u64,
        lease_until_ms: Option<u64>,
        last_error: Option<&'a str>,
        on_failure: Option<&'a super::super::types::FailureContext>,
        success: Option<OldAttempt<'a>>,
    }

    #[derive(Serialize)]
    struct OldAttempt<'a> {
        at_ms: u64,
        duration_ms: u64,
        outcome: &'a str,
        status: Option<i32>,
        detail: Option<&'a str>,
    }

    #[test]
    fn typed_words_keep_the_string_rows() {
        let old = OldRow {
            id: 9,
            event_key: "01J0000000000000000000000",
            rule: "deploy",
            action: 2,
            kind: "shell",
            state: DeliveryState::Done,
            attempts: 2,
            due_at_ms: 5_000,
            created_ms: 1_000,
            lease_until_ms: None,
            last_error: Some("exit code 1"),
            on_failure: None,
            success: Some(OldAttempt {
                at_ms: 6_000,
                duration_ms: 12,
                outcome: "ok",
                status: Some(0),
                detail: None,
            }),
        };
        let old_row = postcard::to_extend(&old, vec![DELIVERY_POSTCARD]).expect("encode");
        let rec = decode_delivery(&old_row).expect("an old row reads");
        assert_eq!(rec.kind, ActionType::Shell);
        let success = rec.success.as_ref().expect("success");
        assert_eq!(success.outcome, AttemptOutcome::Ok);
        // A layout-3 row reads as an action of the `actions` list with none
        // of the later fields, and is written back in the layout-4 form,
        // which reads as the same record.
        assert_eq!(rec.list, crate::rules::ActionList::Actions);
        assert_eq!((rec.group.as_ref(), rec.cancel.as_ref()), (None, None));
        let new_row = encode_delivery(&rec).expect("encode");
        assert_eq!(new_row.first(), Some(&DELIVERY_POSTCARD_V4));
        assert_eq!(decode_delivery(&new_row).expect("new row"), rec);

        // Attempt rows are JSON with the outcome as a word. Rows written
        // before `dead` became the one word for giving up say `failed`.
        let row = |word: &str| {
            format!(r#"{{"at_ms":1,"duration_ms":2,"outcome":"{word}","status":500,"detail":"x"}}"#)
        };
        for (word, outcome, written) in [
            ("ok", AttemptOutcome::Ok, "ok"),
            ("retry", AttemptOutcome::Retry, "retry"),
            ("dead", AttemptOutcome::Dead, "dead"),
            ("failed", AttemptOutcome::Dead, "dead"),
        ] {
            let a: Attempt = decode(row(word).as_bytes(), "attempt row").expect("old attempt");
            assert_eq!(a.outcome, outcome);
            assert_eq!(serde_json::to_string(&a).expect("json"), row(written));
        }
        let unknown =
            br#"{"at_ms":1,"duration_ms":2,"outcome":"maybe","status":null,"detail":null}"#;
        assert!(decode::<Attempt>(unknown, "attempt row").is_err());
    }
}
