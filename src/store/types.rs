//! The store's vocabulary: what callers hand in and what they get back.
//!
//! Owns the plain data types of the store contract (`NewEvent`,
//! `DeliveryRecord`, `Attempt`, ...). They carry no redb types, so a different
//! backend (PostgreSQL, say) can implement the same contract with the same
//! types. It does not own persistence (see `schema` and `writer`) nor the
//! `Store` handle (see the parent module). What the read side hands back
//! (inspection details, list lines, counts and statistics) is in `reports`,
//! re-exported here.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::rules::{ActionList, ActionRef, ActionType, OnBusy, Over};

mod reports;

pub use reports::{
    BatchStats, DeliveryCounts, DeliveryDetail, EventDetail, EventSummary, PruneStats, QueueDepth,
};

/// Identifier of one delivery. Allocated from a counter inside the same write
/// transaction that creates the delivery, so id order is arrival order and ids
/// are never reused, even across restarts.
pub type DeliveryId = u64;

/// Most bytes of an attempt's `detail` (and of a delivery's `last_error`) kept
/// in the store. Action output can be arbitrarily large; the store keeps enough
/// to diagnose, not a log archive.
pub const MAX_DETAIL_BYTES: usize = 4096;

/// An accepted, verified event together with the deliveries its matching rules
/// asked for. Committed atomically: either all of it is durable or none of it.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    /// Event-level dedup key, made by [`DedupKey::stored`]. If the key is
    /// already recorded and unexpired, the commit answers
    /// [`Committed::Duplicate`] and writes nothing. An empty key disables
    /// event-level dedup for this event.
    pub dedup_key: String,
    /// Expiry (unix ms) of the dedup key and of any rule-level dedup keys
    /// recorded by this commit: `received + window`.
    pub dedup_until_ms: u64,
    /// Unix ms at which the request was received. Deliveries become due at this
    /// time, dedup keys are judged unexpired relative to it, and the event key
    /// (a ULID) carries it as its timestamp.
    pub received_ms: u64,
    pub deliveries: Vec<NewDelivery>,
    /// The answer a `respond:` rendered for the sender, kept with the event
    /// so a duplicate is answered with the same bytes (see [`Reply`]).
    pub reply: Option<Reply>,
}

/// The HTTP answer a `respond:` rendered for an event, as sent: stored with
/// the event so that a duplicate gets exactly these bytes, whatever the
/// rules say by then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// A 2xx status.
    pub status: u16,
    /// Rendered header values, in the rule's order.
    pub headers: Vec<(String, String)>,
    /// The rendered body (JSON text for `json:`).
    pub body: String,
}

/// One delivery to create: run action `action` of rule `rule` for the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub rule: String,
    /// Index of the action in the rule's list `list`.
    pub action: u32,
    /// Which of the rule's lists the action is in.
    pub list: ActionList,
    /// For a `then:` child, the path through the nested `then:` lists below
    /// the action at `action`; empty otherwise.
    pub then: Vec<u32>,
    /// Kept only for listing, filtering and metrics.
    pub kind: ActionType,
    /// Optional rule-level dedup key (the rendered `dedup:` template of the
    /// rule). Scoped to the rule: the same key under two rules does not
    /// collide. If the key is already recorded and unexpired, this delivery is
    /// skipped (not created). Otherwise the key is recorded with the event's
    /// `dedup_until_ms`. Several deliveries of one event sharing the key (the
    /// rule's several actions) are all kept: the check is against keys recorded
    /// before this event. Ignored by `replay` and follow-ups, which are
    /// explicit requests to run again.
    pub dedup_key: Option<String>,
    /// Set for deliveries created because another delivery died (or expired).
    pub on_failure: Option<FailureContext>,
    /// The action's group with its key rendered (once, here, at creation).
    pub group: Option<GroupSlot>,
    /// For a `then:` child: the delivery whose success created it.
    pub parent: Option<DeliveryId>,
    /// For a `then:` child: the parent's `result` context.
    pub result: Option<serde_json::Value>,
    /// For an `on_cancel` delivery: why its event was cancelled.
    pub cancel_reason: Option<String>,
    /// The action's `start_within`, in ms: the delivery expires if no attempt
    /// started this long after it was created (for an event's deliveries,
    /// after the event was accepted).
    pub start_within_ms: Option<u64>,
    /// The delivery could not be planned (its group key did not render): it
    /// is created `Dead` with this as its last error, and the rule's
    /// `on_failure` deliveries with it.
    pub error: Option<String>,
    /// The rule's `delay:`, `debounce:` and `limit:` with their keys
    /// rendered, shared by the rule's deliveries of one event: decided by
    /// the store in the event's commit (see [`Pacing`]). Ignored by
    /// `replay` and follow-ups.
    pub pacing: Option<Arc<Pacing>>,
}

