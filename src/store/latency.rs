//! How long commits take, for `/metrics`, on either engine.
//!
//! Owns a lock-free histogram of the time from handing an event to the store
//! to its durable answer (accepted or duplicate), waiting for the batch
//! included, since that is what a sender waits for. The handle records into
//! it; the metrics module copies a snapshot at scrape time, so the store
//! never touches the registry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 0.5 ms doubling to about 8 s.
pub const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
    4.096, 8.192,
];

/// Commit latencies recorded since the store opened.
#[derive(Debug, Default)]
pub struct CommitLatency {
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// One more than `BUCKETS`: the last counts what is above every bound.
    buckets: [AtomicU64; 16],
}

/// A copy of [`CommitLatency`]: per-bucket (not cumulative) counts.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySnapshot {
    pub count: u64,
    pub sum_seconds: f64,
    pub buckets: [u64; 16],
}

impl CommitLatency {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = self.buckets.get(slot) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            buckets: self.buckets.each_ref().map(|b| b.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_latency_lands_in_its_bucket() {
        let l = CommitLatency::default();
        l.observe(Duration::from_micros(300));
        l.observe(Duration::from_millis(3));
        l.observe(Duration::from_secs(60));
        let s = l.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[3], 1, "3 ms is under 4 ms");
        assert_eq!(s.buckets[15], 1, "a minute is above every bound");
        assert!((s.sum_seconds - 60.0033).abs() < 1e-6, "{}", s.sum_seconds);
    }
}
