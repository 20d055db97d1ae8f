//! The store contract, one behaviour at a time, run against both engines:
//! redb always, PostgreSQL when `HOOKROUTER_TEST_PG` names a server (each
//! test in a schema of its own, dropped at the end).
//!
//! Without a server the PostgreSQL half says it skipped, on stderr; with
//! `CI` set it fails instead, so CI never passes without running it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::clock;
use crate::event::Event;
use crate::rules::{ActionList, ActionType};

const WINDOW: u64 = 60_000;

/// The server for PostgreSQL tests, or `None` (after saying so) to skip.
pub(crate) fn test_pg() -> Option<String> {
    match std::env::var("HOOKROUTER_TEST_PG") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but HOOKROUTER_TEST_PG is not: the PostgreSQL tests must run under CI"
            );
            eprintln!("skipped: PostgreSQL not available (set HOOKROUTER_TEST_PG)");
            None
        }
    }
}

/// A schema of its own on the test server, dropped when this is.
pub(crate) struct PgSchema {
    admin: String,
    name: String,
    pub url: String,
}

impl PgSchema {
    pub(crate) async fn create(admin: &str) -> PgSchema {
        let name = format!("hr_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
            .await
            .expect("connect to HOOKROUTER_TEST_PG");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .expect("create schema");
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{sep}options=-csearch_path%3D{name}");
        PgSchema {
            admin: admin.to_owned(),
            name,
            url,
        }
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // A runtime of its own: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// The engine under test, able to open further handles on the same data.
enum Engine {
    Redb {
        store: Store,
        _dir: tempfile::TempDir,
    },
    Postgres(PgSchema, Store),
}

impl Engine {
    fn store(&self) -> &Store {
        match self {
            Engine::Redb { store, .. } | Engine::Postgres(_, store) => store,
        }
    }

    /// Another handle on the same data: a second replica on PostgreSQL; on
    /// redb (one process per file) the same store.
    async fn other(&self, opts: PgOptions) -> Store {
        match self {
            Engine::Redb { store, .. } => store.clone(),
            Engine::Postgres(db, _) => Store::Postgres(
                PgStore::open(&db.url, opts)
                    .await
                    .expect("open a second handle"),
            ),
        }
    }
}

async fn redb() -> Engine {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store.redb")).expect("open redb");
    Engine::Redb { store, _dir: dir }
}

async fn postgres(opts: PgOptions) -> Option<Engine> {
    let admin = test_pg()?;
    let db = PgSchema::create(&admin).await;
    let store = PgStore::open(&db.url, opts).await.expect("open postgres");
    Some(Engine::Postgres(db, Store::Postgres(store)))
}

/// Each behaviour as two tests, `redb` and `postgres`.
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod redb_engine {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::redb().await).await;
            })*
        }
        mod postgres_engine {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(e) = super::postgres(super::PgOptions::default()).await {
                    super::$name(e).await;
                }
            })*
        }
    };
}

both!(
    commit_then_duplicate,
    duplicate_racing_on_two_handles,
    lease_then_finish,
    retry_waits_for_its_due_time,
    replay_runs_again,
    prune_removes_finished_events,
    cancel_ends_waiting_and_marks_running,
);

/// Behaviours the PostgreSQL store does not decide yet (`debounce:`,
/// `limit:`, `delay:`; a server on PostgreSQL refuses rules using them).
/// They are written against the `Store` handle like the others: the
/// PostgreSQL port moves each name from here into `both!` above.
macro_rules! redb_only_until_pg_port {
    ($($name:ident),* $(,)?) => {
        mod redb_engine_bursts {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::redb().await).await;
            })*
        }
    };
}

redb_only_until_pg_port!(
    debounce_repoints_and_coalesces,
    debounce_max_wait_caps_the_due_time,
    drop_is_decided_from_store_counts,
    delay_reserves_spaced_slots,
);

fn event(id: &str) -> Event {
    Event {
        id: id.to_owned(),
        kind: "push".to_owned(),
        source: "gh".to_owned(),
        provider: "github".to_owned(),
        received_at: "2024-01-01T00:00:00Z".to_owned(),
        headers: BTreeMap::new(),
        query: BTreeMap::new(),
        body: json!({ "id": id }).into(),
    }
}