/// What the store decides, in the commit of an event, for one matched
/// rule's deliveries: when they are due (`delay`, a slot of an `over:
/// delay` limit, a debounce window), whether they are `dropped` (an `over:
/// drop` limit whose window is full), or whether they take over a burst's
/// waiting deliveries (which become `coalesced`). The counts, slots and
/// bursts live in the store, so a restart resets none of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pacing {
    /// Due this long after the event was accepted.
    pub delay_ms: u64,
    pub debounce: Option<DebounceSlot>,
    /// Checked in order; the deliveries are dropped if any `drop` limit is
    /// full, and then nothing is counted.
    pub limits: Vec<LimitSlot>,
}

impl Pacing {
    /// Whether admitted deliveries are due at once (no delay, debounce or
    /// `over: delay` limit), so ingest may hand them straight to workers.
    pub fn immediate(&self) -> bool {
        self.delay_ms == 0
            && self.debounce.is_none()
            && self.limits.iter().all(|l| l.over == Over::Drop)
    }
}

/// A rule's `debounce:` with its key rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebounceSlot {
    /// The burst: the rule's name and the rendered key, NUL-separated.
    pub key: String,
    pub quiet_ms: u64,
    pub max_wait_ms: u64,
}

/// One of a rule's limits with its key rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSlot {
    /// The counter: the limit's id and the rendered key, NUL-separated.
    pub key: String,
    /// As the rule set names it, for `last_error` (`api`, or `rule#1`).
    pub label: String,
    /// At most `count` per `window_ms`.
    pub count: u32,
    pub window_ms: u64,
    pub over: Over,
}

/// A debounced delivery's burst, as templates see it: `debounce.count`
/// events since `debounce.first_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebounceInfo {
    pub count: u32,
    pub first_ms: u64,
}

impl NewDelivery {
    /// A delivery of the action at `index` in `rule`'s list `list`, with
    /// nothing else set.
    pub fn new(rule: &str, list: ActionList, index: u32, kind: ActionType) -> Self {
        NewDelivery {
            rule: rule.to_owned(),
            action: index,
            list,
            then: Vec::new(),
            kind,
            dedup_key: None,
            on_failure: None,
            group: None,
            parent: None,
            result: None,
            cancel_reason: None,
            start_within_ms: None,
            error: None,
            pacing: None,
        }
    }

    /// The action the delivery will run.
    pub fn action_ref(&self) -> ActionRef {
        ActionRef {
            rule: self.rule.clone(),
            list: self.list,
            index: self.action,
            then: self.then.clone(),
        }
    }
}

/// A delivery's place in a group: the key its action's `group.key` rendered
/// to, and the group's `limit` and `on_busy` as the rule said when the
/// delivery was created (a reload does not change a waiting delivery's
/// terms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSlot {
    pub key: String,
    pub limit: u32,
    #[serde(with = "on_busy_word")]
    pub on_busy: OnBusy,
}

/// What the store asks the running rules for when it decides, inside a
/// transaction, that a rule's reaction is due: the rule's `on_failure`
/// deliveries for a delivery that expired or could not be planned, and its
/// `on_cancel` deliveries for a cancelled event. The store knows no rules;
/// the dispatcher installs an implementation ([`crate::store::Store::set_follow_ups`]).
pub trait FollowUps: Send + Sync {
    /// The `on_failure` deliveries of `rule`, each carrying `failure`.
    fn on_failure(&self, rule: &str, failure: &FailureContext) -> Vec<NewDelivery>;
    /// The `on_cancel` deliveries of `rule`, each carrying `reason`.
    fn on_cancel(&self, rule: &str, reason: &str) -> Vec<NewDelivery>;
    /// The action's `concurrency:` now. The redb engine leaves it to the
    /// dispatcher's lanes (one process); the PostgreSQL one holds it in the
    /// lease, across replicas.
    fn concurrency(&self, _action: &ActionRef) -> Option<u32> {
        None
    }
}

