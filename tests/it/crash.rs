//! `kill -9` against at-least-once: every event answered with 2xx is on disk
//! and its actions run, if need be by the next process on the same data file.
//!
//! The rule in `tests/fixtures/serve/crash.yaml` gives each event a slow
//! one-at-a-time shell action and a log action `burst-fired[<id>]`. The
//! first process runs with one worker, so its few lease slots are mostly
//! held by the slow lane and most log deliveries are still queued when it
//! dies; the second process must run them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{Server, ServerOpts, agent, fixture, post_with, push_headers, wait_until};

const SECRET: &str = "burst-test-secret";
const EVENTS: usize = 200;
const THREADS: usize = 4;
/// How long the restarted process may take to catch up on a loaded machine.
const CATCH_UP: Duration = Duration::from_secs(60);

/// What became of one request.
#[derive(Debug, Clone)]
enum Answer {
    Status(u16, serde_json::Value),
    /// No answer: the connection failed (the server died).
    Failed(String),
}

fn body(i: usize) -> Vec<u8> {
    serde_json::json!({ "ref": "refs/heads/main", "n": i })
        .to_string()
        .into_bytes()
}

fn id(tag: &str, i: usize) -> String {
    format!("{tag}-{}-{i:04}", std::process::id())
}

/// Post event `i` under `id`, signed as GitHub would; never panics on a
/// failed connection.
fn send(agent: &ureq::Agent, url: &str, i: usize, id: &str) -> Answer {
    let body = body(i);
    match post_with(agent, url, &push_headers(SECRET, &body, id), &body) {
        Ok(resp) => Answer::Status(resp.status, resp.json()),
        Err(e) => Answer::Failed(e),
    }
}

/// Send events `0..EVENTS` from `THREADS` threads; `acked` counts the 202s
/// as they come in.
fn burst(
    url: &str,
    tag: &str,
    acked: &Arc<AtomicUsize>,
) -> Vec<std::thread::JoinHandle<Vec<(usize, Answer)>>> {
    (0..THREADS)
        .map(|t| {
            let url = url.to_owned();
            let tag = tag.to_owned();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let agent = agent();
                (t..EVENTS)
                    .step_by(THREADS)
                    .map(|i| {
                        let answer = send(&agent, &url, i, &id(&tag, i));
                        if matches!(answer, Answer::Status(202, _)) {
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        (i, answer)
                    })
                    .collect()
            })
        })
        .collect()
}

/// Every id in `burst-fired[<id>]` lines.
fn fired(log: &str) -> BTreeSet<String> {
    log.split("burst-fired[")
        .skip(1)
        .filter_map(|rest| rest.split_once(']').map(|(id, _)| id.to_owned()))
        .collect()
}

fn accepted_ids(answers: &[(usize, Answer)], tag: &str) -> BTreeSet<String> {
    answers
        .iter()
        .filter_map(|(i, a)| match a {
            Answer::Status(202, json) => {
                let id = id(tag, *i);
                assert_eq!(json["status"], "accepted", "{a:?}");
                assert_eq!(json["id"], id.as_str(), "{a:?}");
                Some(id)
            }
            _ => None,
        })
        .collect()
}

/// Wait until every id in `want` has run in one process or the other, then
/// return the ones that never did.
fn missing_after_restart(first: &Server, second: &Server, want: &BTreeSet<String>) -> Vec<String> {
    let missing = || {
        let mut seen = fired(&first.log());
        seen.extend(fired(&second.log()));
        want.difference(&seen).cloned().collect::<Vec<_>>()
    };
    wait_until(CATCH_UP, || missing().is_empty());
    missing()
}

/// Every event acknowledged before the crash is known after it: sending it
/// again is a duplicate.
fn assert_all_known(server: &Server, tag: &str, acked: &BTreeSet<String>) {
    let agent = agent();
    let url = server.url("/hooks/burst");
    for i in 0..EVENTS {
        let id = id(tag, i);
        if !acked.contains(&id) {
            continue;
        }
        match send(&agent, &url, i, &id) {
            Answer::Status(200, json) if json["status"] == "duplicate" => {}
            other => {
                panic!("{id} was answered 202 before the crash but is unknown after it: {other:?}")
            }
        }
    }
}

