//! Deduplication: an event id already seen is answered 200 `duplicate` and
//! runs nothing, whatever the body and signature of the repeat; the store
//! remembers ids across a restart and across retention prunes until the
//! dedup window ends.
//!
//! The first two tests use the serve fixture and its helpers (`serve.rs`),
//! the last the retention server (`retention.rs`). Past the window an id is
//! new again: `retention.rs` checks that with pruning.

use std::time::Duration;

use crate::retention::{RET_SECRET, listed, retention_server};
use crate::serve::{
    GH_SECRET, STD_SECRET, assert_accepted, assert_duplicate, assert_fired_once, count, fired,
    order_body, post, rules, start, std_headers,
};
use crate::support::{Server, push, push_body, push_headers as gh_headers, unique};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn duplicate_is_200_and_does_not_run_again() {
    let (_dir, server) = start();
    let id = unique("gh-dup");
    let body = push_body("refs/heads/main", "once");
    let headers = gh_headers(GH_SECRET, &body, &id);
    assert_accepted(&post(&server, "/hooks/gh", &headers, &body), &id);
    assert_fired_once(&server, "gh", &id);
    for _ in 0..3 {
        assert_duplicate(&post(&server, "/hooks/gh", &headers, &body), &id);
    }
    // The delivery id decides, not the body: a retry with a fresh signature
    // over a different body is the same event.
    let other_body = push_body("refs/heads/main", "retried");
    let resp = post(
        &server,
        "/hooks/gh",
        &gh_headers(GH_SECRET, &other_body, &id),
        &other_body,
    );
    assert_duplicate(&resp, &id);

    // Standard Webhooks: the webhook-id decides.
    let std_id = unique("msg_std-dup");
    let body = order_body("once");
    assert_accepted(
        &post(
            &server,
            "/hooks/std",
            &std_headers(STD_SECRET, &body, &std_id),
            &body,
        ),
        &std_id,
    );
    assert_fired_once(&server, "std", &std_id);
    assert_duplicate(
        &post(
            &server,
            "/hooks/std",
            &std_headers(STD_SECRET, &body, &std_id),
            &body,
        ),
        &std_id,
    );

    // A later event runs; the duplicates, queued before it, did not.
    let marker = unique("gh-marker");
    let body = push_body("refs/heads/main", "marker");
    assert_accepted(
        &post(
            &server,
            "/hooks/gh",
            &gh_headers(GH_SECRET, &body, &marker),
            &body,
        ),
        &marker,
    );
    assert_fired_once(&server, "gh", &marker);
    let log = server.log();
    assert_eq!(count(&log, &fired("gh", &id)), 1, "{log}");
    assert_eq!(count(&log, &fired("std", &std_id)), 1, "{log}");
}

#[test]
fn duplicate_after_restart_is_200_and_does_not_run_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.redb");
    let id = unique("gh-dup-restart");
    let body = push_body("refs/heads/main", "once");
    let headers = gh_headers(GH_SECRET, &body, &id);

    let mut first = Server::start(&rules(), &data);
    assert_accepted(&post(&first, "/hooks/gh", &headers, &body), &id);
    assert_fired_once(&first, "gh", &id);
    let status = first.terminate().expect("the server exits on SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        first.log()
    );

    let second = Server::start(&rules(), &data);
    assert_duplicate(&post(&second, "/hooks/gh", &headers, &body), &id);
    let marker = unique("gh-marker");
    let marker_body = push_body("refs/heads/main", "marker");
    let resp = post(
        &second,
        "/hooks/gh",
        &gh_headers(GH_SECRET, &marker_body, &marker),
        &marker_body,
    );
    assert_accepted(&resp, &marker);
    assert_fired_once(&second, "gh", &marker);
    let log = second.log();
    assert_eq!(
        count(&log, &fired("gh", &id)),
        0,
        "ran again after the restart:\n{log}"
    );
    assert_eq!(count(&first.log(), &fired("gh", &id)), 1);
}

#[test]
fn duplicates_within_the_window_stay_duplicates_across_prunes() {
    let (_dir, server) = retention_server(&["--retention", "60s", "--dedup-window", "60s"]);
    let id = unique("dup");
    assert_eq!(push(&server, "ret", RET_SECRET, "x", &id).status, 202);
    let dup = push(&server, "ret", RET_SECRET, "x", &id);
    assert_eq!(dup.status, 200, "{dup:?}");
    assert_eq!(dup.json()["status"], "duplicate", "{dup:?}");
    // Pruning runs every 6 s at this retention; outlast one pass.
    std::thread::sleep(Duration::from_secs(7));
    let dup = push(&server, "ret", RET_SECRET, "x", &id);
    assert_eq!(dup.status, 200, "{dup:?}");
    assert_eq!(dup.json()["status"], "duplicate", "{dup:?}");
    assert!(listed(&server, &id));
    assert!(server.wait_log(&format!("ret-fired[{id}]"), 1, WAIT));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.log().matches(&format!("ret-fired[{id}]")).count(),
        1,
        "a duplicate ran again"
    );
}
