//! A server that has lost a part it needs must not look alive: when the
//! store writer dies, the process ends with a non-zero code and one clear
//! error line, so systemd or Kubernetes restarts it.
//!
//! The writer is made to die with the debug-only fault hook
//! (`HOOKROUTER_FAULT=writer-panic-after:N`, see `src/fault.rs`). That a
//! healthy server answers `/healthz` 200 is shown in `operate.rs`.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::support::{Server, ServerOpts, as_refs, fixture, get, signed_headers, unique};

const SECRET: &str = "gh-test-secret";
/// The documented exit code of `serve` after a part it needs stopped.
const EXIT_PART_STOPPED: i32 = 3;

fn push(server: &Server, id: &str) -> u16 {
    let body = serde_json::json!({ "ref": "refs/heads/main", "note": id })
        .to_string()
        .into_bytes();
    let mut headers = signed_headers("github", SECRET, &body, id);
    headers.push(("X-GitHub-Event".into(), "push".into()));
    headers.push(("Content-Type".into(), "application/json".into()));
    server.post("/hooks/gh", &as_refs(&headers), &body).status
}

/// The exit status once the process has ended by itself, or `None` if it
/// is still running after `timeout`.
fn exit_within(server: &mut Server, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(status)) = server.child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn a_dead_store_writer_ends_the_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.redb");
    let rules = fixture("serve/rules.yaml");
    let mut server = ServerOpts::new(&rules, &data)
        .admin()
        .env("HOOKROUTER_FAULT", "writer-panic-after:1")
        .start();

    let kept = unique("kept");
    assert_eq!(push(&server, &kept), 202, "log:\n{}", server.log());
    assert_eq!(get(&server.admin_url("/healthz"), &[]).status, 200);

    // The writer panics on this commit: the sender must hear that it was not
    // stored, and the process must not linger.
    let lost = unique("lost");
    assert_eq!(push(&server, &lost), 503, "log:\n{}", server.log());
    let status = exit_within(&mut server, Duration::from_secs(10));
    let log = server.log();
    let Some(status) = status else {
        panic!("the process outlived its store writer; log:\n{log}");
    };
    assert_eq!(status.code(), Some(EXIT_PART_STOPPED), "log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("The store writer stopped; exiting so a supervisor can restart"))
        .unwrap_or_else(|| panic!("no error line; log:\n{log}"));
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains("panicked: fault injected by HOOKROUTER_FAULT"),
        "the line should carry the panic's message: {line}"
    );
    drop(server);

    // What was acknowledged is on disk; the lost event was never stored.
    let server = ServerOpts::new(&rules, &data).admin().start();
    let events = get(&server.admin_url("/api/events"), &[]).json();
    let ids: Vec<&str> = events["events"]
        .as_array()
        .expect("a list of events")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids, [kept.as_str()], "{events}");
}
