//! Tests of the store contract against real redb files in temp directories.
//!
//! Covers dedup, group commit, leasing, retries, recovery after reopen,
//! replay and prune. Does not cover disk failures (redb gives no hook to
//! inject them through the public file API).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::conformance::Reactions;
use super::ops::{self, KeyGen};
use super::schema;
use super::writer::{self, Op, Out};
use super::*;
use super::{migrate, prune};
use crate::event::Event;
use crate::rules::{ActionList, ActionType};

const WINDOW: u64 = 10_000;
const LEASE: u64 = 30_000;

fn event(id: &str) -> Event {
    Event {
        id: id.to_owned(),
        kind: "push".to_owned(),
        source: "gh".to_owned(),
        provider: "github".to_owned(),
        received_at: "2024-01-01T00:00:00Z".to_owned(),
        headers: BTreeMap::from([("x-github-delivery".to_owned(), id.to_owned())]),
        query: BTreeMap::new(),
        body: json!({ "id": id }).into(),
    }
}

fn delivery(rule: &str, action: u32) -> NewDelivery {
    NewDelivery::new(rule, ActionList::Actions, action, ActionType::Http)
}

fn deduped(rule: &str, action: u32, key: &str) -> NewDelivery {
    NewDelivery {
        dedup_key: Some(key.to_owned()),
        ..delivery(rule, action)
    }
}

fn new_event(id: &str, received_ms: u64, deliveries: Vec<NewDelivery>) -> NewEvent {
    NewEvent {
        event: event(id),
        dedup_key: format!("github\u{0}{id}"),
        dedup_until_ms: received_ms + WINDOW,
        received_ms,
        deliveries,
        reply: None,
    }
}

fn attempt(at_ms: u64, outcome: &str, detail: Option<&str>) -> Attempt {
    Attempt {
        at_ms,
        duration_ms: 5,
        outcome: outcome.parse().expect("outcome"),
        status: Some(if outcome == "ok" { 200 } else { 500 }),
        detail: detail.map(str::to_owned),
    }
}

fn open(dir: &Path) -> Store {
    match Store::open(&dir.join("store.redb")) {
        Ok(s) => s,
        Err(e) => panic!("open: {e}"),
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

async fn accept(store: &Store, ev: NewEvent) -> (String, Vec<DeliveryId>) {
    match store.commit(ev).await.expect("commit") {
        Committed::Accepted { key, deliveries } => (key, deliveries),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

/// Rows in one table, read straight from the file.
fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    store: &Store,
    table: redb::TableDefinition<'_, K, V>,
) -> u64 {
    let txn = store.redb_db().begin_read().expect("read");
    let t = txn.open_table(table).expect("table");
    redb::ReadableTableMetadata::len(&t).expect("len")
}

fn depth(store: &Store) -> QueueDepth {
    store.queue_depth().expect("queue_depth")
}

#[tokio::test]
async fn commit_then_duplicate() {
    let dir = tempdir();
    let store = open(dir.path());
    let (key, ids) = accept(
        &store,
        new_event("a", 1_000, vec![delivery("r", 0), delivery("r", 1)]),
    )
    .await;
    assert_eq!(ids.len(), 2);

    let again = store
        .commit(new_event("a", 2_000, vec![delivery("r", 0)]))
        .await
        .expect("commit");
    assert_eq!(again, Committed::Duplicate { key: key.clone() });
    assert_eq!(store.list_events(10, None).expect("list").len(), 1);
    assert_eq!(depth(&store).pending, 2);

    let detail = store.get_event(&key).expect("get").expect("present");
    assert_eq!(detail.event, event("a"));
    assert_eq!(detail.deliveries.len(), 2);

    // Once the window has passed the same key is a new event.
    let (later, _) = accept(&store, new_event("a", 1_000 + WINDOW, vec![])).await;
    assert_ne!(later, key);
}

#[tokio::test]
async fn empty_dedup_key_disables_event_dedup() {
    let dir = tempdir();
    let store = open(dir.path());
    let mut ev = new_event("a", 1_000, vec![]);
    ev.dedup_key = String::new();
    let (k1, _) = accept(&store, ev.clone()).await;
    let (k2, _) = accept(&store, ev).await;
    assert_ne!(k1, k2);
}

#[tokio::test]
async fn duplicate_after_reopen() {
    let dir = tempdir();
    let key = {
        let store = open(dir.path());
        accept(&store, new_event("a", 1_000, vec![delivery("r", 0)]))
            .await
            .0
    };
    let store = open(dir.path());
    let again = store
        .commit(new_event("a", 1_500, vec![delivery("r", 0)]))
        .await
        .expect("commit");
    assert_eq!(again, Committed::Duplicate { key });
}

#[test]
fn duplicates_within_one_batch() {
    let dir = tempdir();
    let db = redb::Database::create(dir.path().join("raw.redb")).expect("create");
    migrate::prepare(&db, 0).expect("prepare");
    let mut keys = KeyGen::new().expect("random seed");
    let commit = |ev: NewEvent| {
        let row = ops::event_row(&ev).expect("row");
        Op::Commit(ev, row, None)
    };
    let first = commit(new_event("a", 1_000, vec![delivery("r", 0)]));
    let second = commit(new_event("a", 1_001, vec![delivery("r", 0)]));
    let unknown = Op::Finish {
        delivery: 999,
        attempt: attempt(1_000, "ok", None),
        next: Next::Done,
        follow_ups: Vec::new(),
    };
    let done = writer::transact(&db, &[&first, &unknown, &second], &mut keys).expect("transact");
    assert!(done.committed);
    let mut outs = done.outs.into_iter();
    let key = match outs.next() {
        Some(Ok(Out::Committed(Committed::Accepted { key, deliveries }, _))) => {
            assert_eq!(deliveries.len(), 1);
            key
        }
        _ => panic!("first commit should be accepted"),
    };
    // A not-found error is answered alone; the batch carries on.
    match outs.next() {
        Some(Err(StoreError::UnknownDelivery(999))) => {}
        _ => panic!("finish of an unknown delivery should fail alone"),
    }
    match outs.next() {
        Some(Ok(Out::Committed(Committed::Duplicate { key: original }, _))) => {
            assert_eq!(original, key)
        }
        _ => panic!("second commit should be a duplicate"),
    }
}

/// Commands queued while a batch is being applied join its commit rather
/// than waiting for the next one; each is answered for itself.
#[test]
fn commands_arriving_during_a_batch_join_its_commit() {
    let dir = tempdir();
    let db = redb::Database::create(dir.path().join("raw.redb")).expect("create");
    migrate::prepare(&db, 0).expect("prepare");
    let shared = writer::Shared::default();
    let mut keys = KeyGen::new().expect("random seed");
    let commit = |ev: NewEvent| {
        let row = ops::event_row(&ev).expect("row");
        Op::Commit(ev, row, None)
    };
    let (first_reply, first) = tokio::sync::oneshot::channel();
    let batch = vec![(
        commit(new_event("a", 1_000, vec![delivery("r", 0)])),
        first_reply,
    )];
    let mut late = vec![];
    let (reply, answer) = tokio::sync::oneshot::channel();
    late.push((commit(new_event("b", 1_001, vec![delivery("r", 0)])), reply));
    let (reply, duplicate) = tokio::sync::oneshot::channel();
    late.push((commit(new_event("a", 1_002, vec![delivery("r", 0)])), reply));
    let mut refills = 0;
    let mut refill = |batch: &mut writer::Batch| {
        refills += 1;
        batch.append(&mut late);
    };
    writer::process(&db, &shared, &mut keys, batch, &mut refill);
    // Asked again after the late commands were applied, and then it had none.
    assert_eq!(refills, 2);
    let stats = shared.counters.snapshot();
    assert_eq!((stats.transactions, stats.commands), (1, 3));
    let accepted = |answer: Result<Out, StoreError>| match answer {
        Ok(Out::Committed(Committed::Accepted { key, .. }, _)) => key,
        _ => panic!("expected an accepted event"),
    };
    let a = accepted(first.blocking_recv().expect("first answered"));
    accepted(answer.blocking_recv().expect("late answered"));
    match duplicate.blocking_recv().expect("duplicate answered") {
        Ok(Out::Committed(Committed::Duplicate { key }, _)) => assert_eq!(key, a),
        _ => panic!("the late resend should be a duplicate of the first"),
    }
}

#[tokio::test]
async fn rule_level_dedup_skips_a_delivery() {
    let dir = tempdir();
    let store = open(dir.path());
    // A rule with two actions shares one key: both run.
    let (_, first) = accept(
        &store,
        new_event(
            "a",
            1_000,
            vec![
                deduped("r", 0, "pr-1"),
                deduped("r", 1, "pr-1"),
                delivery("s", 0),
            ],
        ),
    )
    .await;
    assert_eq!(first.len(), 3);

    let (key, second) = accept(
        &store,
        new_event(
            "b",
            1_100,
            vec![
                deduped("r", 0, "pr-1"),
                deduped("r", 1, "pr-1"),
                delivery("s", 0),
                // Same key under another rule does not collide.
                deduped("other", 0, "pr-1"),
            ],
        ),
    )
    .await;
    assert_eq!(second.len(), 2);
    let detail = store.get_event(&key).expect("get").expect("present");
    let rules: Vec<&str> = detail
        .deliveries
        .iter()
        .map(|d| d.record.rule.as_str())
        .collect();
    assert_eq!(rules, ["s", "other"]);

    // After the window the rule key is free again.
    let (_, third) = accept(
        &store,
        new_event("c", 1_000 + WINDOW, vec![deduped("r", 0, "pr-1")]),
    )
    .await;
    assert_eq!(third.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_are_batched() {
    let dir = tempdir();
    let store = open(dir.path());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .commit(new_event(
                    &format!("e{i}"),
                    1_000 + i,
                    vec![delivery("r", 0)],
                ))
                .await
        });
    }
    let mut accepted = 0;
    while let Some(res) = tasks.join_next().await {
        match res.expect("task").expect("commit") {
            Committed::Accepted { deliveries, .. } => {
                assert_eq!(deliveries.len(), 1);
                accepted += 1;
            }
            Committed::Duplicate { .. } => panic!("no duplicates expected"),
        }
    }
    assert_eq!(accepted, 200);
    let stats = store.batch_stats();
    assert_eq!(stats.commands, 200);
    assert!(
        stats.transactions < 200,
        "expected group commit, got {stats:?}"
    );
    assert!(stats.max_batch > 1);
    assert_eq!(stats.histogram.iter().sum::<u64>(), stats.transactions);
    assert_eq!(depth(&store).pending, 200);
}

#[tokio::test]
async fn lease_then_finish_done() {
    let dir = tempdir();
    let store = open(dir.path());
    let (key, ids) = accept(&store, new_event("a", 1_000, vec![delivery("r", 0)])).await;

    assert!(
        store
            .lease_due(999, 10, LEASE)
            .await
            .expect("lease")
            .is_empty()
    );
    let leased = store.lease_due(1_000, 10, LEASE).await.expect("lease");
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].delivery.id, ids[0]);
    assert_eq!(leased[0].delivery.state, DeliveryState::Leased);
    assert_eq!(leased[0].delivery.lease_until_ms, Some(1_000 + LEASE));
    assert_eq!(*leased[0].event, event("a"));
    assert_eq!(depth(&store).leased, 1);
    // Leased is not due again while the lease holds.
    assert!(
        store
            .lease_due(2_000, 10, LEASE)
            .await
            .expect("lease")
            .is_empty()
    );

    store
        .finish(ids[0], attempt(1_010, "ok", None), Next::Done)
        .await
        .expect("finish");
    let d = depth(&store);
    assert_eq!((d.pending, d.leased, d.done, d.dead), (0, 0, 1, 0));
    assert_eq!(store.next_due_ms().expect("next"), None);
    let detail = store.get_event(&key).expect("get").expect("present");
    let del = &detail.deliveries[0];
    assert_eq!(del.record.state, DeliveryState::Done);
    assert_eq!(del.record.attempts, 1);
    assert_eq!(del.history, vec![attempt(1_010, "ok", None)]);
}

