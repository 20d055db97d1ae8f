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
use crate::rules::{ActionList, ActionRef, ActionType, OnBusy};

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
    concurrent_commits_answer_as_if_committed_one_at_a_time,
    lease_then_finish,
    retry_waits_for_its_due_time,
    replay_runs_again,
    prune_removes_finished_events,
    cancel_ends_waiting_and_marks_running,
    reply_is_kept_with_its_event,
    queue_group_runs_in_arrival_order_and_other_keys_in_parallel,
    replace_keeps_only_the_newest_waiting_member,
    on_busy_cancel_stops_the_running_member_and_runs_the_new_one_next,
    skip_records_the_new_member_skipped,
    then_children_exist_iff_the_success_is_recorded,
    cancel_by_group_key_ends_waiting_marks_running_and_reacts_once,
    a_delivery_not_started_in_time_expires_with_one_on_failure,
    a_delivery_that_started_in_time_does_not_expire,
    a_group_key_that_did_not_render_makes_a_dead_delivery_with_on_failure,
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
        reply: None,
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

async fn reply_is_kept_with_its_event(e: Engine) {
    let s = e.store();
    let now = clock::now_ms();
    let reply = Reply {
        status: 200,
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: r#"{"text":"On it é"}"#.to_owned(),
    };
    let mut answered = new_event("answered", now, 1);
    answered.reply = Some(reply.clone());
    let (key, _) = accepted(s, answered).await;
    let (plain, _) = accepted(s, new_event("plain", now, 1)).await;
    // What a duplicate of each is answered with, from the store.
    let mut again = new_event("answered", now + 1, 1);
    again.reply = Some(Reply {
        body: "rendered again".to_owned(),
        ..reply.clone()
    });
    match s.commit(again).await.expect("commit") {
        Committed::Duplicate { key: first } => {
            assert_eq!(s.reply_of(&first).await.expect("reply"), Some(reply));
        }
        other => panic!("expected duplicate, got {other:?}"),
    }
    assert_eq!(s.reply_of(&plain).await.expect("reply"), None);
    assert_eq!(s.reply_of("01NOSUCHEVENT").await.expect("reply"), None);
    // The row with an answer still reads as an event.
    assert_eq!(
        event_of(s, &key).await.expect("stored").event.id,
        "answered"
    );
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

/// Many commits at once, so the committer batches them: retries of one
/// event and a rule-level key shared by every event within a batch. Each
/// answer is what committing them one after the other would give, and each
/// delivery id names that event's delivery.
async fn concurrent_commits_answer_as_if_committed_one_at_a_time(e: Engine) {
    let s = e.store().clone();
    let now = clock::now_ms();
    let shared = |action| NewDelivery {
        dedup_key: Some("same-release".to_owned()),
        ..NewDelivery::new("r", ActionList::Actions, action, ActionType::Shell)
    };
    let mut tries = tokio::task::JoinSet::new();
    for copy in 0..3 {
        for n in 0..30 {
            let s = s.clone();
            let id = format!("ev-{n}");
            let ev = event_with(
                &id,
                now + copy,
                vec![
                    shared(0),
                    NewDelivery::new("plain", ActionList::Actions, 0, ActionType::Shell),
                    shared(1),
                ],
            );
            tries.spawn(async move { (id, s.commit(ev).await.expect("commit")) });
        }
    }
    let mut accepted: BTreeMap<String, (String, Vec<DeliveryId>)> = BTreeMap::new();
    let mut duplicates = Vec::new();
    while let Some(done) = tries.join_next().await {
        match done.expect("task") {
            (id, Committed::Accepted { key, deliveries }) => {
                assert!(
                    accepted.insert(id.clone(), (key, deliveries)).is_none(),
                    "{id} accepted twice"
                );
            }
            (id, Committed::Duplicate { key }) => duplicates.push((id, key)),
        }
    }
    assert_eq!(accepted.len(), 30, "one accepted per event");
    assert_eq!(duplicates.len(), 60);
    for (id, key) in &duplicates {
        assert_eq!(&accepted[id].0, key, "a duplicate of {id} names its event");
    }
    // The rule-level key is fresh for one event only: its rule's two
    // actions both stay there and nowhere else.
    let mut keeping = 0;
    for (id, (key, ids)) in &accepted {
        let detail = event_of(&s, key).await.expect("stored");
        assert_eq!(&detail.event.id, id);
        let mut stored: Vec<_> = detail.deliveries.iter().map(|d| &d.record).collect();
        stored.sort_by_key(|r| r.id);
        let made: Vec<(&str, u32)> = stored.iter().map(|r| (r.rule.as_str(), r.action)).collect();
        if made.len() == 3 {
            keeping += 1;
            assert_eq!(made, [("r", 0), ("plain", 0), ("r", 1)], "{id}");
        } else {
            assert_eq!(made, [("plain", 0)], "{id}");
        }
        let stored_ids: Vec<DeliveryId> = stored.iter().map(|r| r.id).collect();
        assert_eq!(
            ids, &stored_ids,
            "{id}: the answer names its own deliveries"
        );
    }
    assert_eq!(
        keeping, 1,
        "the shared rule-level key kept one event's actions"
    );
    let depth = s.read(|s| s.queue_depth()).await.expect("depth");
    assert_eq!(depth.pending, 29 + 3);
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

// ---- agent controls: groups, cancel, expiry, then: children ----

/// Reactions as a rule with one `on_failure` and one `on_cancel` log
/// action would give them; rule `lane`'s first action has `concurrency`.
/// The redb engine's own tests use it too.
pub(super) struct Reactions {
    pub lane: Option<u32>,
}

impl FollowUps for Reactions {
    fn on_failure(&self, rule: &str, failure: &FailureContext) -> Vec<NewDelivery> {
        vec![NewDelivery {
            on_failure: Some(failure.clone()),
            ..NewDelivery::new(rule, ActionList::OnFailure, 0, ActionType::Log)
        }]
    }
    fn on_cancel(&self, rule: &str, reason: &str) -> Vec<NewDelivery> {
        vec![NewDelivery {
            cancel_reason: Some(reason.to_owned()),
            ..NewDelivery::new(rule, ActionList::OnCancel, 0, ActionType::Log)
        }]
    }
    fn concurrency(&self, action: &ActionRef) -> Option<u32> {
        (action.rule == "lane" && action.list == ActionList::Actions && action.index == 0)
            .then_some(self.lane)
            .flatten()
    }
}

fn with_reactions(s: &Store) {
    s.set_follow_ups(std::sync::Arc::new(Reactions { lane: None }));
}

fn grouped(key: &str, on_busy: OnBusy) -> NewDelivery {
    NewDelivery {
        group: Some(GroupSlot {
            key: key.to_owned(),
            limit: 1,
            on_busy,
        }),
        ..NewDelivery::new("review", ActionList::Actions, 0, ActionType::Shell)
    }
}

fn event_with(id: &str, received_ms: u64, deliveries: Vec<NewDelivery>) -> NewEvent {
    NewEvent {
        deliveries,
        ..new_event(id, received_ms, 0)
    }
}

/// One event with one delivery: its key and the delivery's id.
async fn one(s: &Store, id: &str, at: u64, d: NewDelivery) -> (String, DeliveryId) {
    let (key, ids) = accepted(s, event_with(id, at, vec![d])).await;
    (key, ids[0])
}

/// What a lease at `now` leased, and the running deliveries it said to stop.
async fn leased_ids(s: &Store, now: u64) -> (Vec<DeliveryId>, Vec<DeliveryId>) {
    let l = s.lease(now, 64, 30_000).await.expect("lease");
    (l.leased.iter().map(|l| l.delivery.id).collect(), l.stop)
}

async fn rec(s: &Store, id: DeliveryId) -> DeliveryRecord {
    s.read(|s| s.list_deliveries(None, 10_000))
        .await
        .expect("list")
        .into_iter()
        .find(|r| r.id == id)
        .expect("delivery")
}

/// The deliveries of an event in one of its rule's lists.
async fn of_list(s: &Store, key: &str, list: ActionList) -> Vec<DeliveryRecord> {
    event_of(s, key)
        .await
        .expect("event")
        .deliveries
        .into_iter()
        .map(|d| d.record)
        .filter(|r| r.list == list)
        .collect()
}

async fn done(s: &Store, id: DeliveryId) {
    s.finish(id, ok(clock::now_ms()), Next::Done)
        .await
        .expect("finish");
}

async fn queue_group_runs_in_arrival_order_and_other_keys_in_parallel(e: Engine) {
    let s = e.store();
    let t = clock::now_ms();
    let (_, a) = one(s, "a", t, grouped("1", OnBusy::Queue)).await;
    let (_, b) = one(s, "b", t + 1, grouped("1", OnBusy::Queue)).await;
    let (_, c) = one(s, "c", t + 2, grouped("2", OnBusy::Queue)).await;
    assert_eq!(leased_ids(s, t + 1_000).await, (vec![a, c], vec![]));
    // B waits, counted pending but not due: nothing is due but the leases'
    // expiry.
    assert_eq!(rec(s, b).await.state, DeliveryState::Pending);
    assert_eq!(s.read(|s| s.queue_depth()).await.expect("depth").pending, 1);
    let next = s.read(|s| s.next_due_ms()).await.expect("next");
    assert!(next.is_some_and(|n| n > t + 10_000), "{next:?}");
    assert_eq!(leased_ids(s, t + 2_000).await, (vec![], vec![]));
    // A newer member arriving while B waits queues behind it.
    let (_, d) = one(s, "d", t + 2_000, grouped("1", OnBusy::Queue)).await;
    assert_eq!(leased_ids(s, t + 2_000).await, (vec![], vec![]));
    done(s, a).await;
    assert_eq!(leased_ids(s, t + 2_200).await, (vec![b], vec![]));
    done(s, b).await;
    assert_eq!(leased_ids(s, t + 2_400).await, (vec![d], vec![]));
}

async fn replace_keeps_only_the_newest_waiting_member(e: Engine) {
    let s = e.store();
    let t = clock::now_ms();
    let (_, a) = one(s, "a", t, grouped("1", OnBusy::Replace)).await;
    assert_eq!(leased_ids(s, t).await.0, vec![a]);
    let (_, b) = one(s, "b", t + 1, grouped("1", OnBusy::Replace)).await;
    let (_, c) = one(s, "c", t + 2, grouped("1", OnBusy::Replace)).await;
    let (_, d) = one(s, "d", t + 3, grouped("1", OnBusy::Replace)).await;
    assert_eq!(leased_ids(s, t + 1_000).await, (vec![], vec![]));
    assert_eq!(rec(s, b).await.state, DeliveryState::Superseded);
    assert_eq!(rec(s, c).await.state, DeliveryState::Superseded);
    assert_eq!(rec(s, d).await.state, DeliveryState::Pending);
    assert_eq!(rec(s, a).await.state, DeliveryState::Leased);
    assert_eq!(
        s.read(|s| s.queue_depth()).await.expect("depth").superseded,
        2
    );
    done(s, a).await;
    assert_eq!(leased_ids(s, t + 1_200).await.0, vec![d]);
}

async fn on_busy_cancel_stops_the_running_member_and_runs_the_new_one_next(e: Engine) {
    let s = e.store();
    with_reactions(s);
    let t = clock::now_ms();
    let (a_key, a) = one(s, "a", t, grouped("1", OnBusy::Cancel)).await;
    assert_eq!(leased_ids(s, t).await.0, vec![a]);
    let (_, b) = one(s, "b", t + 1, grouped("1", OnBusy::Cancel)).await;
    let (_, c) = one(s, "c", t + 2, grouped("1", OnBusy::Cancel)).await;
    // B asks A to stop and waits; C asks again (A is marked already) and
    // supersedes B.
    assert_eq!(leased_ids(s, t + 1_000).await, (vec![], vec![a]));
    assert!(rec(s, a).await.cancel.is_some());
    assert_eq!(rec(s, b).await.state, DeliveryState::Superseded);
    // A's attempt ends (even "ok", with a then: child): it is cancelled,
    // and the child is not created.
    let child = NewDelivery {
        parent: Some(a),
        then: vec![0],
        ..NewDelivery::new("review", ActionList::Actions, 0, ActionType::Log)
    };
    let made = s
        .finish_with(a, ok(clock::now_ms()), Next::Done, vec![child])
        .await
        .expect("finish");
    assert!(made.is_empty());
    let ra = rec(s, a).await;
    assert_eq!((ra.state, ra.attempts), (DeliveryState::Cancelled, 1));
    let on_cancel = of_list(s, &a_key, ActionList::OnCancel).await;
    assert_eq!(on_cancel.len(), 1, "on_cancel once for the event");
    assert!(on_cancel[0].cancel_reason.is_some());
    // The newest member runs next, and so does the on_cancel reaction.
    assert_eq!(leased_ids(s, t + 1_200).await.0, vec![c, on_cancel[0].id]);
}

async fn skip_records_the_new_member_skipped(e: Engine) {
    let s = e.store();
    let t = clock::now_ms();
    let (_, a) = one(s, "a", t, grouped("1", OnBusy::Skip)).await;
    assert_eq!(leased_ids(s, t).await.0, vec![a]);
    let (_, b) = one(s, "b", t + 1, grouped("1", OnBusy::Skip)).await;
    assert_eq!(leased_ids(s, t + 1_000).await, (vec![], vec![]));
    assert_eq!(rec(s, b).await.state, DeliveryState::Skipped);
    done(s, a).await;
    assert!(leased_ids(s, t + 1_200).await.0.is_empty());
    assert_eq!(s.read(|s| s.queue_depth()).await.expect("depth").skipped, 1);
}

async fn then_children_exist_iff_the_success_is_recorded(e: Engine) {
    let s = e.store();
    let t = clock::now_ms();
    let (key, ids) = accepted(s, new_event("a", t, 2)).await;
    assert_eq!(leased_ids(s, t).await.0.len(), 2);
    let child = |parent| NewDelivery {
        parent: Some(parent),
        then: vec![0],
        result: Some(json!({"status": 0, "json": {"result": "hi"}})),
        ..NewDelivery::new("r", ActionList::Actions, 0, ActionType::Http)
    };
    // Success: the child is created in the same commit, with the result.
    let made = s
        .finish_with(ids[0], ok(t), Next::Done, vec![child(ids[0])])
        .await
        .expect("finish");
    assert_eq!(made.len(), 1);
    let c = rec(s, made[0]).await;
    assert_eq!(
        (c.parent, c.then.clone(), c.state),
        (Some(ids[0]), vec![0], DeliveryState::Pending)
    );
    assert_eq!(
        c.result,
        Some(json!({"status": 0, "json": {"result": "hi"}}))
    );
    assert_eq!(c.action_ref().then, vec![0]);
    // A late finish on a finished delivery creates none.
    let late = s
        .finish_with(ids[0], ok(t), Next::Done, vec![child(ids[0])])
        .await
        .expect("late finish");
    assert!(late.is_empty());
    s.finish(ids[1], failed(t), Next::Dead)
        .await
        .expect("finish");
    let detail = event_of(s, &key).await.expect("event");
    assert_eq!(detail.deliveries.len(), 3);
    // The child runs like any delivery.
    assert_eq!(leased_ids(s, clock::now_ms()).await.0, made);
}

async fn cancel_by_group_key_ends_waiting_marks_running_and_reacts_once(e: Engine) {
    let s = e.store();
    with_reactions(s);
    let stopped = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    s.set_stopper({
        let stopped = std::sync::Arc::clone(&stopped);
        std::sync::Arc::new(move |ids: &[DeliveryId]| {
            stopped.lock().expect("lock").extend_from_slice(ids);
        })
    });
    let t = clock::now_ms();
    let (a_key, a) = one(s, "a", t, grouped("7", OnBusy::Queue)).await;
    assert_eq!(leased_ids(s, t).await.0, vec![a]);
    let (b_key, b) = one(s, "b", t + 1, grouped("7", OnBusy::Queue)).await;
    let (_, other) = one(s, "c", t + 2, grouped("8", OnBusy::Queue)).await;
    assert_eq!(leased_ids(s, t + 1_000).await.0, vec![other]);
    let out = s
        .cancel_group("review", "7", "closed")
        .await
        .expect("cancel");
    assert_eq!(out.cancelled, 2);
    assert_eq!(out.stopping, vec![a]);
    assert!(stopped.lock().expect("lock").contains(&a), "told to stop");
    assert_eq!(rec(s, b).await.state, DeliveryState::Cancelled);
    assert_eq!(rec(s, other).await.state, DeliveryState::Leased);
    for key in [&a_key, &b_key] {
        let reactions = of_list(s, key, ActionList::OnCancel).await;
        assert_eq!(reactions.len(), 1, "{reactions:?}");
        assert_eq!(reactions[0].cancel_reason.as_deref(), Some("closed"));
    }
    // Whatever the marked run's attempt did, it ends cancelled.
    done(s, a).await;
    assert_eq!(rec(s, a).await.state, DeliveryState::Cancelled);
    let none = s
        .cancel_group("review", "nope", "closed")
        .await
        .expect("cancel");
    assert_eq!(none, CancelOutcome::default());
    let again = s
        .cancel_event(&a_key, None, "closed")
        .await
        .expect("cancel");
    assert_eq!(again, CancelOutcome::default());
}

async fn a_delivery_not_started_in_time_expires_with_one_on_failure(e: Engine) {
    let s = e.store();
    with_reactions(s);
    let t = clock::now_ms();
    let late = NewDelivery {
        start_within_ms: Some(500),
        ..NewDelivery::new("r", ActionList::Actions, 0, ActionType::Shell)
    };
    let (key, id) = one(s, "a", t, late).await;
    assert_eq!(rec(s, id).await.deadline_ms, Some(t + 500));
    let (leased, _) = leased_ids(s, t + 600).await;
    let r = rec(s, id).await;
    assert_eq!(r.state, DeliveryState::Expired);
    let failures = of_list(s, &key, ActionList::OnFailure).await;
    assert_eq!(failures.len(), 1);
    let failure = failures[0].on_failure.as_ref().expect("context");
    assert_eq!(failure.reason.as_deref(), Some("expired"));
    assert_eq!(failure.delivery, id);
    let (again, _) = leased_ids(s, t + 600).await;
    assert_eq!([leased, again].concat(), vec![failures[0].id]);
    assert_eq!(s.read(|s| s.queue_depth()).await.expect("depth").expired, 1);
}

async fn a_delivery_that_started_in_time_does_not_expire(e: Engine) {
    let s = e.store();
    let t = clock::now_ms();
    let d = NewDelivery {
        start_within_ms: Some(500),
        ..NewDelivery::new("r", ActionList::Actions, 0, ActionType::Shell)
    };
    let (_, id) = one(s, "a", t, d).await;
    assert_eq!(leased_ids(s, t + 400).await.0, vec![id]);
    s.finish(id, failed(t + 450), Next::RetryAt(t + 2_000))
        .await
        .expect("finish");
    // Its retry is due after the deadline; an attempt started in time.
    assert_eq!(leased_ids(s, t + 2_000).await.0, vec![id]);
}

async fn a_group_key_that_did_not_render_makes_a_dead_delivery_with_on_failure(e: Engine) {
    let s = e.store();
    with_reactions(s);
    let bad = NewDelivery {
        error: Some("group key rendered empty".to_owned()),
        ..NewDelivery::new("r", ActionList::Actions, 0, ActionType::Shell)
    };
    let (key, id) = one(s, "a", clock::now_ms(), bad).await;
    let r = rec(s, id).await;
    assert_eq!(r.state, DeliveryState::Dead);
    assert_eq!(r.last_error.as_deref(), Some("group key rendered empty"));
    let failures = of_list(s, &key, ActionList::OnFailure).await;
    assert_eq!(failures.len(), 1);
    assert_eq!(
        failures[0].on_failure.as_ref().map(|f| f.delivery),
        Some(id)
    );
    assert_eq!(s.read(|s| s.queue_depth()).await.expect("depth").dead, 1);
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

    /// The schema's URL, for a connection of the test's own.
    fn url(e: &Engine) -> &str {
        match e {
            Engine::Postgres(db, _) => &db.url,
            Engine::Redb { .. } => unreachable!("PostgreSQL only"),
        }
    }

    fn collecting() -> (Stopper, std::sync::Arc<std::sync::Mutex<Vec<DeliveryId>>>) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stopper: Stopper = {
            let seen = std::sync::Arc::clone(&seen);
            std::sync::Arc::new(move |ids: &[DeliveryId]| {
                seen.lock().expect("lock").extend_from_slice(ids);
            })
        };
        (stopper, seen)
    }

    async fn told(seen: &std::sync::Mutex<Vec<DeliveryId>>, id: DeliveryId) -> bool {
        for _ in 0..100 {
            if seen.lock().expect("lock").contains(&id) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_holds_across_replicas() {
        let Some(e) = postgres(PgOptions::default()).await else {
            return;
        };
        let a = e.store().clone();
        let b = e.other(PgOptions::default()).await;
        let t = clock::now_ms();
        let (_, m1) = one(&a, "m1", t, grouped("1", OnBusy::Queue)).await;
        let (_, m2) = one(&b, "m2", t + 1, grouped("1", OnBusy::Queue)).await;
        assert_eq!(leased_ids(&a, t + 1_000).await.0, vec![m1]);
        assert!(leased_ids(&b, t + 1_000).await.0.is_empty());
        done(&a, m1).await;
        assert_eq!(leased_ids(&b, t + 1_000).await.0, vec![m2]);
    }

    /// Two replicas lease one group (limit 1) as fast as they can: never
    /// two members at once, each once, in order of arrival.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_replicas_admit_a_group_one_at_a_time_in_arrival_order() {
        let Some(e) = postgres(PgOptions::default()).await else {
            return;
        };
        let a = e.store().clone();
        let b = e.other(PgOptions::default()).await;
        let t = clock::now_ms();
        let mut ids = Vec::new();
        for i in 0..24 {
            let s = if i % 2 == 0 { &a } else { &b };
            ids.push(
                one(s, &format!("m{i}"), t + i, grouped("g", OnBusy::Queue))
                    .await
                    .1,
            );
        }
        let started = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let worker = |s: Store| {
            let started = std::sync::Arc::clone(&started);
            async move {
                for _ in 0..2_000 {
                    if started.lock().expect("lock").len() >= 24 {
                        return;
                    }
                    let got = s.lease(t + 1_000, 4, 30_000).await.expect("lease");
                    for l in got.leased {
                        let running = s
                            .read(|s| s.list_deliveries(Some(DeliveryState::Leased), 100))
                            .await
                            .expect("list");
                        assert_eq!(running.len(), 1, "{running:?}");
                        started.lock().expect("lock").push(l.delivery.id);
                        s.finish(l.delivery.id, ok(clock::now_ms()), Next::Done)
                            .await
                            .expect("finish");
                    }
                }
            }
        };
        tokio::join!(worker(a.clone()), worker(b.clone()));
        assert_eq!(*started.lock().expect("lock"), ids);
        let depth = a.read(|s| s.queue_depth()).await.expect("depth");
        assert_eq!((depth.done, depth.pending, depth.leased), (24, 0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrency_holds_across_replicas() {
        let Some(e) = postgres(PgOptions::default()).await else {
            return;
        };
        let a = e.store().clone();
        let b = e.other(PgOptions::default()).await;
        for s in [&a, &b] {
            s.set_follow_ups(std::sync::Arc::new(Reactions { lane: Some(1) }));
        }
        let t = clock::now_ms();
        let lane = || NewDelivery::new("lane", ActionList::Actions, 0, ActionType::Shell);
        let (_, x) = one(&a, "x", t, lane()).await;
        let (_, y) = one(&b, "y", t + 1, lane()).await;
        let (_, z) = one(&a, "z", t + 2, lane()).await;
        assert_eq!(leased_ids(&a, t + 1_000).await.0, vec![x]);
        assert!(leased_ids(&b, t + 1_000).await.0.is_empty());
        // Waiting for the lane is not being due.
        let next = b.read(|s| s.next_due_ms()).await.expect("next");
        assert!(next.is_some_and(|n| n > t + 10_000), "{next:?}");
        done(&a, x).await;
        assert_eq!(leased_ids(&b, t + 1_000).await.0, vec![y]);
        assert!(leased_ids(&a, t + 1_000).await.0.is_empty());
        // A retry frees the slot too, and waits its turn again.
        b.finish(y, failed(clock::now_ms()), Next::RetryAt(t + 1_500))
            .await
            .expect("finish");
        assert_eq!(leased_ids(&a, t + 2_000).await.0, vec![z]);
        done(&a, z).await;
        assert_eq!(leased_ids(&b, t + 2_000).await.0, vec![y]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_on_one_replica_stops_the_run_on_the_other() {
        let Some(e) = postgres(PgOptions::default()).await else {
            return;
        };
        let a = e.store().clone();
        let b = e.other(PgOptions::default()).await;
        let (stopper, seen) = collecting();
        b.set_stopper(stopper);
        // The listener connects in the background; let it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (key, ids) = accepted(&a, new_event("x", clock::now_ms(), 1)).await;
        assert_eq!(leased_ids(&b, clock::now_ms()).await.0, ids);
        let out = a.cancel_event(&key, None, "by hand").await.expect("cancel");
        assert_eq!(out.stopping, ids);
        assert!(told(&seen, ids[0]).await, "b was never told to stop");
        b.finish(ids[0], failed(clock::now_ms()), Next::Dead)
            .await
            .expect("finish");
        let r = rec(&a, ids[0]).await;
        assert_eq!(r.state, DeliveryState::Cancelled);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renewal_tells_a_replica_of_a_cancel_it_missed() {
        let Some(e) = postgres(short()).await else {
            return;
        };
        let s = e.store();
        let (stopper, seen) = collecting();
        s.set_stopper(stopper);
        let (_, ids) = accepted(s, new_event("x", clock::now_ms(), 1)).await;
        assert_eq!(leased_ids(s, clock::now_ms()).await.0, ids);
        // Marked behind the store's back: no notification, only the row.
        let (client, conn) = tokio_postgres::connect(url(&e), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .execute(
                "UPDATE hookrouter_deliveries SET cancel = 'elsewhere' WHERE id = $1",
                &[&i64::try_from(ids[0]).expect("id")],
            )
            .await
            .expect("mark");
        assert!(told(&seen, ids[0]).await, "renewal never said stop");
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

/// Two replicas on one database share bursts and budgets: a burst fed
/// through both coalesces into one waiting delivery, on the newest event,
/// and a drop budget counts the admissions of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_and_budgets_hold_across_replicas() {
    let Some(e) = postgres(PgOptions::default()).await else {
        return;
    };
    let a = e.store().clone();
    let b = e.other(PgOptions::default()).await;
    let t = clock::now_ms() - 60_000;
    let burst = debounced("pr", 1_000, 10_000);
    let mut keys = Vec::new();
    for i in 0..6u64 {
        let s = if i % 2 == 0 { &a } else { &b };
        keys.push(
            accepted(s, paced(&format!("x{i}"), t + i * 100, &burst))
                .await
                .0,
        );
    }
    let last = only_delivery(&a, &keys[5]).await;
    assert_eq!(last.state, DeliveryState::Pending);
    assert_eq!(last.due_at_ms, t + 500 + 1_000);
    assert_eq!(last.debounce.map(|i| (i.count, i.first_ms)), Some((6, t)));
    let depth = b.read(|s| s.queue_depth()).await.expect("depth");
    assert_eq!((depth.pending, depth.coalesced), (1, 5));
    let leased = b.lease(t + 2_000, 10, 30_000).await.expect("lease").leased;
    let ran: Vec<_> = leased.iter().map(|l| l.event.id.as_str()).collect();
    assert_eq!(ran, ["x5"], "one run, on the newest event");

    // Racing commits on both replicas at once: still one count per event.
    let budget = limited(3, 60_000, crate::rules::Over::Drop);
    let send = |s: Store, i: u64| {
        let budget = std::sync::Arc::clone(&budget);
        async move {
            accepted(&s, paced(&format!("y{i}"), t + 1_000 + i, &budget))
                .await
                .0
        }
    };
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(send(s, i)));
    }
    let mut states = Vec::new();
    for task in tasks {
        let key = task.await.expect("join");
        states.push(only_delivery(&a, &key).await.state);
    }
    let kept = states
        .iter()
        .filter(|s| **s == DeliveryState::Pending)
        .count();
    let dropped = states
        .iter()
        .filter(|s| **s == DeliveryState::Dropped)
        .count();
    assert_eq!((kept, dropped), (3, 5), "{states:?}");
}

/// `migrate --from redb` carries bursts and budgets over: a burst waiting
/// in the file goes on in PostgreSQL, and a drop budget keeps its count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_from_redb_keeps_bursts_and_budgets() {
    let Some(admin) = test_pg() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.redb");
    let t = clock::now_ms() - 60_000;
    let burst = debounced("pr", 10_000, 60_000);
    let budget = limited(2, 3_600_000, crate::rules::Over::Drop);
    {
        let s = Store::open(&path).expect("open redb");
        accepted(&s, paced("d1", t, &burst)).await;
        accepted(&s, paced("d2", t + 100, &burst)).await;
        accepted(&s, paced("b1", t, &budget)).await;
        s.close().await.expect("close");
    }
    let db = PgSchema::create(&admin).await;
    pg::import::import_redb(&path, &db.url, Duration::from_secs(10))
        .await
        .expect("import");
    let s = Store::Postgres(
        PgStore::open(&db.url, PgOptions::default())
            .await
            .expect("open postgres"),
    );
    let (k3, _) = accepted(&s, paced("d3", t + 200, &burst)).await;
    let d = only_delivery(&s, &k3).await;
    assert_eq!(d.debounce.map(|i| (i.count, i.first_ms)), Some((3, t)));
    let depth = s.read(|s| s.queue_depth()).await.expect("depth");
    assert_eq!(depth.coalesced, 1, "the copied waiting delivery coalesced");
    let (k, _) = accepted(&s, paced("b2", t + 1, &budget)).await;
    assert_eq!(only_delivery(&s, &k).await.state, DeliveryState::Pending);
    let (k, _) = accepted(&s, paced("b3", t + 2, &budget)).await;
    assert_eq!(
        only_delivery(&s, &k).await.state,
        DeliveryState::Dropped,
        "the count from the file holds"
    );
}
