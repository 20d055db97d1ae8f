//! Prometheus metrics, all named `hookrouter_*`.
//!
//! Owns the registry and every metric family: requests by source and status,
//! verification failures by reason, matches by rule, deliveries and attempts
//! by action and outcome, queue depth, ingest and action latency, the last
//! reload, store commit batch sizes, and the store in use with its commit
//! latency and (PostgreSQL) connection pool. Encoding is prometheus-client's; the
//! rest of the crate only calls the `record_*` methods.

use std::fmt;
use std::sync::Mutex;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::rules::ActionType;
use crate::store::{
    AttemptOutcome, BatchStats, COMMIT_LATENCY_BUCKETS, LatencySnapshot, PoolStatus, QueueDepth,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    source: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    source: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    action: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// Group-commit batch sizes, copied from the store's own counters at scrape
/// time, so the store's writer thread never touches the registry.
#[derive(Debug, Default)]
struct BatchCollector {
    stats: Mutex<BatchStats>,
}

impl prometheus_client::collector::Collector for BatchCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = self.stats.lock().map(|s| *s).unwrap_or_default();
        let mut buckets: Vec<(f64, u64)> = BatchStats::BUCKETS
            .iter()
            .zip(stats.histogram.iter())
            .map(|(b, n)| (*b as f64, *n))
            .collect();
        buckets.push((f64::INFINITY, stats.histogram.last().copied().unwrap_or(0)));
        let metric = encoder.encode_descriptor(
            "hookrouter_store_commit_batch_size",
            "Requests and other writes per fsync'd store transaction",
            None,
            MetricType::Histogram,
        )?;
        let mut metric = metric;
        metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            stats.commands as f64,
            stats.transactions,
            &buckets,
            None,
        )?;
        let failed = Counter::<u64>::default();
        failed.inc_by(stats.failed_transactions);
        let enc = encoder.encode_descriptor(
            "hookrouter_store_failed_transactions",
            "Store transactions that failed",
            None,
            MetricType::Counter,
        )?;
        failed.encode(enc)
    }
}

/// The store's engine, commit latency and (PostgreSQL) pool, copied from
/// the store at scrape time like the batch sizes.
#[derive(Debug, Default)]
struct StoreCollector {
    state: Mutex<StoreState>,
}

#[derive(Debug, Default)]
struct StoreState {
    engine: &'static str,
    latency: LatencySnapshot,
    pool: Option<PoolStatus>,
}

