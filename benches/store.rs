//! Store write throughput without HTTP: many tasks commit events (a 2 KB
//! GitHub-like push, one delivery each) through the group-commit writer into
//! a real redb file, then record the delivery's attempt, as `serve` does.
//!
//! `cargo bench --bench store [-- TASKS SECONDS]` (defaults 32 and 5). Prints
//! events per second for three paths: event only (no delivery), event with a
//! queued delivery, and event with a delivery committed leased then finished.
//! The data file lives under `target/` (not a tmpfs), so fsync costs what it
//! costs on this disk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hookrouter::event::Event;
use hookrouter::rules::{ActionList, ActionType};
use hookrouter::store::{Attempt, AttemptOutcome, Committed, NewDelivery, NewEvent, Next, Store};

fn body(n: u64) -> serde_json::Value {
    let commits: Vec<_> = (0..5)
        .map(|i| {
            serde_json::json!({
                "id": format!("{:040x}", n * 10 + i),
                "message": format!("Fix the parser for case {i}"),
                "timestamp": "2025-01-01T10:00:00Z",
                "url": "https://github.com/acme/api/commit/0123456789abcdef0123456789abcdef01234567",
                "author": {"name": "Octo Cat", "email": "octocat@example.com"},
                "added": [], "removed": [], "modified": ["src/parser.rs"]
            })
        })
        .collect();
    serde_json::json!({
        "ref": "refs/heads/main",
        "before": "0123456789abcdef0123456789abcdef01234567",
        "after": "89abcdef0123456789abcdef0123456789abcdef",
        "repository": {"id": 123_456, "name": "api", "full_name": "acme/api", "private": false,
            "owner": {"login": "acme", "id": 4242}, "html_url": "https://github.com/acme/api",
            "default_branch": "main"},
        "pusher": {"name": "octocat", "email": "octocat@example.com"},
        "commits": commits
    })
}

fn event(task: u64, n: u64, body: &serde_json::Value) -> Event {
    let id = format!("{task:08x}-{n:016x}-bench");
    let headers = BTreeMap::from([
        ("content-type".to_owned(), "application/json".to_owned()),
        ("user-agent".to_owned(), "GitHub-Hookshot/bench".to_owned()),
        ("x-github-delivery".to_owned(), id.clone()),
        ("x-github-event".to_owned(), "push".to_owned()),
        (
            "x-hub-signature-256".to_owned(),
            format!("sha256={:064x}", n),
        ),
    ]);
    Event {
        id,
        kind: "push".to_owned(),
        source: "github".to_owned(),
        provider: "github".to_owned(),
        received_at: "2025-01-01T10:00:00.000Z".to_owned(),
        headers,
        query: BTreeMap::new(),
        body: body.clone().into(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    EventOnly,
    Queued,
    LeasedAndFinished,
}

fn now_ms() -> u64 {
    hookrouter::clock::unix_ms(std::time::SystemTime::now())
}

async fn run(path: Path, tasks: u64, secs: u64) -> f64 {
    let dir = tempfile::Builder::new()
        .prefix("bench-store")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let store = Store::open(&dir.path().join("bench.redb")).expect("open");
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(secs);
    let body = Arc::new(if std::env::var_os("TINY").is_some() {
        serde_json::json!({"ref": "x"})
    } else {
        body(0)
    });
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (store, done, body) = (store.clone(), done.clone(), body.clone());
        handles.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < stop {
                n += 1;
                let deliveries = if path == Path::EventOnly {
                    Vec::new()
                } else {
                    vec![NewDelivery::new(
                        "push-main",
                        ActionList::Actions,
                        0,
                        ActionType::Log,
                    )]
                };
                let now = now_ms();
                let ev = event(task, n, &body);
                let new = NewEvent {
                    dedup_key: format!("github\u{0}{}", ev.id),
                    dedup_until_ms: now + 7 * 86_400_000,
                    received_ms: now,
                    deliveries,
                    event: ev,
                    reply: None,
                };
                if path == Path::LeasedAndFinished {
                    let (c, leased) = store.commit_leased(new, 86_400_000).await.expect("commit");
                    assert!(matches!(c, Committed::Accepted { .. }));
                    let store = store.clone();
                    for l in leased {
                        let attempt = Attempt {
                            at_ms: now,
                            duration_ms: 0,
                            outcome: AttemptOutcome::Ok,
                            status: None,
                            detail: None,
                        };
                        store
                            .finish(l.delivery.id, attempt, Next::Done)
                            .await
                            .expect("finish");
                    }
                } else {
                    let c = store.commit(new).await.expect("commit");
                    assert!(matches!(c, Committed::Accepted { .. }));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    for h in handles {
        h.await.expect("task");
    }
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    store.close().await.expect("close");
    rate
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tasks = args.first().and_then(|a| a.parse().ok()).unwrap_or(32);
    let secs = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for (name, path) in [
        ("event only", Path::EventOnly),
        ("event + queued delivery", Path::Queued),
        ("event + leased delivery, finished", Path::LeasedAndFinished),
    ] {
        let rate = rt.block_on(run(path, tasks, secs));
        println!("store {name:<36} {tasks} tasks: {rate:>9.0} events/s");
    }
}
