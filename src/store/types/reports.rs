//! What the store's read side hands back: an event or delivery with its
//! history for inspection, a line of the event list, delivery counts by
//! state (per event and store-wide), and the statistics of `prune` and of
//! the writer's group commits.

use serde::{Deserialize, Serialize};

use super::{Attempt, DedupKey, DeliveryRecord, DeliveryState};
use crate::event::Event;

/// An event with all its deliveries and their attempts, for inspection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDetail {
    pub key: String,
    pub received_ms: u64,
    /// Shown split, never in its stored form, whose NUL separator reads as
    /// `\u0000` in JSON.
    pub dedup: Option<DedupKey>,
    pub event: Event,
    /// In id (creation) order.
    pub deliveries: Vec<DeliveryDetail>,
}

/// A delivery with its attempts, oldest attempt first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub record: DeliveryRecord,
    /// Every attempt, oldest first. Named apart from the record's
    /// `attempts` count, which the flattened record already carries.
    pub history: Vec<Attempt>,
}

/// One line of the event list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    pub key: String,
    /// The provider's event id.
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub provider: String,
    pub received_at: String,
    pub received_ms: u64,
    pub deliveries: DeliveryCounts,
}

/// Deliveries of one event by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCounts {
    pub pending: u32,
    pub leased: u32,
    pub done: u32,
    pub dead: u32,
    #[serde(default)]
    pub skipped: u32,
    #[serde(default)]
    pub superseded: u32,
    #[serde(default)]
    pub cancelled: u32,
    #[serde(default)]
    pub expired: u32,
    #[serde(default)]
    pub coalesced: u32,
    #[serde(default)]
    pub dropped: u32,
}

impl DeliveryCounts {
    /// The counter of `state`.
    pub fn slot(&mut self, state: DeliveryState) -> &mut u32 {
        match state {
            DeliveryState::Pending => &mut self.pending,
            DeliveryState::Leased => &mut self.leased,
            DeliveryState::Done => &mut self.done,
            DeliveryState::Dead => &mut self.dead,
            DeliveryState::Skipped => &mut self.skipped,
            DeliveryState::Superseded => &mut self.superseded,
            DeliveryState::Cancelled => &mut self.cancelled,
            DeliveryState::Expired => &mut self.expired,
            DeliveryState::Coalesced => &mut self.coalesced,
            DeliveryState::Dropped => &mut self.dropped,
        }
    }
}

/// Deliveries in the whole store by state. `pending` includes retries whose
/// due time is still in the future.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    pub pending: u64,
    pub leased: u64,
    pub done: u64,
    pub dead: u64,
    #[serde(default)]
    pub skipped: u64,
    #[serde(default)]
    pub superseded: u64,
    #[serde(default)]
    pub cancelled: u64,
    #[serde(default)]
    pub expired: u64,
    #[serde(default)]
    pub coalesced: u64,
    #[serde(default)]
    pub dropped: u64,
}

impl QueueDepth {
    /// The count of `state`.
    pub fn get(&self, state: DeliveryState) -> u64 {
        match state {
            DeliveryState::Pending => self.pending,
            DeliveryState::Leased => self.leased,
            DeliveryState::Done => self.done,
            DeliveryState::Dead => self.dead,
            DeliveryState::Skipped => self.skipped,
            DeliveryState::Superseded => self.superseded,
            DeliveryState::Cancelled => self.cancelled,
            DeliveryState::Expired => self.expired,
            DeliveryState::Coalesced => self.coalesced,
            DeliveryState::Dropped => self.dropped,
        }
    }
}

/// What one `prune` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneStats {
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
    pub dedup_keys: u64,
    /// Write transactions used; each one is bounded so other writers wait
    /// for at most one chunk.
    pub chunks: u64,
}

impl PruneStats {
    pub(crate) fn add(&mut self, other: &PruneStats) {
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.attempts += other.attempts;
        self.dedup_keys += other.dedup_keys;
        self.chunks += other.chunks;
    }
}

/// Snapshot of group-commit statistics, for metrics.
///
/// `histogram[i]` counts committed write transactions that carried at most
/// `BatchStats::BUCKETS[i]` commands (and more than the previous bound); the
/// last slot counts larger ones. Buckets are not cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStats {
    /// Write transactions committed by the writer thread.
    pub transactions: u64,
    /// Commands answered by those transactions.
    pub commands: u64,
    /// Write transactions that failed to apply or commit.
    pub failed_transactions: u64,
    /// Largest batch seen.
    pub max_batch: u64,
    pub histogram: [u64; 8],
}

impl BatchStats {
    /// Upper bounds of the histogram buckets, in commands per transaction.
    pub const BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 64, 256];
}