impl prometheus_client::collector::Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Ok(state) = self.state.lock() else {
            return Ok(());
        };
        if !state.engine.is_empty() {
            // An OpenMetrics info: the sample is `hookrouter_store_info{engine} 1`.
            encoder
                .encode_descriptor(
                    "hookrouter_store",
                    "The store in use, by engine (redb or postgres)",
                    None,
                    MetricType::Info,
                )?
                .encode_info(&EngineLabels {
                    engine: state.engine.to_owned(),
                })?;
        }
        let l = &state.latency;
        let buckets: Vec<(f64, u64)> = COMMIT_LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(l.buckets.iter().copied())
            .collect();
        encoder
            .encode_descriptor(
                "hookrouter_store_commit_seconds",
                "Time from handing an event to the store to its durable commit (or duplicate answer)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                l.sum_seconds,
                l.count,
                &buckets,
                None,
            )?;
        if let Some(pool) = state.pool {
            for (name, help, v) in [
                (
                    "hookrouter_store_pool_max_size",
                    "PostgreSQL: the most connections the pool opens",
                    pool.max_size,
                ),
                (
                    "hookrouter_store_pool_size",
                    "PostgreSQL: connections open now",
                    pool.size,
                ),
                (
                    "hookrouter_store_pool_available",
                    "PostgreSQL: open connections idle in the pool",
                    pool.available,
                ),
                (
                    "hookrouter_store_pool_waiting",
                    "PostgreSQL: callers waiting for a connection",
                    pool.waiting,
                ),
            ] {
                let g = Gauge::<i64>::default();
                g.set(i64::try_from(v).unwrap_or(i64::MAX));
                g.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct SharedStore(std::sync::Arc<StoreCollector>);

impl prometheus_client::collector::Collector for SharedStore {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EngineLabels {
    engine: String,
}

/// Every metric of one process.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    verify_failures: Family<FailureLabels, Counter>,
    matched: Family<RuleLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    attempts: Family<ActionLabels, Counter>,
    queue: Family<StateLabels, Gauge>,
    ingest_latency: Histogram,
    action_latency: Family<ActionLabels, Histogram>,
    reloads: Family<ResultLabels, Counter>,
    reload_ok: Gauge,
    reload_time: Gauge,
    batches: std::sync::Arc<BatchCollector>,
    store: std::sync::Arc<StoreCollector>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

#[derive(Debug)]
struct SharedBatches(std::sync::Arc<BatchCollector>);

impl prometheus_client::collector::Collector for SharedBatches {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.0.encode(encoder)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "hookrouter_requests",
            "Webhook requests by source and response status",
            requests.clone(),
        );
        let verify_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "hookrouter_verification_failures",
            "Requests whose signature did not verify, by source and reason",
            verify_failures.clone(),
        );
        let matched = Family::<RuleLabels, Counter>::default();
        registry.register(
            "hookrouter_events_matched",
            "Accepted events that matched a rule, by rule",
            matched.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "hookrouter_deliveries",
            "Delivery attempts by action type and outcome (ok, retry, dead)",
            deliveries.clone(),
        );
        let attempts = Family::<ActionLabels, Counter>::default();
        registry.register(
            "hookrouter_delivery_attempts",
            "Delivery attempts by action type",
            attempts.clone(),
        );
        let queue = Family::<StateLabels, Gauge>::default();
        registry.register(
            "hookrouter_queue_depth",
            "Deliveries by state (pending, leased, dead, skipped, superseded, cancelled, expired, coalesced, dropped)",
            queue.clone(),
        );
        let ingest_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "hookrouter_ingest_latency_seconds",
            "Time from a request's arrival to its answer",
            ingest_latency.clone(),
        );
        let action_latency = Family::<ActionLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "hookrouter_action_latency_seconds",
            "Time one action attempt took, by action type",
            action_latency.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "hookrouter_reloads",
            "Rule reloads by result (ok, failed)",
            reloads.clone(),
        );
        let reload_ok = Gauge::default();
        registry.register(
            "hookrouter_reload_success",
            "1 if the last rule reload succeeded (or none happened), 0 if it failed.",
            reload_ok.clone(),
        );
        reload_ok.set(1);
        let reload_time = Gauge::default();
        registry.register(
            "hookrouter_reload_timestamp_seconds",
            "Unix time of the last rule load or reload attempt",
            reload_time.clone(),
        );
        let batches = std::sync::Arc::new(BatchCollector::default());
        registry.register_collector(Box::new(SharedBatches(batches.clone())));
        let store = std::sync::Arc::new(StoreCollector::default());
        registry.register_collector(Box::new(SharedStore(store.clone())));
        Metrics {
            registry,
            requests,
            verify_failures,
            matched,
            deliveries,
            attempts,
            queue,
            ingest_latency,
            action_latency,
            reloads,
            reload_ok,
            reload_time,
            batches,
            store,
        }
    }

    pub fn record_request(&self, source: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                source: source.to_owned(),
                status,
            })
            .inc();
        self.ingest_latency.observe(seconds);
    }

    pub fn record_verify_failure(&self, source: &str, reason: &str) {
        self.verify_failures
            .get_or_create(&FailureLabels {
                source: source.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn record_match(&self, rule: &str) {
        self.matched
            .get_or_create(&RuleLabels {
                rule: rule.to_owned(),
            })
            .inc();
    }

    /// One attempt of an `action` delivery, labelled with the word the
    /// store records for it.
    pub fn record_attempt(&self, action: ActionType, outcome: AttemptOutcome, seconds: f64) {
        let action = action.as_str().to_owned();
        self.attempts
            .get_or_create(&ActionLabels {
                action: action.clone(),
            })
            .inc();
        self.action_latency
            .get_or_create(&ActionLabels {
                action: action.clone(),
            })
            .observe(seconds);
        self.deliveries
            .get_or_create(&DeliveryLabels {
                action,
                outcome: outcome.as_str().to_owned(),
            })
            .inc();
    }

    pub fn record_reload(&self, ok: bool, unix_seconds: i64) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
        self.reload_ok.set(i64::from(ok));
        self.reload_time.set(unix_seconds);
    }

    pub fn set_queue_depth(&self, depth: &QueueDepth) {
        for (state, n) in [
            ("pending", depth.pending),
            ("leased", depth.leased),
            ("dead", depth.dead),
            ("skipped", depth.skipped),
            ("superseded", depth.superseded),
            ("cancelled", depth.cancelled),
            ("expired", depth.expired),
            ("coalesced", depth.coalesced),
            ("dropped", depth.dropped),
        ] {
            self.queue
                .get_or_create(&StateLabels {
                    state: state.to_owned(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn set_batches(&self, stats: &BatchStats) {
        if let Ok(mut s) = self.batches.stats.lock() {
            *s = *stats;
        }
    }

    /// The store's engine, commit latency and pool, as of now.
    pub fn set_store(
        &self,
        engine: &'static str,
        latency: LatencySnapshot,
        pool: Option<PoolStatus>,
    ) {
        if let Ok(mut s) = self.store.state.lock() {
            *s = StoreState {
                engine,
                latency,
                pool,
            };
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