fn new_event(id: &str, received_ms: u64, actions: u32) -> NewEvent {
    NewEvent {
        event: event(id),
        dedup_key: DedupKey::stored("gh", id),
        dedup_until_ms: received_ms + WINDOW,
        received_ms,
        deliveries: (0..actions)
            .map(|i| NewDelivery::new("r", ActionList::Actions, i, ActionType::Shell))
            .collect(),
    }
}

fn ok(at_ms: u64) -> Attempt {
    Attempt {
        at_ms,
        duration_ms: 1,
        outcome: AttemptOutcome::Ok,
        status: Some(0),
        detail: None,
    }
}

fn failed(at_ms: u64) -> Attempt {
    Attempt {
        at_ms,
        duration_ms: 1,
        outcome: AttemptOutcome::Retry,
        status: Some(1),
        detail: Some("exit 1".to_owned()),
    }
}

async fn accepted(store: &Store, ev: NewEvent) -> (String, Vec<DeliveryId>) {
    match store.commit(ev).await.expect("commit") {
        Committed::Accepted { key, deliveries } => (key, deliveries),
        other => panic!("expected accepted, got {other:?}"),
    }
}

async fn event_of(store: &Store, key: &str) -> Option<EventDetail> {
    let key = key.to_owned();
    store.read(move |s| s.get_event(&key)).await.expect("get")
}

async fn commit_then_duplicate(e: Engine) {
    let s = e.store();
    let now = clock::now_ms();
    let (key, ids) = accepted(s, new_event("a", now, 2)).await;
    assert_eq!(ids.len(), 2);
    match s.commit(new_event("a", now + 1, 2)).await.expect("commit") {
        Committed::Duplicate { key: first } => assert_eq!(first, key),
        other => panic!("expected duplicate, got {other:?}"),
    }
    let detail = event_of(s, &key).await.expect("stored");
    assert_eq!(detail.event.id, "a");
    assert_eq!(detail.deliveries.len(), 2);
    assert!(
        detail
            .deliveries
            .iter()
            .all(|d| d.record.state == DeliveryState::Pending)
    );
    let depth = s.read(|s| s.queue_depth()).await.expect("depth");
    assert_eq!(depth.pending, 2);
    let listed = s.read(|s| s.list_events(10, None)).await.expect("list");
    assert_eq!(listed.len(), 1, "the duplicate wrote nothing");
    assert_eq!(listed[0].deliveries.pending, 2);
}

async fn duplicate_racing_on_two_handles(e: Engine) {
    let a = e.store().clone();
    let b = e.other(PgOptions::default()).await;
    let now = clock::now_ms();
    for round in 0..20 {
        let id = format!("race-{round}");
        let (x, y) = tokio::join!(
            a.commit(new_event(&id, now, 1)),
            b.commit(new_event(&id, now, 1))
        );
        let answers = [x.expect("commit a"), y.expect("commit b")];
        let accepted = answers
            .iter()
            .filter(|c| matches!(c, Committed::Accepted { .. }))
            .count();
        assert_eq!(accepted, 1, "round {round}: {answers:?}");
    }
    let depth = a.read(|s| s.queue_depth()).await.expect("depth");
    assert_eq!(depth.pending, 20, "one delivery set per event");
}

async fn lease_then_finish(e: Engine) {
    let s = e.store();
    let now = clock::now_ms();
    let (key, ids) = accepted(s, new_event("l", now, 1)).await;
    let leased = s
        .lease_due(clock::now_ms(), 10, 30_000)
        .await
        .expect("lease");
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].delivery.id, ids[0]);
    assert_eq!(leased[0].event.id, "l");
    let again = s
        .lease_due(clock::now_ms(), 10, 30_000)
        .await
        .expect("lease");
    assert!(again.is_empty(), "a leased delivery is not leased twice");
    s.finish(ids[0], ok(clock::now_ms()), Next::Done)
        .await
        .expect("finish");
    let detail = event_of(s, &key).await.expect("stored");
    let d = &detail.deliveries[0];
    assert_eq!(d.record.state, DeliveryState::Done);
    assert_eq!(d.record.attempts, 1);
    assert_eq!(d.history.len(), 1);
    let depth = s.read(|s| s.queue_depth()).await.expect("depth");
    assert_eq!((depth.pending, depth.leased, depth.done), (0, 0, 1));
}

