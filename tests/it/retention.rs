//! Retention: old events are pruned once past `--retention`, and the
//! retention is raised to the dedup window so that no event is pruned
//! while a repeat of it must still be refused.
//!
//! That duplicates stay duplicates across prunes is in `dedup.rs`, which
//! shares this file's server.

use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{Server, ServerOpts, admin_get, install, push, unique, wait_until};

const WAIT: Duration = Duration::from_secs(20);

pub(crate) const RET_SECRET: &str = "retention-test-secret";

pub(crate) fn retention_server(args: &[&str]) -> (TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(dir.path(), "retention.yaml", "retention.yaml", &[]);
    let mut opts = ServerOpts::new(&rules, &dir.path().join("data.redb")).admin();
    for a in args {
        opts = opts.arg(a);
    }
    (dir, opts.start())
}

pub(crate) fn listed(server: &Server, id: &str) -> bool {
    let resp = admin_get(server, "/api/events?limit=1000", None);
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["event_id"] == id))
}

#[test]
fn retention_prunes_old_events() {
    let (_dir, server) = retention_server(&["--retention", "2s", "--dedup-window", "1s"]);
    let id = unique("ret");
    let sent = Instant::now();
    let resp = push(&server, "ret", RET_SECRET, "x", &id);
    assert_eq!(resp.status, 202, "{resp:?}");
    let key = resp.json()["key"].as_str().expect("key").to_owned();
    assert!(listed(&server, &id), "a fresh event is not listed");
    assert!(server.wait_log(&format!("ret-fired[{id}]"), 1, WAIT));

    let gone = wait_until(WAIT, || !listed(&server, &id));
    let after = sent.elapsed();
    assert!(
        gone,
        "the event is still listed after {after:?}; log:\n{}",
        server.log()
    );
    assert!(
        after >= Duration::from_secs(2),
        "pruned after {after:?}, before the 2 s retention"
    );
    assert_eq!(
        admin_get(&server, &format!("/api/events/{key}"), None).status,
        404
    );
    assert!(
        server.log().contains("Pruned old data."),
        "{}",
        server.log()
    );

    // Past the dedup window the same id is a new event.
    let again = push(&server, "ret", RET_SECRET, "x", &id);
    assert_eq!(again.status, 202, "{again:?}");
    assert!(server.wait_log(&format!("ret-fired[{id}]"), 2, WAIT));
}

#[test]
fn retention_is_raised_to_the_dedup_window() {
    let (_dir, server) = retention_server(&["--retention", "1s", "--dedup-window", "5s"]);
    assert!(
        server.wait_log("Retention raised", 1, WAIT),
        "{}",
        server.log()
    );
    let id = unique("raise");
    assert_eq!(push(&server, "ret", RET_SECRET, "x", &id).status, 202);
    // Well past the 1 s asked for, with pruning every second.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        listed(&server, &id),
        "pruned before the dedup window ended; log:\n{}",
        server.log()
    );
    let dup = push(&server, "ret", RET_SECRET, "x", &id);
    assert_eq!(dup.status, 200, "{dup:?}");
    assert_eq!(dup.json()["status"], "duplicate", "{dup:?}");
}