#[tokio::test]
async fn retry_at_is_not_due_before_its_time() {
    let dir = tempdir();
    let store = open(dir.path());
    let (_, ids) = accept(&store, new_event("a", 1_000, vec![delivery("r", 0)])).await;
    store.lease_due(1_000, 10, LEASE).await.expect("lease");
    store
        .finish(
            ids[0],
            attempt(1_010, "retry", Some("boom")),
            Next::RetryAt(5_000),
        )
        .await
        .expect("finish");
    assert_eq!(store.next_due_ms().expect("next"), Some(5_000));
    assert!(
        store
            .lease_due(4_999, 10, LEASE)
            .await
            .expect("lease")
            .is_empty()
    );
    let again = store.lease_due(5_000, 10, LEASE).await.expect("lease");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.attempts, 1);
    assert_eq!(again[0].delivery.last_error.as_deref(), Some("boom"));
}

#[tokio::test]
async fn dead_and_follow_ups() {
    let dir = tempdir();
    let store = open(dir.path());
    let (key, ids) = accept(&store, new_event("a", 1_000, vec![delivery("r", 0)])).await;
    store.lease_due(1_000, 10, LEASE).await.expect("lease");
    let on_failure = NewDelivery {
        on_failure: Some(FailureContext {
            delivery: ids[0],
            action: 0,
            attempts: 1,
            last_error: Some("boom".to_owned()),
            reason: None,
        }),
        ..NewDelivery::new("r", ActionList::OnFailure, 0, ActionType::Http)
    };
    let follow = store
        .finish_with(
            ids[0],
            attempt(1_010, "failed", Some("boom")),
            Next::Dead,
            vec![on_failure],
        )
        .await
        .expect("finish");
    assert_eq!(follow.len(), 1);
    let d = depth(&store);
    assert_eq!((d.pending, d.dead), (1, 1));

    let dead = store
        .list_deliveries(Some("failed".parse().expect("state")), 10)
        .expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, ids[0]);
    assert_eq!(dead[0].state, DeliveryState::Dead);
    assert_eq!(dead[0].last_error.as_deref(), Some("boom"));

    let pending = store
        .list_deliveries(Some(DeliveryState::Pending), 10)
        .expect("list");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].event_key, key);
    assert_eq!(
        pending[0].on_failure.as_ref().map(|f| f.delivery),
        Some(ids[0])
    );

    // A late finish on a dead delivery records the attempt only.
    let late = store
        .finish_with(
            ids[0],
            attempt(1_020, "ok", None),
            Next::Done,
            vec![delivery("r", 0)],
        )
        .await
        .expect("late finish");
    assert!(late.is_empty());
    let detail = store.get_event(&key).expect("get").expect("present");
    assert_eq!(detail.deliveries[0].record.state, DeliveryState::Dead);
    assert_eq!(detail.deliveries[0].history.len(), 2);

    let err = store
        .finish(12345, attempt(1, "ok", None), Next::Done)
        .await
        .expect_err("unknown delivery");
    assert!(err.is_not_found());
}