async fn retry_waits_for_its_due_time(e: Engine) {
    let s = e.store();
    let (key, ids) = accepted(s, new_event("r", clock::now_ms(), 1)).await;
    assert_eq!(
        s.lease_due(clock::now_ms(), 10, 30_000)
            .await
            .expect("lease")
            .len(),
        1
    );
    let due = clock::now_ms() + 60_000;
    s.finish(ids[0], failed(clock::now_ms()), Next::RetryAt(due))
        .await
        .expect("finish");
    let detail = event_of(s, &key).await.expect("stored");
    assert_eq!(detail.deliveries[0].record.state, DeliveryState::Pending);
    assert_eq!(
        detail.deliveries[0].record.last_error.as_deref(),
        Some("exit 1")
    );
    assert!(
        s.lease_due(clock::now_ms(), 10, 30_000)
            .await
            .expect("lease")
            .is_empty()
    );
    let later = s.lease_due(due, 10, 30_000).await.expect("lease");
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].delivery.attempts, 1);
}

async fn replay_runs_again(e: Engine) {
    let s = e.store();
    let (key, ids) = accepted(s, new_event("p", clock::now_ms(), 1)).await;
    s.lease_due(clock::now_ms(), 10, 30_000)
        .await
        .expect("lease");
    s.finish(ids[0], ok(clock::now_ms()), Next::Done)
        .await
        .expect("finish");
    let again = s
        .replay(
            &key,
            vec![NewDelivery::new(
                "r",
                ActionList::Actions,
                0,
                ActionType::Shell,
            )],
        )
        .await
        .expect("replay");
    assert_eq!(again.len(), 1);
    assert_ne!(again[0], ids[0]);
    let leased = s
        .lease_due(clock::now_ms(), 10, 30_000)
        .await
        .expect("lease");
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].delivery.id, again[0]);
    let err = s.replay("nope", Vec::new()).await.expect_err("unknown");
    assert!(err.is_not_found());
}

async fn prune_removes_finished_events(e: Engine) {
    let s = e.store();
    let now = clock::now_ms();
    // Received long enough ago that its dedup window closed.
    let old = now - 2 * WINDOW;
    let (old_key, ids) = accepted(s, new_event("old", old, 1)).await;
    let (open_key, _) = accepted(s, new_event("open", old, 1)).await;
    let leased = s.lease_due(now, 10, 30_000).await.expect("lease");
    assert_eq!(leased.len(), 2);
    s.finish(ids[0], ok(now), Next::Done).await.expect("finish");
    let stats = s.prune(now, 1_000).await.expect("prune");
    assert_eq!(stats.events, 1, "{stats:?}");
    assert!(event_of(s, &old_key).await.is_none());
    assert!(event_of(s, &open_key).await.is_some(), "work left: kept");
    // Its dedup key went with it: the same id is a new event now.
    accepted(s, new_event("old", now, 1)).await;
}

async fn cancel_ends_waiting_and_marks_running(e: Engine) {
    let s = e.store();
    let (running_key, running) = accepted(s, new_event("c1", clock::now_ms(), 1)).await;
    assert_eq!(
        s.lease_due(clock::now_ms(), 10, 30_000)
            .await
            .expect("lease")
            .len(),
        1
    );
    let (waiting_key, _) = accepted(s, new_event("c2", clock::now_ms(), 2)).await;
    let out = s
        .cancel_event(&waiting_key, None, "by hand")
        .await
        .expect("cancel");
    assert_eq!((out.cancelled, out.stopping.len()), (2, 0));
    let out = s
        .cancel_event(&running_key, None, "by hand")
        .await
        .expect("cancel");
    assert_eq!(out.stopping, running);
    // Whatever its attempt did, a marked run ends cancelled.
    s.finish(running[0], ok(clock::now_ms()), Next::Done)
        .await
        .expect("finish");
    for key in [&running_key, &waiting_key] {
        let d = event_of(s, key).await.expect("stored");
        assert!(
            d.deliveries
                .iter()
                .all(|d| d.record.state == DeliveryState::Cancelled
                    && d.record.cancel.as_deref() == Some("by hand")),
            "{d:?}"
        );
    }
    assert!(
        s.lease_due(clock::now_ms(), 10, 30_000)
            .await
            .expect("lease")
            .is_empty()
    );
    let err = s
        .cancel_event("nope", None, "x")
        .await
        .expect_err("unknown");
    assert!(err.is_not_found());
}

/// PostgreSQL only: replicas that share leases.
mod leases_across_replicas {
    use super::*;