#[test]
fn kill9_right_after_the_last_202_loses_no_action() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.redb");
    let rules = fixture("serve/crash.yaml");
    let tag = "after";

    let mut first = ServerOpts::new(&rules, &data)
        .arg("--workers")
        .arg("1")
        .start();
    let acked = Arc::new(AtomicUsize::new(0));
    let answers: Vec<(usize, Answer)> = burst(&first.url("/hooks/burst"), tag, &acked)
        .into_iter()
        .flat_map(|h| h.join().expect("sender thread"))
        .collect();
    first.kill9();

    let not_accepted: Vec<_> = answers
        .iter()
        .filter(|(_, a)| !matches!(a, Answer::Status(202, _)))
        .collect();
    assert!(
        not_accepted.is_empty(),
        "every distinct event is accepted before the kill: {not_accepted:?}"
    );
    let accepted = accepted_ids(&answers, tag);
    assert_eq!(accepted.len(), EVENTS);
    let ran_before = fired(&first.log());
    assert!(
        ran_before.len() < EVENTS,
        "the test needs deliveries still queued at the kill; all {EVENTS} ran already"
    );

    let second = Server::start(&rules, &data);
    let missing = missing_after_restart(&first, &second, &accepted);
    assert!(
        missing.is_empty(),
        "{} of {EVENTS} accepted events never ran ({} ran before the kill): {missing:?}\nrestarted log:\n{}",
        missing.len(),
        ran_before.len(),
        second.log()
    );
    // Nothing ran that was not accepted.
    let mut all = fired(&first.log());
    all.extend(fired(&second.log()));
    assert_eq!(all, accepted);
    assert_all_known(&second, tag, &accepted);
}

#[test]
fn kill9_mid_burst_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data.redb");
    let rules = fixture("serve/crash.yaml");
    let tag = "mid";

    let mut first = ServerOpts::new(&rules, &data)
        .arg("--workers")
        .arg("1")
        .start();
    let acked = Arc::new(AtomicUsize::new(0));
    let senders = burst(&first.url("/hooks/burst"), tag, &acked);
    assert!(
        wait_until(CATCH_UP, || acked.load(Ordering::SeqCst) >= EVENTS / 2),
        "half the burst was not accepted in time; log:\n{}",
        first.log()
    );
    // Requests are in flight while the process dies.
    first.kill9();
    let answers: Vec<(usize, Answer)> = senders
        .into_iter()
        .flat_map(|h| h.join().expect("sender thread"))
        .collect();

    for (i, a) in &answers {
        assert!(
            matches!(a, Answer::Status(202, _) | Answer::Failed(_)),
            "event {i}: only 202 or no answer at all is possible here: {a:?}"
        );
    }
    let accepted = accepted_ids(&answers, tag);
    assert!(accepted.len() >= EVENTS / 2, "{}", accepted.len());

    let second = Server::start(&rules, &data);
    assert_all_known(&second, tag, &accepted);
    // The sender retries what got no answer: each is new, or a duplicate if
    // it was committed just before the kill.
    let agent = agent();
    let url = second.url("/hooks/burst");
    let mut everything = accepted.clone();
    for (i, a) in &answers {
        if let Answer::Failed(why) = a {
            let id = id(tag, *i);
            match send(&agent, &url, *i, &id) {
                Answer::Status(202 | 200, _) => {}
                other => panic!("{id} (first sent: {why}) retried after the restart: {other:?}"),
            }
            everything.insert(id);
        }
    }
    assert_eq!(everything.len(), EVENTS);

    let missing = missing_after_restart(&first, &second, &everything);
    assert!(
        missing.is_empty(),
        "{} of {EVENTS} acknowledged events never ran: {missing:?}\nrestarted log:\n{}",
        missing.len(),
        second.log()
    );
}