/// Stops the runs of deliveries a cancel marked (see
/// [`crate::store::Store::set_stopper`]).
pub type Stopper = std::sync::Arc<dyn Fn(&[DeliveryId]) + Send + Sync>;

/// What a cancel did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CancelOutcome {
    /// Deliveries cancelled: waiting ones now `cancelled`, plus running ones
    /// marked to stop (they end `cancelled`).
    pub cancelled: u64,
    /// The running deliveries among them; their runs must be stopped.
    pub stopping: Vec<DeliveryId>,
}

/// Answer to [`crate::store::Store::lease`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Leases {
    pub leased: Vec<Leased>,
    /// Running deliveries a group's `on_busy: cancel` marked to stop.
    pub stop: Vec<DeliveryId>,
}

/// [`ActionList`] stored as a word, like [`ActionType`]: postcard would
/// write a variant number, which a reordering would silently change. A
/// `serde(with)` module rather than an impl, so the rule types stay free of
/// storage concerns.
pub(crate) mod list_word {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::rules::ActionList;

    pub fn word(list: ActionList) -> &'static str {
        match list {
            ActionList::Actions => "actions",
            ActionList::OnFailure => "on_failure",
            ActionList::OnCancel => "on_cancel",
        }
    }

    pub fn serialize<S: Serializer>(list: &ActionList, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(word(*list))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ActionList, D::Error> {
        let w = String::deserialize(d)?;
        match w.as_str() {
            "actions" => Ok(ActionList::Actions),
            "on_failure" => Ok(ActionList::OnFailure),
            "on_cancel" => Ok(ActionList::OnCancel),
            _ => Err(serde::de::Error::custom(format!(
                "unknown action list {w:?}"
            ))),
        }
    }
}

/// [`OnBusy`] stored as its YAML word.
pub(crate) mod on_busy_word {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::rules::OnBusy;

    pub fn serialize<S: Serializer>(v: &OnBusy, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match v {
            OnBusy::Queue => "queue",
            OnBusy::Replace => "replace",
            OnBusy::Cancel => "cancel",
            OnBusy::Skip => "skip",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OnBusy, D::Error> {
        let w = String::deserialize(d)?;
        match w.as_str() {
            "queue" => Ok(OnBusy::Queue),
            "replace" => Ok(OnBusy::Replace),
            "cancel" => Ok(OnBusy::Cancel),
            "skip" => Ok(OnBusy::Skip),
            _ => Err(serde::de::Error::custom(format!("unknown on_busy {w:?}"))),
        }
    }
}

/// Why an `on_failure` delivery exists: the delivery that died and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureContext {
    /// The delivery that died.
    pub delivery: DeliveryId,
    /// Its action index in the rule.
    pub action: u32,
    /// How many attempts it made.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// `expired` when the delivery never started within its
    /// `start_within`; `None` when it failed (shown as `failed`). Never
    /// skipped when empty: postcard rows hold every field.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Answer to [`crate::store::Store::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The event is durable under `key` (a new ULID), with the listed
    /// deliveries (rule-level duplicates are not among them).
    Accepted {
        key: String,
        deliveries: Vec<DeliveryId>,
    },
    /// The event-level dedup key was already recorded and unexpired; nothing
    /// was written. `key` is the original event's key. That event may since
    /// have been pruned if the retention is shorter than the dedup window.
    Duplicate { key: String },
}

/// Life cycle of a delivery.
///
/// `Pending` (waiting for its due time, or for room in its group) ->
/// `Leased` (a worker runs it) -> `Pending` again (retry), `Done` or `Dead`.
/// A `Leased` delivery whose lease expired, or that was leased when the
/// process stopped, is due again: the store gives at-least-once execution,
/// never at-most-once. The other final states are decisions that ran
/// nothing (more): `Skipped` (its `when:` was false, or its group was busy
/// with `on_busy: skip`), `Superseded` (a newer member of its group took its
/// place), `Cancelled` (by a `cancel:` action, by hand, or by a newer member
/// with `on_busy: cancel`), `Expired` (not started within
/// `start_within`), `Coalesced` (a newer event of its debounce burst took
/// its place) and `Dropped` (its rule's `over: drop` limit was full).
///
/// New variants go at the end: postcard rows store the variant number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Leased,
    Done,
    Dead,
    Skipped,
    Superseded,
    Cancelled,
    Expired,
    Coalesced,
    Dropped,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Leased => "leased",
            DeliveryState::Done => "done",
            DeliveryState::Dead => "dead",
            DeliveryState::Skipped => "skipped",
            DeliveryState::Superseded => "superseded",
            DeliveryState::Cancelled => "cancelled",
            DeliveryState::Expired => "expired",
            DeliveryState::Coalesced => "coalesced",
            DeliveryState::Dropped => "dropped",
        }
    }

    /// Every state but `Pending` and `Leased` is final: nothing will run the
    /// delivery again unless someone replays the event.
    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryState::Pending | DeliveryState::Leased)
    }

    /// Every state, in the order lists and metrics show them.
    pub const ALL: [DeliveryState; 10] = [
        DeliveryState::Pending,
        DeliveryState::Leased,
        DeliveryState::Done,
        DeliveryState::Dead,
        DeliveryState::Skipped,
        DeliveryState::Superseded,
        DeliveryState::Cancelled,
        DeliveryState::Expired,
        DeliveryState::Coalesced,
        DeliveryState::Dropped,
    ];
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the states (or `failed`, the alias of
/// `dead`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown delivery state {0:?} (expected pending, leased, done, dead, skipped, superseded, cancelled, expired, coalesced or dropped)"
)]
pub struct ParseStateError(pub String);