#[tokio::test]
async fn leased_deliveries_come_back_after_reopen() {
    let dir = tempdir();
    let ids = {
        let store = open(dir.path());
        let (_, ids) = accept(
            &store,
            new_event("a", 1_000, vec![delivery("r", 0), delivery("r", 1)]),
        )
        .await;
        let leased = store.lease_due(1_000, 10, 3_600_000).await.expect("lease");
        assert_eq!(leased.len(), 2);
        ids
    };
    let before = crate::clock::now_ms();
    let store = open(dir.path());
    let d = depth(&store);
    assert_eq!((d.pending, d.leased), (2, 0));
    let due = store.next_due_ms().expect("next").expect("something due");
    assert!(due >= before);
    let again = store
        .lease_due(crate::clock::now_ms(), 10, LEASE)
        .await
        .expect("lease");
    let got: Vec<DeliveryId> = again.iter().map(|l| l.delivery.id).collect();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn expired_lease_is_due_again() {
    let dir = tempdir();
    let store = open(dir.path());
    let (_, ids) = accept(&store, new_event("a", 1_000, vec![delivery("r", 0)])).await;
    store.lease_due(1_000, 10, 100).await.expect("lease");
    assert_eq!(store.next_due_ms().expect("next"), Some(1_100));
    assert!(
        store
            .lease_due(1_099, 10, 100)
            .await
            .expect("lease")
            .is_empty()
    );
    let again = store.lease_due(1_100, 10, 100).await.expect("lease");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.id, ids[0]);
    assert_eq!(depth(&store).leased, 1);
}

#[tokio::test]
async fn lease_order_is_arrival_order() {
    let dir = tempdir();
    let store = open(dir.path());
    let mut all = Vec::new();
    for i in 0..5 {
        let (_, ids) = accept(
            &store,
            new_event(
                &format!("e{i}"),
                1_000,
                vec![delivery("r", 0), delivery("s", 0)],
            ),
        )
        .await;
        all.extend(ids);
    }
    let mut got = Vec::new();
    loop {
        let batch = store.lease_due(1_000, 3, LEASE).await.expect("lease");
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 3);
        got.extend(batch.iter().map(|l| l.delivery.id));
    }
    assert_eq!(got, all);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn replay_creates_new_pending_deliveries() {
    let dir = tempdir();
    let store = open(dir.path());
    let (key, ids) = accept(&store, new_event("a", 1_000, vec![delivery("r", 0)])).await;
    store.lease_due(1_000, 10, LEASE).await.expect("lease");
    store
        .finish(ids[0], attempt(1_010, "ok", None), Next::Done)
        .await
        .expect("finish");

    let replayed = store
        .replay(&key, vec![deduped("r", 0, "ignored")])
        .await
        .expect("replay");
    assert_eq!(replayed.len(), 1);
    assert!(replayed[0] > ids[0]);
    let detail = store.get_event(&key).expect("get").expect("present");
    assert_eq!(detail.deliveries.len(), 2);
    assert_eq!(detail.deliveries[1].record.state, DeliveryState::Pending);
    assert_eq!(depth(&store).pending, 1);
    let leased = store
        .lease_due(crate::clock::now_ms(), 10, LEASE)
        .await
        .expect("lease");
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].delivery.id, replayed[0]);

    let err = store
        .replay("no-such-event", vec![delivery("r", 0)])
        .await
        .expect_err("unknown event");
    assert!(err.is_not_found());
}