    fn short() -> PgOptions {
        PgOptions {
            lease_ttl: Duration::from_millis(600),
            ..PgOptions::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_lease_is_taken_over_and_its_stale_token_cannot_finish() {
        let Some(e) = postgres(short()).await else {
            return;
        };
        let a = e.store().clone();
        let b = e.other(short()).await;
        let (key, ids) = accepted(&a, new_event("t", clock::now_ms(), 1)).await;
        assert_eq!(
            a.lease_due(clock::now_ms(), 10, 0)
                .await
                .expect("lease")
                .len(),
            1
        );
        // While a renews its lease, b finds nothing.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            b.lease_due(clock::now_ms(), 10, 0)
                .await
                .expect("lease")
                .is_empty()
        );
        // a stops renewing (as a dead replica would); its lease runs out.
        a.close().await.expect("close");
        tokio::time::sleep(Duration::from_millis(900)).await;
        let taken = b.lease_due(clock::now_ms(), 10, 0).await.expect("lease");
        assert_eq!(taken.len(), 1, "the expired lease is taken over");
        // a's late finish, with its stale token, changes nothing.
        a.finish(ids[0], ok(clock::now_ms()), Next::Done)
            .await
            .expect("stale finish");
        let d = event_of(&b, &key).await.expect("stored");
        assert_eq!(d.deliveries[0].record.state, DeliveryState::Leased);
        assert_eq!(d.deliveries[0].record.attempts, 0);
        assert!(d.deliveries[0].history.is_empty());
        b.finish(ids[0], ok(clock::now_ms()), Next::Done)
            .await
            .expect("finish");
        let d = event_of(&b, &key).await.expect("stored");
        assert_eq!(d.deliveries[0].record.state, DeliveryState::Done);
        assert_eq!(d.deliveries[0].record.attempts, 1);
    }
}

/// An event with one delivery of rule `r`, paced by `pacing`.
fn paced(id: &str, received_ms: u64, pacing: &std::sync::Arc<Pacing>) -> NewEvent {
    let mut ev = new_event(id, received_ms, 1);
    for d in &mut ev.deliveries {
        d.pacing = Some(std::sync::Arc::clone(pacing));
    }
    ev
}

fn debounced(key: &str, quiet_ms: u64, max_wait_ms: u64) -> std::sync::Arc<Pacing> {
    std::sync::Arc::new(Pacing {
        debounce: Some(DebounceSlot {
            key: format!("r\u{0}{key}"),
            quiet_ms,
            max_wait_ms,
        }),
        ..Pacing::default()
    })
}

fn limited(count: u32, window_ms: u64, over: crate::rules::Over) -> std::sync::Arc<Pacing> {
    std::sync::Arc::new(Pacing {
        limits: vec![LimitSlot {
            key: "n:api\u{0}".to_owned(),
            label: "api".to_owned(),
            count,
            window_ms,
            over,
        }],
        ..Pacing::default()
    })
}

/// The record of an event's only delivery.
async fn only_delivery(s: &Store, key: &str) -> DeliveryRecord {
    let detail = event_of(s, key).await.expect("stored");
    assert_eq!(detail.deliveries.len(), 1);
    detail.deliveries[0].record.clone()
}

async fn debounce_repoints_and_coalesces(e: Engine) {
    let s = e.store();
    let t = clock::now_ms() - 60_000;
    let burst = debounced("7", 1_000, 10_000);
    let (k1, _) = accepted(s, paced("d1", t, &burst)).await;
    let (k2, _) = accepted(s, paced("d2", t + 100, &burst)).await;
    let (k3, ids3) = accepted(s, paced("d3", t + 200, &burst)).await;
    let other = debounced("8", 1_000, 10_000);
    let (k4, _) = accepted(s, paced("d4", t + 250, &other)).await;
    for k in [&k1, &k2] {
        let d = only_delivery(s, k).await;
        assert_eq!(d.state, DeliveryState::Coalesced, "{d:?}");
    }
    let replaced = only_delivery(s, &k2).await.last_error;
    assert_eq!(
        replaced,
        Some(format!("coalesced into delivery {}", ids3[0]))
    );
    let waiting = only_delivery(s, &k3).await;
    assert_eq!(waiting.state, DeliveryState::Pending);
    assert_eq!(waiting.due_at_ms, t + 200 + 1_000, "quiet after the newest");
    assert_eq!(waiting.created_ms, t + 200);
    assert_eq!(
        waiting.debounce,
        Some(DebounceInfo {
            count: 3,
            first_ms: t
        })
    );
    let separate = only_delivery(s, &k4).await;
    assert_eq!(
        separate.state,
        DeliveryState::Pending,
        "another key, another burst"
    );
    assert_eq!(separate.debounce.map(|b| b.count), Some(1));
    let depth = s.read(|s| s.queue_depth()).await.expect("depth");
    assert_eq!((depth.pending, depth.coalesced), (2, 2));

    // Nothing is due before the window closes; then the newest event runs.
    assert!(
        s.lease_due(t + 1_100, 10, 30_000)
            .await
            .expect("lease")
            .is_empty()
    );
    let leased = s.lease_due(t + 1_300, 10, 30_000).await.expect("lease");
    let ids: Vec<_> = leased.iter().map(|l| l.event.id.as_str()).collect();
    assert_eq!(ids, ["d3", "d4"]);
    // Once it started, the next event begins a new burst.
    let (k5, _) = accepted(s, paced("d5", t + 1_400, &burst)).await;
    let fresh = only_delivery(s, &k5).await;
    assert_eq!(
        (fresh.state, fresh.due_at_ms),
        (DeliveryState::Pending, t + 2_400)
    );
    assert_eq!(
        fresh.debounce.map(|b| (b.count, b.first_ms)),
        Some((1, t + 1_400))
    );
    assert_eq!(only_delivery(s, &k3).await.state, DeliveryState::Leased);
}

async fn debounce_max_wait_caps_the_due_time(e: Engine) {
    let s = e.store();
    let t = clock::now_ms() - 60_000;
    let burst = debounced("pr", 1_000, 2_500);
    let mut last = String::new();
    for (i, at) in [0, 900, 1_800, 2_700].into_iter().enumerate() {
        last = accepted(s, paced(&format!("m{i}"), t + at, &burst)).await.0;
        let d = only_delivery(s, &last).await;
        let due = (t + at + 1_000).min(t + 2_500);
        assert_eq!(d.due_at_ms, due, "event {i}");
    }
    let d = only_delivery(s, &last).await;
    assert_eq!(d.debounce.map(|b| b.count), Some(4));
    let depth = s.read(|s| s.queue_depth()).await.expect("depth");
    assert_eq!((depth.pending, depth.coalesced), (1, 3));
}

async fn drop_is_decided_from_store_counts(e: Engine) {
    let s = e.store();
    let t = clock::now_ms() - 60_000;
    let budget = limited(2, 10_000, crate::rules::Over::Drop);
    let mut states = Vec::new();
    for (i, at) in [0, 1, 2, 10_000, 10_000].into_iter().enumerate() {
        let (k, _) = accepted(s, paced(&format!("b{i}"), t + at, &budget)).await;
        states.push(only_delivery(s, &k).await);
    }
    let words: Vec<_> = states.iter().map(|d| d.state.as_str()).collect();
    // The window is rolling: at +10000 the admission at +0 has left it,
    // the one at +1 has not.
    assert_eq!(
        words,
        ["pending", "pending", "dropped", "pending", "dropped"]
    );
    assert_eq!(
        states[2].last_error.as_deref(),
        Some("limit api allows 2 per 10s")
    );
    // Dropped deliveries are due for nothing.
    let leased = s.lease_due(t + 20_000, 10, 30_000).await.expect("lease");
    assert_eq!(leased.len(), 3);
    let depth = s.read(|s| s.queue_depth()).await.expect("depth");
    assert_eq!(depth.dropped, 2);
}

async fn delay_reserves_spaced_slots(e: Engine) {
    let s = e.store();
    let t = clock::now_ms() - 60_000;
    let budget = limited(2, 1_000, crate::rules::Over::Delay);
    let mut due = Vec::new();
    for i in 0..4 {
        let (k, _) = accepted(s, paced(&format!("s{i}"), t, &budget)).await;
        due.push(only_delivery(s, &k).await.due_at_ms - t);
    }
    assert_eq!(due, [0, 500, 1_000, 1_500], "evenly spaced: 2 per second");
    let (k, _) = accepted(s, paced("later", t + 5_000, &budget)).await;
    assert_eq!(
        only_delivery(s, &k).await.due_at_ms,
        t + 5_000,
        "a free slot is now"
    );

    let delayed = std::sync::Arc::new(Pacing {
        delay_ms: 3_000,
        ..Pacing::default()
    });
    let (k, _) = accepted(s, paced("delayed", t, &delayed)).await;
    let d = only_delivery(s, &k).await;
    assert_eq!((d.created_ms, d.due_at_ms), (t, t + 3_000));
}