impl FromStr for DeliveryState {
    type Err = ParseStateError;

    /// Parses a state name, case-insensitively.
    ///
    /// `failed` is an alias of `dead`, the one word for a delivery that gave
    /// up; it is accepted because earlier versions offered it. A delivery
    /// that failed but will retry is `pending` with `attempts > 0` and a
    /// `last_error`; it is not a state of its own, because the store indexes
    /// states and "failed once, retrying" would have to be found by scanning.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pending" => Ok(DeliveryState::Pending),
            "leased" => Ok(DeliveryState::Leased),
            "done" => Ok(DeliveryState::Done),
            "dead" | "failed" => Ok(DeliveryState::Dead),
            "skipped" => Ok(DeliveryState::Skipped),
            "superseded" => Ok(DeliveryState::Superseded),
            "cancelled" | "canceled" => Ok(DeliveryState::Cancelled),
            "expired" => Ok(DeliveryState::Expired),
            "coalesced" => Ok(DeliveryState::Coalesced),
            "dropped" => Ok(DeliveryState::Dropped),
            _ => Err(ParseStateError(s.to_owned())),
        }
    }
}

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    /// Key of the event record (the ULID), not the provider's event id.
    pub event_key: String,
    pub rule: String,
    pub action: u32,
    pub kind: ActionType,
    pub state: DeliveryState,
    /// Attempts recorded so far.
    pub attempts: u32,
    /// When the delivery is (or was last) due, unix ms.
    pub due_at_ms: u64,
    pub created_ms: u64,
    /// While `Leased`: when the lease runs out and the delivery is due again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until_ms: Option<u64>,
    /// Detail of the most recent failed attempt (kept after a later success).
    pub last_error: Option<String>,
    pub on_failure: Option<FailureContext>,
    /// The attempt that made the delivery `Done`. It lives in the row rather
    /// than the `attempts` table so a first-time success writes one table
    /// less; the history lists it last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<Attempt>,
    /// Which of the rule's lists the action is in. Rows written before it
    /// was stored say it through `on_failure`.
    #[serde(default = "actions_list", with = "list_word")]
    pub list: ActionList,
    /// For a `then:` child: its path below the action at `action`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupSlot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<DeliveryId>,
    /// For a `then:` child: the parent's `result` context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Set once a cancel was requested, with its reason. A running delivery
    /// with a request ends `Cancelled` whatever its attempt did, and is never
    /// run again (not after a restart either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
    /// For an `on_cancel` delivery: why its event was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// Unix ms after which a delivery that never started is `Expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// It has waited for room in its group. Its group's `on_busy` applied
    /// when it first became due; afterwards it only waits its turn.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waited: bool,
    /// For a debounced delivery: its burst so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debounce: Option<DebounceInfo>,
}