#[tokio::test]
async fn prune_removes_old_finished_events_only() {
    let dir = tempdir();
    let store = open(dir.path());
    let (old_done, ids) = accept(&store, new_event("a", 1_000, vec![delivery("r", 0)])).await;
    let (old_pending, _) = accept(&store, new_event("b", 1_000, vec![delivery("r", 0)])).await;
    let mut recent = new_event("c", 40_000, vec![delivery("r", 0)]);
    recent.dedup_until_ms = 100_000;
    let (recent_key, recent_ids) = accept(&store, recent).await;

    let leased = store.lease_due(1_000, 1, LEASE).await.expect("lease");
    assert_eq!(leased[0].delivery.id, ids[0]);
    store
        .finish(ids[0], attempt(1_010, "ok", None), Next::Done)
        .await
        .expect("finish");
    store.lease_due(40_000, 10, LEASE).await.expect("lease");
    store
        .finish(recent_ids[0], attempt(40_010, "ok", None), Next::Done)
        .await
        .expect("finish");

    let stats = store.prune(50_000, 20_000).await.expect("prune");
    assert_eq!(stats.events, 1);
    assert_eq!(stats.deliveries, 1);
    assert_eq!(stats.attempts, 1);
    // The kept event keeps its (expired, harmless) dedup entry until it goes.
    assert_eq!(stats.dedup_keys, 1);
    assert!(store.get_event(&old_done).expect("get").is_none());
    assert!(store.get_event(&old_pending).expect("get").is_some());
    assert!(store.get_event(&recent_key).expect("get").is_some());
    let d = depth(&store);
    assert_eq!((d.pending, d.leased, d.done), (0, 1, 1));

    // The unexpired dedup key survives the prune.
    let dup = store
        .commit(new_event("c", 50_000, vec![]))
        .await
        .expect("commit");
    assert_eq!(dup, Committed::Duplicate { key: recent_key });
    // The expired ones are gone.
    accept(&store, new_event("a", 50_000, vec![])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prune_works_in_chunks() {
    let dir = tempdir();
    let store = open(dir.path());
    let n = prune::PRUNE_EVENTS_PER_CHUNK as u64 * 2 + 10;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let store = store.clone();
        tasks.spawn(async move {
            store
                .commit(new_event(&format!("e{i}"), 1_000 + i, vec![]))
                .await
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.expect("task").expect("commit");
    }
    let stats = store.prune(1_000_000, 1_000).await.expect("prune");
    assert_eq!(stats.events, n);
    assert_eq!(stats.dedup_keys, n);
    assert!(stats.chunks >= 3, "{stats:?}");
    let left = store.list_events(1000, None).expect("list");
    assert!(
        left.is_empty(),
        "{stats:?} left {} first {:?}",
        left.len(),
        left.first()
    );
}

#[tokio::test]
async fn queue_depth_counts() {
    let dir = tempdir();
    let store = open(dir.path());
    assert_eq!(depth(&store), QueueDepth::default());
    let (_, ids) = accept(
        &store,
        new_event(
            "a",
            1_000,
            vec![
                delivery("r", 0),
                delivery("r", 1),
                delivery("r", 2),
                delivery("r", 3),
            ],
        ),
    )
    .await;
    store.lease_due(1_000, 3, LEASE).await.expect("lease");
    let d = depth(&store);
    assert_eq!((d.pending, d.leased, d.done, d.dead), (1, 3, 0, 0));
    store
        .finish(ids[0], attempt(1_001, "ok", None), Next::Done)
        .await
        .expect("finish");
    store
        .finish(ids[1], attempt(1_001, "failed", None), Next::Dead)
        .await
        .expect("finish");
    let d = depth(&store);
    assert_eq!((d.pending, d.leased, d.done, d.dead), (1, 1, 1, 1));
    assert_eq!(
        store.list_deliveries(None, 10).expect("list").len(),
        4,
        "all deliveries"
    );
    let events = store.list_events(10, None).expect("list");
    assert_eq!(
        events[0].deliveries,
        DeliveryCounts {
            pending: 1,
            leased: 1,
            done: 1,
            dead: 1,
            ..DeliveryCounts::default()
        }
    );
}

#[tokio::test]
async fn list_events_is_newest_first_and_pages() {
    let dir = tempdir();
    let store = open(dir.path());
    let mut keys = Vec::new();
    for i in 0..5 {
        keys.push(
            accept(&store, new_event(&format!("e{i}"), 1_000 + i, vec![]))
                .await
                .0,
        );
    }
    let page = store.list_events(2, None).expect("list");
    let got: Vec<&str> = page.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(got, [keys[4].as_str(), keys[3].as_str()]);
    assert_eq!(page[0].event_id, "e4");
    let next = store.list_events(10, Some(&page[1].key)).expect("list");
    let got: Vec<&str> = next.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(got, [keys[2].as_str(), keys[1].as_str(), keys[0].as_str()]);
}

#[tokio::test]
async fn attempt_detail_is_capped() {
    let dir = tempdir();
    let store = open(dir.path());
    let (key, ids) = accept(&store, new_event("a", 1_000, vec![delivery("r", 0)])).await;
    store.lease_due(1_000, 1, LEASE).await.expect("lease");
    let long = "é".repeat(MAX_DETAIL_BYTES);
    store
        .finish(ids[0], attempt(1_001, "failed", Some(&long)), Next::Dead)
        .await
        .expect("finish");
    let detail = store.get_event(&key).expect("get").expect("present");
    let stored = detail.deliveries[0].history[0]
        .detail
        .as_deref()
        .expect("detail");
    assert!(stored.len() <= MAX_DETAIL_BYTES);
    assert!(stored.len() > MAX_DETAIL_BYTES - 4);
}

#[tokio::test]
async fn notified_after_commit() {
    let dir = tempdir();
    let store = open(dir.path());
    accept(&store, new_event("a", 1_000, vec![delivery("r", 0)])).await;
    // The permit is kept even though nobody was waiting at commit time.
    tokio::time::timeout(Duration::from_secs(5), store.notified())
        .await
        .expect("notified");
}

#[tokio::test]
async fn close_stops_writes_and_releases_the_file() {
    let dir = tempdir();
    let store = open(dir.path());
    let other = store.clone();
    accept(&store, new_event("a", 1_000, vec![])).await;
    store.close().await.expect("close");
    let err = other
        .commit(new_event("b", 1_000, vec![]))
        .await
        .expect_err("closed");
    assert!(matches!(err, StoreError::Closed));
    assert!(err.is_unavailable());
    // Reads still work until the last handle goes.
    assert_eq!(other.list_events(10, None).expect("list").len(), 1);
    drop(store);
    drop(other);
    let store = open(dir.path());
    assert_eq!(store.list_events(10, None).expect("list").len(), 1);
}

#[test]
fn state_names() {
    for (name, state) in [
        ("pending", DeliveryState::Pending),
        ("leased", DeliveryState::Leased),
        ("done", DeliveryState::Done),
        ("dead", DeliveryState::Dead),
        ("failed", DeliveryState::Dead),
        ("DEAD", DeliveryState::Dead),
    ] {
        assert_eq!(name.parse::<DeliveryState>(), Ok(state));
    }
    assert!("bogus".parse::<DeliveryState>().is_err());
    assert_eq!(
        serde_json::to_string(&DeliveryState::Pending).expect("json"),
        "\"pending\""
    );
}

#[tokio::test]
async fn commit_leased_hands_back_leased_deliveries_with_the_event() {
    let dir = tempdir();
    let store = open(dir.path());
    let (committed, leased) = store
        .commit_leased(
            new_event("a", 1_000, vec![delivery("r", 0), delivery("r", 1)]),
            LEASE,
        )
        .await
        .expect("commit");
    let Committed::Accepted { key, deliveries } = committed else {
        panic!("expected Accepted, got {committed:?}");
    };
    assert_eq!(leased.len(), 2);
    assert_eq!(
        leased.iter().map(|l| l.delivery.id).collect::<Vec<_>>(),
        deliveries
    );
    for l in &leased {
        assert_eq!(l.delivery.state, DeliveryState::Leased);
        assert_eq!(l.delivery.lease_until_ms, Some(1_000 + LEASE));
        assert_eq!(l.delivery.event_key, key);
        assert_eq!(*l.event, event("a"));
    }
    // Leased, not queued: the dispatcher's lease finds nothing.
    assert_eq!(depth(&store).leased, 2);
    assert_eq!(depth(&store).pending, 0);
    assert!(
        store
            .lease_due(2_000, 10, LEASE)
            .await
            .expect("lease")
            .is_empty()
    );
    store
        .finish(deliveries[0], attempt(1_010, "ok", None), Next::Done)
        .await
        .expect("finish");
    let d = depth(&store);
    assert_eq!((d.pending, d.leased, d.done), (0, 1, 1));

    // A duplicate creates nothing and hands back nothing.
    let (again, none) = store
        .commit_leased(new_event("a", 2_000, vec![delivery("r", 0)]), LEASE)
        .await
        .expect("commit");
    assert_eq!(again, Committed::Duplicate { key: key.clone() });
    assert!(none.is_empty());

    // The unfinished one is due again after a restart, like any lease.
    store.close().await.expect("close");
    drop(store);
    let store = open(dir.path());
    let d = depth(&store);
    assert_eq!((d.pending, d.leased, d.done), (1, 0, 1));
    let due = store
        .lease_due(u64::MAX / 2, 10, LEASE)
        .await
        .expect("lease");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].delivery.id, deliveries[1]);
}

#[tokio::test]
async fn delivery_ids_stay_unique_across_batches_and_reopen() {
    let dir = tempdir();
    let mut seen = std::collections::HashSet::new();
    for round in 0..2 {
        let store = open(dir.path());
        let commits = (0..20).map(|i| {
            let store = store.clone();
            async move {
                let id = format!("{round}-{i}");
                accept(
                    &store,
                    new_event(&id, 1_000, vec![delivery("r", 0), delivery("r", 1)]),
                )
                .await
                .1
            }
        });
        for ids in futures_join_all(commits).await {
            for id in ids {
                assert!(seen.insert(id), "delivery id {id} handed out twice");
            }
        }
        store.close().await.expect("close");
    }
    let store = open(dir.path());
    let (_, ids) = accept(&store, new_event("after", 1_000, vec![delivery("r", 0)])).await;
    assert!(
        seen.insert(ids[0]),
        "delivery id {} reused after reopen",
        ids[0]
    );
}

/// Runs the futures concurrently on the test runtime, so the writer sees them
/// together and batches them.
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("join"));
    }
    out
}