fn actions_list() -> ActionList {
    ActionList::Actions
}

impl DeliveryRecord {
    /// The action the delivery runs.
    pub fn action_ref(&self) -> ActionRef {
        ActionRef {
            rule: self.rule.clone(),
            list: self.list,
            index: self.action,
            then: self.then.clone(),
        }
    }
}

/// A delivery handed to a worker, with the event it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Leased {
    pub delivery: DeliveryRecord,
    /// Shared by the deliveries of one event.
    pub event: Arc<Event>,
}

/// One execution of a delivery's action, as reported by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at_ms: u64,
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    /// HTTP status or process exit code.
    pub status: Option<i32>,
    /// Error or output excerpt; truncated to [`MAX_DETAIL_BYTES`] when stored.
    pub detail: Option<String>,
}

/// How an attempt ended for its delivery.
///
/// Serialized as its word in every encoding: attempts are stored as JSON and,
/// inside delivery rows, as postcard, which would write a derived enum as a
/// variant number and so misread the rows that hold the word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum AttemptOutcome {
    /// The action succeeded; the delivery is done.
    Ok,
    /// The action failed and will be tried again.
    Retry,
    /// The action failed and will not be tried again: the delivery is dead.
    /// Rows written before this word was settled say `failed`.
    Dead,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Retry => "retry",
            AttemptOutcome::Dead => "dead",
        }
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<AttemptOutcome> for &'static str {
    fn from(o: AttemptOutcome) -> Self {
        o.as_str()
    }
}

/// A word that is not an attempt outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown attempt outcome {0:?} (expected ok, retry or dead)")]
pub struct UnknownOutcome(pub String);

impl FromStr for AttemptOutcome {
    type Err = UnknownOutcome;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ok" => Ok(AttemptOutcome::Ok),
            "retry" => Ok(AttemptOutcome::Retry),
            "dead" | "failed" => Ok(AttemptOutcome::Dead),
            _ => Err(UnknownOutcome(s.to_owned())),
        }
    }
}

impl TryFrom<String> for AttemptOutcome {
    type Error = UnknownOutcome;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Done,
    /// Pending again, due at this unix ms.
    RetryAt(u64),
    Dead,
    /// The action's `when:` was false: nothing ran, and no attempt is
    /// recorded.
    Skipped,
}

/// An event-level dedup key as a person reads it: the source and the
/// provider's event id that make an event a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupKey {
    pub source: String,
    pub id: String,
}

impl DedupKey {
    /// The stored form: source and id joined by a NUL. A source name never
    /// holds one, so the first NUL separates them even if an id taken from a
    /// body does.
    pub fn stored(source: &str, id: &str) -> String {
        format!("{source}\u{0}{id}")
    }

    /// Read a stored key back; `None` for the empty key (event-level dedup
    /// off). A key without the separator is all id.
    pub fn from_stored(key: &str) -> Option<Self> {
        if key.is_empty() {
            return None;
        }
        let (source, id) = key.split_once('\u{0}').unwrap_or(("", key));
        Some(DedupKey {
            source: source.to_owned(),
            id: id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::DedupKey;

    #[test]
    fn dedup_key_reads_back_as_source_and_id() {
        let key = |source: &str, id: &str| {
            Some(DedupKey {
                source: source.to_owned(),
                id: id.to_owned(),
            })
        };
        let stored = DedupKey::stored("github", "demo-2");
        assert_eq!(DedupKey::from_stored(&stored), key("github", "demo-2"));
        // An id from a body may hold the separator; the source never does.
        let odd = DedupKey::stored("stripe", "evt\u{0}1");
        assert_eq!(DedupKey::from_stored(&odd), key("stripe", "evt\u{0}1"));
        assert_eq!(DedupKey::from_stored(""), None);
        assert_eq!(DedupKey::from_stored("bare"), key("", "bare"));
    }
}