#[test]
fn event_rows_round_trip_compressed_plain_and_old() {
    let small = new_event("a", 1_000, vec![]);
    let mut large = new_event("b", 1_000, vec![]);
    large.event.body = json!({ "commits": vec!["the same long commit message text"; 100] }).into();
    for ev in [&small, &large] {
        let row = ops::event_row(ev).expect("row");
        let back = schema::decode_event_row(&row).expect("decode");
        assert_eq!(back.event, ev.event);
        assert_eq!(back.dedup_key, ev.dedup_key);
    }
    // A body from a request keeps its text (spacing, key order, a repeated
    // key) in the row, and reads back as the value the rules saw.
    let mut raw = new_event("c", 1_000, vec![]);
    let text = b" {\"z\": [1, 2.5e3, \"\\u00e9\"],\n \"a\": {\"k\": null}, \"a\": true} ";
    raw.event.body = crate::body::parse(None, text).expect("body");
    let row = ops::event_row(&raw).expect("row");
    let back = schema::decode_event_row(&row).expect("decode");
    assert_eq!(back.event, raw.event);
    assert_eq!(back.event.body, json!({"z": [1, 2500.0, "é"], "a": true}));
    assert_eq!((back.received_ms, &back.dedup_key), (1_000, &raw.dedup_key));
    assert!(
        row.windows(text.len()).any(|w| w == text),
        "the body's own text is in the row"
    );

    let plain = ops::event_row(&small).expect("row");
    assert_eq!(plain.first(), Some(&b'{'), "a small row stays JSON");
    let packed = ops::event_row(&large).expect("row");
    let json_len = serde_json::to_vec(&large.event).expect("json").len();
    assert!(
        packed.len() * 4 < json_len,
        "{} vs {json_len}",
        packed.len()
    );
    // A row written before compression existed (plain JSON) still reads.
    let old = serde_json::to_vec(&json!({
        "event": large.event, "received_ms": 1_000, "dedup_key": "k", "dedup_until_ms": 2_000
    }))
    .expect("json");
    assert_eq!(
        schema::decode_event_row(&old).expect("old").event,
        large.event
    );
    // Damage is an error, not a panic or a huge allocation.
    let mut bad = packed.clone();
    bad[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(schema::decode_event_row(&bad).is_err());
    assert!(schema::decode_event_row(&packed[..packed.len() / 2]).is_err());
    assert!(schema::decode_event_row(&[1]).is_err());

    // The delivery header wraps either form.
    for row in [&plain, &packed] {
        let headed = schema::with_deliveries(row, 7..10);
        let back = schema::decode_event_row(&headed).expect("headed");
        assert_eq!(back.first_deliveries, 7..10);
        let keys = schema::decode_event_keys(&headed).expect("keys");
        assert_eq!(
            (keys.dedup_key, keys.dedup_until_ms, keys.first_deliveries),
            (back.dedup_key.clone(), back.dedup_until_ms, 7..10)
        );
        assert_eq!(
            schema::decode_event_row(row)
                .expect("bare")
                .first_deliveries,
            0..0
        );
        assert!(schema::decode_event_row(&headed[..5]).is_err());
    }
}

#[tokio::test]
async fn an_event_lists_its_first_and_later_deliveries() {
    let dir = tempdir();
    let store = open(dir.path());
    let (_, before) = accept(&store, new_event("z", 1_000, vec![delivery("r", 0)])).await;
    let (key, first) = accept(
        &store,
        new_event("a", 1_000, vec![delivery("r", 0), delivery("r", 1)]),
    )
    .await;
    assert!(first[0] > before[0]);
    let later = store
        .replay(&key, vec![delivery("s", 0)])
        .await
        .expect("replay");
    let detail = store.get_event(&key).expect("get").expect("present");
    let ids: Vec<_> = detail.deliveries.iter().map(|d| d.record.id).collect();
    assert_eq!(ids, [first[0], first[1], later[0]]);
    let summary = store.list_events(1, None).expect("list");
    assert_eq!(summary[0].deliveries.pending, 3);

    // The replayed delivery is due at the real clock.
    run_all(&store, crate::clock::now_ms(), "ok", Next::Done).await;
    let stats = store.prune(1_000 + WINDOW, 0).await.expect("prune");
    assert_eq!((stats.events, stats.deliveries), (2, 4));
    assert_eq!(rows(&store, schema::EVENT_DELIVERIES), 0);
}

/// Leases everything due at `now` and finishes each with `outcome`.
async fn run_all(store: &Store, now: u64, outcome: &str, next: Next) -> Vec<DeliveryId> {
    let leased = store.lease_due(now, 100, LEASE).await.expect("lease");
    let mut ids = Vec::new();
    for l in leased {
        let id = l.delivery.id;
        store
            .finish(id, attempt(now + 10, outcome, None), next)
            .await
            .expect("finish");
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn a_success_is_kept_in_the_row_and_counted_done() {
    let dir = tempdir();
    let store = open(dir.path());
    let (key, ids) = accept(&store, new_event("a", 1_000, vec![delivery("r", 0)])).await;
    run_all(&store, 1_000, "retry", Next::RetryAt(2_000)).await;
    run_all(&store, 2_000, "ok", Next::Done).await;

    let detail = store.get_event(&key).expect("get").expect("present");
    let d = &detail.deliveries[0];
    assert_eq!(d.record.attempts, 2);
    let outcomes: Vec<&str> = d.history.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "ok"]);
    assert_eq!(d.record.success.as_ref().map(|a| a.at_ms), Some(2_010));

    assert_eq!(depth(&store).done, 1);
    let done = store
        .list_deliveries(Some(DeliveryState::Done), 10)
        .expect("list");
    assert_eq!(done.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert!(
        store
            .list_deliveries(Some(DeliveryState::Dead), 10)
            .expect("list")
            .is_empty()
    );

    // The count survives a restart and goes down with prune.
    store.close().await.expect("close");
    drop(store);
    let store = open(dir.path());
    assert_eq!(depth(&store).done, 1);
    let stats = store.prune(1_000 + WINDOW, 0).await.expect("prune");
    assert_eq!((stats.events, stats.deliveries, stats.attempts), (1, 1, 2));
    assert_eq!(depth(&store).done, 0);

    // With every row pruned, ids still do not come back, across a restart too.
    store.close().await.expect("close");
    drop(store);
    let store = open(dir.path());
    let (_, next) = accept(&store, new_event("b", 20_000, vec![delivery("r", 0)])).await;
    assert!(next[0] > ids[0], "{next:?} after {ids:?}");
}

#[tokio::test]
async fn prune_takes_rule_level_keys_with_their_event() {
    let dir = tempdir();
    let store = open(dir.path());
    accept(
        &store,
        new_event("a", 1_000, vec![deduped("r", 0, "pr-1"), delivery("s", 0)]),
    )
    .await;
    run_all(&store, 1_000, "ok", Next::Done).await;

    // While the dedup window is open the event stays, whatever its age.
    let stats = store.prune(1_000 + WINDOW - 1, 0).await.expect("prune");
    assert_eq!(stats.events, 0);

    let stats = store.prune(1_000 + WINDOW, 0).await.expect("prune");
    assert_eq!((stats.events, stats.dedup_keys), (1, 2));
    assert_eq!(rows(&store, schema::DEDUP), 0);
    assert_eq!(rows(&store, schema::RULE_DEDUP), 0);
}

#[tokio::test]
async fn a_layout_1_file_is_migrated() {
    let dir = tempdir();
    let path = dir.path().join("store.redb");
    let store = open(dir.path());
    let (key, _) = accept(
        &store,
        new_event("a", 1_000, vec![deduped("r", 0, "pr-1"), delivery("s", 0)]),
    )
    .await;
    let done = run_all(&store, 1_000, "ok", Next::Done).await;
    store.close().await.expect("close");
    drop(store);

    // Rewrite the file into layout 1: a `done` index, a dedup expiry index,
    // no `rule_dedup`.
    {
        let db = redb::Database::open(&path).expect("open raw");
        let txn = db.begin_write().expect("write");
        {
            let mut meta = txn.open_table(schema::META).expect("meta");
            meta.insert(schema::META_SCHEMA, 1).expect("schema");
            let mut index = txn.open_table(schema::v1::DONE).expect("done");
            for id in &done {
                index.insert(*id, ()).expect("insert");
            }
            let dedup = txn.open_table(schema::DEDUP).expect("dedup");
            let mut expiry = txn.open_table(schema::v1::DEDUP_EXPIRY).expect("expiry");
            for item in dedup.iter().expect("iter") {
                let (k, v) = item.expect("item");
                expiry.insert((v.value().1, k.value()), ()).expect("insert");
            }
        }
        txn.delete_table(schema::RULE_DEDUP).expect("drop");
        txn.commit().expect("commit");
    }

    let store = open(dir.path());
    assert_eq!(depth(&store).done, 2);
    let dup = store
        .commit(new_event("a", 2_000, vec![]))
        .await
        .expect("commit");
    assert_eq!(dup, Committed::Duplicate { key });
    let stats = store.prune(1_000 + WINDOW, 0).await.expect("prune");
    assert_eq!((stats.events, stats.dedup_keys), (1, 2));
    assert_eq!(depth(&store).done, 0);
    let txn = store.redb_db().begin_read().expect("read");
    let tables: Vec<String> = txn
        .list_tables()
        .expect("tables")
        .map(|t| redb::TableHandle::name(&t).to_owned())
        .collect();
    assert!(
        !tables.iter().any(|t| t == "done" || t == "dedup_expiry"),
        "{tables:?}"
    );
}

#[test]
fn delivery_rows_round_trip_in_both_forms() {
    let full = DeliveryRecord {
        id: 42,
        event_key: "01J0000000000000000000000".to_owned(),
        rule: "deploy".to_owned(),
        action: 1,
        kind: ActionType::Http,
        state: DeliveryState::Leased,
        attempts: 2,
        due_at_ms: 5_000,
        created_ms: 1_000,
        lease_until_ms: Some(9_000),
        last_error: Some("HTTP 503".to_owned()),
        on_failure: Some(FailureContext {
            delivery: 7,
            action: 0,
            attempts: 3,
            last_error: Some("timeout".to_owned()),
            reason: Some("expired".to_owned()),
        }),
        success: Some(attempt(6_000, "ok", Some("HTTP 200"))),
        list: ActionList::OnFailure,
        then: vec![0, 2],
        group: Some(GroupSlot {
            key: "pr-1".to_owned(),
            limit: 2,
            on_busy: crate::rules::OnBusy::Replace,
        }),
        parent: Some(41),
        result: Some(json!({"status": 0, "json": {"result": "hi"}})),
        cancel: Some("by hand".to_owned()),
        cancel_reason: Some("closed".to_owned()),
        deadline_ms: Some(77),
        waited: true,
        debounce: Some(crate::store::DebounceInfo {
            count: 3,
            first_ms: 900,
        }),
    };
    let bare = DeliveryRecord {
        lease_until_ms: None,
        last_error: None,
        on_failure: None,
        success: None,
        then: Vec::new(),
        group: None,
        parent: None,
        result: None,
        cancel: None,
        cancel_reason: None,
        deadline_ms: None,
        waited: false,
        debounce: None,
        ..full.clone()
    };
    for rec in [&full, &bare] {
        let row = schema::encode_delivery(rec).expect("encode");
        assert_ne!(row.first(), Some(&b'{'), "written in the binary form");
        assert_eq!(&schema::decode_delivery(&row).expect("decode"), rec);
        // A row written as JSON (layout 2) still reads.
        let json = serde_json::to_vec(rec).expect("json");
        assert_eq!(&schema::decode_delivery(&json).expect("json row"), rec);
        // Damage is an error, not a panic.
        assert!(schema::decode_delivery(&row[..row.len() / 2]).is_err());
    }
    assert!(schema::decode_delivery(&[]).is_err());
}

#[tokio::test]
async fn a_layout_2_file_with_json_delivery_rows_opens_and_runs() {
    let dir = tempdir();
    let path = dir.path().join("store.redb");
    let store = open(dir.path());
    let (_, ids) = accept(&store, new_event("a", 1_000, vec![delivery("s", 0)])).await;
    store.close().await.expect("close");
    drop(store);

    // Rewrite the file as layout 2 left it: JSON delivery rows.
    {
        let db = redb::Database::open(&path).expect("open raw");
        let txn = db.begin_write().expect("write");
        {
            let mut meta = txn.open_table(schema::META).expect("meta");
            meta.insert(schema::META_SCHEMA, 2).expect("schema");
            let mut rows = txn.open_table(schema::DELIVERIES).expect("deliveries");
            for id in &ids {
                let rec = schema::load_delivery(&rows, *id)
                    .expect("load")
                    .expect("row");
                let json = serde_json::to_vec(&rec).expect("json");
                rows.insert(*id, json.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    }

    let store = open(dir.path());
    let done = run_all(&store, 2_000, "ok", Next::Done).await;
    assert_eq!(done, ids);
    assert_eq!(depth(&store).done, 1);
    let txn = store.redb_db().begin_read().expect("read");
    let meta = txn.open_table(schema::META).expect("meta");
    assert_eq!(
        meta.get(schema::META_SCHEMA)
            .expect("get")
            .map(|g| g.value()),
        Some(schema::SCHEMA_VERSION)
    );
}

#[tokio::test]
async fn writer_stopped_waits_for_the_writer_and_says_why() {
    let dir = tempdir();
    let store = open(dir.path());
    let running = tokio::time::timeout(Duration::from_millis(100), store.writer_stopped()).await;
    assert!(running.is_err(), "a running writer reported a stop");
    store.close().await.expect("close");
    let why = tokio::time::timeout(Duration::from_secs(5), store.writer_stopped())
        .await
        .expect("no word from a stopped writer");
    assert_eq!(why, "it stopped");
}

// ---- agent controls: groups, cancel, expiry, then: children ----

fn open_with_reactions(dir: &Path) -> Store {
    let store = open(dir);
    store.set_follow_ups(std::sync::Arc::new(Reactions { lane: None }));
    store
}

fn grouped(key: &str, on_busy: crate::rules::OnBusy) -> NewDelivery {
    NewDelivery {
        group: Some(GroupSlot {
            key: key.to_owned(),
            limit: 1,
            on_busy,
        }),
        ..NewDelivery::new("review", ActionList::Actions, 0, ActionType::Shell)
    }
}

fn record(store: &Store, id: DeliveryId) -> DeliveryRecord {
    let txn = store.redb_db().begin_read().expect("read");
    let t = txn.open_table(DELIVERIES).expect("table");
    load_delivery(&t, id).expect("load").expect("row")
}

async fn leased_ids(store: &Store, now: u64) -> (Vec<DeliveryId>, Vec<DeliveryId>) {
    let l = store.lease(now, 64, LEASE).await.expect("lease");
    (l.leased.iter().map(|l| l.delivery.id).collect(), l.stop)
}

async fn one(store: &Store, id: &str, at: u64, d: NewDelivery) -> DeliveryId {
    accept(store, new_event(id, at, vec![d])).await.1[0]
}

/// The deliveries of an event, by list.
fn of_list(store: &Store, key: &str, list: ActionList) -> Vec<DeliveryRecord> {
    store
        .get_event(key)
        .expect("get")
        .expect("event")
        .deliveries
        .into_iter()
        .map(|d| d.record)
        .filter(|r| r.list == list)
        .collect()
}

#[tokio::test]
async fn a_queue_group_runs_in_arrival_order_and_other_keys_in_parallel() {
    use crate::rules::OnBusy::Queue;
    let dir = tempdir();
    let store = open(dir.path());
    let a = one(&store, "a", 1_000, grouped("1", Queue)).await;
    let b = one(&store, "b", 1_001, grouped("1", Queue)).await;
    let c = one(&store, "c", 1_002, grouped("2", Queue)).await;
    assert_eq!(leased_ids(&store, 2_000).await, (vec![a, c], vec![]));
    // B waits, out of the due index but counted pending.
    assert_eq!(record(&store, b).state, DeliveryState::Pending);
    assert_eq!(depth(&store).pending, 1);
    // Nothing is due but A's and C's lease expiry.
    assert_eq!(store.next_due_ms().expect("next"), Some(2_000 + LEASE));
    assert_eq!(leased_ids(&store, 3_000).await, (vec![], vec![]));
    // A newer member arriving while B waits queues behind it.
    let d = one(&store, "d", 3_000, grouped("1", Queue)).await;
    assert_eq!(leased_ids(&store, 3_000).await, (vec![], vec![]));
    store
        .finish(a, attempt(3_100, "ok", None), Next::Done)
        .await
        .expect("finish");
    assert_eq!(leased_ids(&store, 3_200).await, (vec![b], vec![]));
    store
        .finish(b, attempt(3_300, "ok", None), Next::Done)
        .await
        .expect("finish");
    assert_eq!(leased_ids(&store, 3_400).await, (vec![d], vec![]));
}

#[tokio::test]
async fn replace_keeps_only_the_newest_waiting_member() {
    use crate::rules::OnBusy::Replace;
    let dir = tempdir();
    let store = open(dir.path());
    let a = one(&store, "a", 1_000, grouped("1", Replace)).await;
    assert_eq!(leased_ids(&store, 1_000).await.0, vec![a]);
    let b = one(&store, "b", 1_001, grouped("1", Replace)).await;
    let c = one(&store, "c", 1_002, grouped("1", Replace)).await;
    let d = one(&store, "d", 1_003, grouped("1", Replace)).await;
    assert_eq!(leased_ids(&store, 2_000).await, (vec![], vec![]));
    assert_eq!(record(&store, b).state, DeliveryState::Superseded);
    assert_eq!(record(&store, c).state, DeliveryState::Superseded);
    assert_eq!(record(&store, d).state, DeliveryState::Pending);
    assert_eq!(record(&store, a).state, DeliveryState::Leased);
    assert_eq!(depth(&store).superseded, 2);
    store
        .finish(a, attempt(2_100, "ok", None), Next::Done)
        .await
        .expect("finish");
    assert_eq!(leased_ids(&store, 2_200).await.0, vec![d]);
    let listed: Vec<DeliveryId> = store
        .list_deliveries(Some(DeliveryState::Superseded), 10)
        .expect("list")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, vec![c, b]);
}

#[tokio::test]
async fn cancel_stops_the_running_member_and_runs_the_new_one_next() {
    use crate::rules::OnBusy::Cancel;
    let dir = tempdir();
    let store = open_with_reactions(dir.path());
    let (a_key, a_ids) = accept(&store, new_event("a", 1_000, vec![grouped("1", Cancel)])).await;
    let a = a_ids[0];
    assert_eq!(leased_ids(&store, 1_000).await.0, vec![a]);
    let b = one(&store, "b", 1_001, grouped("1", Cancel)).await;
    let c = one(&store, "c", 1_002, grouped("1", Cancel)).await;
    // B asks A to stop and waits; C asks again (A is marked already) and
    // supersedes B.
    let (leased, stop) = leased_ids(&store, 2_000).await;
    assert_eq!((leased, stop), (vec![], vec![a]));
    assert!(record(&store, a).cancel.is_some());
    assert_eq!(record(&store, b).state, DeliveryState::Superseded);
    // A's attempt ends (even "ok", with then: children): it is cancelled,
    // and the children are not created.
    let child = NewDelivery {
        parent: Some(a),
        then: vec![0],
        ..delivery("review", 0)
    };
    let made = store
        .finish_with(a, attempt(2_100, "ok", None), Next::Done, vec![child])
        .await
        .expect("finish");
    assert!(made.is_empty());
    let rec = record(&store, a);
    assert_eq!(rec.state, DeliveryState::Cancelled);
    assert_eq!(rec.attempts, 1, "the attempt stays in the history");
    let on_cancel = of_list(&store, &a_key, ActionList::OnCancel);
    assert_eq!(on_cancel.len(), 1, "on_cancel once for the event");
    assert!(on_cancel[0].cancel_reason.is_some());
    // The newest member runs next, and so does the on_cancel reaction.
    assert_eq!(leased_ids(&store, 2_200).await.0, vec![c, on_cancel[0].id]);
}

#[tokio::test]
async fn skip_records_the_new_member_skipped_and_never_leases_it() {
    use crate::rules::OnBusy::Skip;
    let dir = tempdir();
    let store = open(dir.path());
    let a = one(&store, "a", 1_000, grouped("1", Skip)).await;
    assert_eq!(leased_ids(&store, 1_000).await.0, vec![a]);
    let b = one(&store, "b", 1_001, grouped("1", Skip)).await;
    assert_eq!(leased_ids(&store, 2_000).await, (vec![], vec![]));
    assert_eq!(record(&store, b).state, DeliveryState::Skipped);
    store
        .finish(a, attempt(2_100, "ok", None), Next::Done)
        .await
        .expect("finish");
    assert_eq!(leased_ids(&store, 2_200).await.0, Vec::<DeliveryId>::new());
    assert_eq!(depth(&store).skipped, 1);
}

#[tokio::test]
async fn then_children_exist_iff_the_success_is_recorded() {
    let dir = tempdir();
    let store = open(dir.path());
    let (key, ids) = accept(
        &store,
        new_event("a", 1_000, vec![delivery("r", 0), delivery("r", 1)]),
    )
    .await;
    store.lease_due(1_000, 10, LEASE).await.expect("lease");
    let child = |parent| NewDelivery {
        parent: Some(parent),
        then: vec![0],
        result: Some(json!({"status": 0, "json": {"result": "hi"}})),
        ..delivery("r", 0)
    };
    // Success: the child is created in the same commit, with the result.
    let made = store
        .finish_with(
            ids[0],
            attempt(1_100, "ok", None),
            Next::Done,
            vec![child(ids[0])],
        )
        .await
        .expect("finish");
    assert_eq!(made.len(), 1);
    let c = record(&store, made[0]);
    assert_eq!(
        (c.parent, c.then.clone(), c.state),
        (Some(ids[0]), vec![0], DeliveryState::Pending)
    );
    assert_eq!(
        c.result,
        Some(json!({"status": 0, "json": {"result": "hi"}}))
    );
    assert_eq!(c.action_ref().then, vec![0]);
    // A finish that does not record a success creates nothing: the
    // dispatcher hands children only with `Done`, and a late finish on a
    // finished delivery creates none either.
    let late = store
        .finish_with(
            ids[0],
            attempt(1_200, "ok", None),
            Next::Done,
            vec![child(ids[0])],
        )
        .await
        .expect("late finish");
    assert!(late.is_empty());
    store
        .finish(ids[1], attempt(1_100, "failed", Some("exit 1")), Next::Dead)
        .await
        .expect("finish");
    let detail = store.get_event(&key).expect("get").expect("event");
    assert_eq!(detail.deliveries.len(), 3);
}

#[tokio::test]
async fn a_cancel_request_survives_a_restart_and_the_run_is_never_repeated() {
    let dir = tempdir();
    let (key, a) = {
        let store = open_with_reactions(dir.path());
        let (key, ids) = accept(
            &store,
            new_event("a", 1_000, vec![delivery("r", 0), delivery("r", 1)]),
        )
        .await;
        let l = store.lease_due(1_000, 1, LEASE).await.expect("lease");
        assert_eq!(l.len(), 1);
        let out = store
            .cancel_event(&key, None, "by hand")
            .await
            .expect("cancel");
        assert_eq!(out.cancelled, 2);
        assert_eq!(out.stopping, vec![ids[0]]);
        assert_eq!(record(&store, ids[1]).state, DeliveryState::Cancelled);
        // Asking again finds nothing more to do.
        let again = store
            .cancel_event(&key, None, "by hand")
            .await
            .expect("cancel");
        assert_eq!(again, CancelOutcome::default());
        (key, ids[0])
        // The process dies here, with the run still leased.
    };
    let store = open(dir.path());
    let rec = record(&store, a);
    assert_eq!(rec.state, DeliveryState::Cancelled);
    assert_eq!(rec.cancel.as_deref(), Some("by hand"));
    let (leased, _) = leased_ids(&store, crate::clock::now_ms()).await;
    let on_cancel = of_list(&store, &key, ActionList::OnCancel);
    assert_eq!(
        leased,
        vec![on_cancel[0].id],
        "only the on_cancel reaction runs"
    );
    assert_eq!(on_cancel.len(), 1);
    assert_eq!(depth(&store).cancelled, 2);
}

#[tokio::test]
async fn a_delivery_not_started_in_time_expires_with_one_on_failure() {
    let dir = tempdir();
    let store = open_with_reactions(dir.path());
    let late = NewDelivery {
        start_within_ms: Some(500),
        ..delivery("r", 0)
    };
    let (key, ids) = accept(&store, new_event("a", 1_000, vec![late])).await;
    assert_eq!(record(&store, ids[0]).deadline_ms, Some(1_500));
    let (leased, _) = leased_ids(&store, 1_600).await;
    let rec = record(&store, ids[0]);
    assert_eq!(rec.state, DeliveryState::Expired);
    let failures = of_list(&store, &key, ActionList::OnFailure);
    assert_eq!(failures.len(), 1);
    let failure = failures[0].on_failure.as_ref().expect("context");
    assert_eq!(failure.reason.as_deref(), Some("expired"));
    assert_eq!(failure.delivery, ids[0]);
    // The on_failure delivery itself was due in the same lease or is now.
    let (again, _) = leased_ids(&store, crate::clock::now_ms()).await;
    assert_eq!([leased, again].concat(), vec![failures[0].id]);
    assert_eq!(depth(&store).expired, 1);
}

#[tokio::test]
async fn a_delivery_that_started_in_time_does_not_expire() {
    let dir = tempdir();
    let store = open(dir.path());
    let d = NewDelivery {
        start_within_ms: Some(500),
        ..delivery("r", 0)
    };
    let (_, ids) = accept(&store, new_event("a", 1_000, vec![d])).await;
    assert_eq!(leased_ids(&store, 1_400).await.0, ids);
    store
        .finish(ids[0], attempt(1_450, "retry", None), Next::RetryAt(2_000))
        .await
        .expect("finish");
    // Its retry is due after the deadline; an attempt started in time.
    assert_eq!(leased_ids(&store, 2_000).await.0, ids);
}

#[tokio::test]
async fn a_group_key_that_did_not_render_makes_a_dead_delivery_with_on_failure() {
    let dir = tempdir();
    let store = open_with_reactions(dir.path());
    let bad = NewDelivery {
        error: Some("group key rendered empty".to_owned()),
        ..delivery("r", 0)
    };
    let (key, ids) = accept(&store, new_event("a", 1_000, vec![bad])).await;
    let rec = record(&store, ids[0]);
    assert_eq!(rec.state, DeliveryState::Dead);
    assert_eq!(rec.last_error.as_deref(), Some("group key rendered empty"));
    let failures = of_list(&store, &key, ActionList::OnFailure);
    assert_eq!(failures.len(), 1);
    assert_eq!(depth(&store).dead, 1);
}

/// A group's head made due when room appeared, then cancelled by hand
/// before it was leased, hands its turn to the next waiting member rather
/// than leaving it waiting for a run that will never finish.
#[tokio::test]
async fn cancelling_a_group_head_made_due_hands_its_turn_on() {
    use crate::rules::OnBusy::Queue;
    let dir = tempdir();
    let store = open(dir.path());
    let a = one(&store, "a", 1_000, grouped("1", Queue)).await;
    let b = one(&store, "b", 1_001, grouped("1", Queue)).await;
    let c = one(&store, "c", 1_002, grouped("1", Queue)).await;
    assert_eq!(leased_ids(&store, 2_000).await, (vec![a], vec![]));
    assert_eq!(leased_ids(&store, 2_000).await, (vec![], vec![]));
    // A leaves its slot: B, the head, is made due but not leased yet.
    store
        .finish(a, attempt(2_100, "ok", None), Next::Done)
        .await
        .expect("finish");
    let key_b = record(&store, b).event_key;
    store
        .cancel_event(&key_b, None, "by hand")
        .await
        .expect("cancel");
    assert_eq!(record(&store, b).state, DeliveryState::Cancelled);
    assert_eq!(leased_ids(&store, 2_200).await, (vec![c], vec![]));
}

#[tokio::test]
async fn cancel_by_group_key_and_a_cancel_that_finds_nothing() {
    use crate::rules::OnBusy::Queue;
    let dir = tempdir();
    let store = open(dir.path());
    let a = one(&store, "a", 1_000, grouped("7", Queue)).await;
    assert_eq!(leased_ids(&store, 1_000).await.0, vec![a]);
    let b = one(&store, "b", 1_001, grouped("7", Queue)).await;
    let other = one(&store, "c", 1_002, grouped("8", Queue)).await;
    assert_eq!(leased_ids(&store, 2_000).await.0, vec![other]);
    let out = store
        .cancel_group("review", "7", "closed")
        .await
        .expect("cancel");
    assert_eq!(out.cancelled, 2);
    assert_eq!(out.stopping, vec![a]);
    assert_eq!(record(&store, b).state, DeliveryState::Cancelled);
    assert_eq!(record(&store, other).state, DeliveryState::Leased);
    let none = store
        .cancel_group("review", "nope", "closed")
        .await
        .expect("cancel");
    assert_eq!(none, CancelOutcome::default());
    let none = store
        .cancel_group("other-rule", "7", "closed")
        .await
        .expect("cancel");
    assert_eq!(none, CancelOutcome::default());
    let err = store
        .cancel_event("no-such-event", None, "x")
        .await
        .expect_err("unknown");
    assert!(err.is_not_found());
}

#[tokio::test]
async fn waiting_group_members_keep_their_place_across_a_restart() {
    use crate::rules::OnBusy::Queue;
    let dir = tempdir();
    let (a, b, c) = {
        let store = open(dir.path());
        let a = one(&store, "a", 1_000, grouped("1", Queue)).await;
        assert_eq!(leased_ids(&store, 1_000).await.0, vec![a]);
        let b = one(&store, "b", 1_001, grouped("1", Queue)).await;
        let c = one(&store, "c", 1_002, grouped("1", Queue)).await;
        assert_eq!(leased_ids(&store, 2_000).await.0, Vec::<DeliveryId>::new());
        store.close().await.expect("close");
        (a, b, c)
    };
    let store = open(dir.path());
    let now = crate::clock::now_ms();
    // The interrupted run goes first, then B, then C.
    for id in [a, b, c] {
        assert_eq!(leased_ids(&store, now).await.0, vec![id]);
        store
            .finish(id, attempt(now, "ok", None), Next::Done)
            .await
            .expect("finish");
    }
}

#[tokio::test]
async fn a_cancelled_delivery_replays_and_a_when_false_is_skipped() {
    let dir = tempdir();
    let store = open(dir.path());
    let (key, ids) = accept(&store, new_event("a", 1_000, vec![delivery("r", 0)])).await;
    let out = store
        .cancel_event(&key, Some("r"), "by hand")
        .await
        .expect("cancel");
    assert_eq!((out.cancelled, out.stopping.len()), (1, 0));
    assert_eq!(record(&store, ids[0]).state, DeliveryState::Cancelled);
    let replayed = crate::ops::replay(None, &store, &key, None)
        .await
        .expect("replay");
    assert_eq!(replayed.len(), 1);
    let fresh = record(&store, replayed[0]);
    assert_eq!(
        (fresh.state, fresh.cancel.clone()),
        (DeliveryState::Pending, None)
    );
    assert_eq!(leased_ids(&store, crate::clock::now_ms()).await.0, replayed);
    // `when:` false: final, no attempt recorded.
    store
        .finish(
            replayed[0],
            attempt(0, "ok", Some("when: rendered \"false\"")),
            Next::Skipped,
        )
        .await
        .expect("finish");
    let rec = record(&store, replayed[0]);
    assert_eq!((rec.state, rec.attempts), (DeliveryState::Skipped, 0));
}

#[test]
fn new_state_names_parse_and_print() {
    for state in DeliveryState::ALL {
        assert_eq!(state.as_str().parse::<DeliveryState>(), Ok(state));
    }
    for word in ["skipped", "superseded", "cancelled", "expired"] {
        let s: DeliveryState = word.parse().expect("state");
        assert!(s.is_final());
        assert_eq!(s.to_string(), word);
    }
}
