//! Shutting down: SIGTERM under load drains, and every acknowledged event's
//! actions run (before exit or after the restart) without an HTTP action
//! sent twice; a second signal exits at once and the action it cut runs
//! again after a restart.
//!
//! The rules come from `tests/fixtures/operate/drain.yaml`, pointed at a
//! slow receiver (`support::slow_drain`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    Answer, Headers, Receiver, ServerOpts, fired_counts, get, install, post_with, push, push_body,
    push_headers, received_counts, send_signal, slow_drain, unique, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);

fn try_post(agent: &ureq::Agent, url: &str, headers: &Headers, body: &[u8]) -> Result<u16, String> {
    post_with(agent, url, headers, body).map(|r| r.status)
}

#[test]
fn sigterm_under_load_drains_and_every_acknowledged_event_runs() {
    const SECRET: &str = "drain-test-secret";
    const THREADS: usize = 4;
    const GRACE: Duration = Duration::from_secs(5);
    // A slow receiver: actions are still running, and more are queued, when
    // SIGTERM arrives.
    let (receiver, dir, rules) = slow_drain(Duration::from_millis(150));
    let data = dir.path().join("data.redb");
    // Few workers, so deliveries are still queued at SIGTERM.
    let mut first = ServerOpts::new(&rules, &data)
        .arg("--grace")
        .arg("5s")
        .arg("--workers")
        .arg("4")
        .start();
    let url = first.url("/hooks/drain");

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let other = Arc::new(Mutex::new(Vec::<(String, u16)>::new()));
    let terminated = Arc::new(AtomicBool::new(false));
    let acked_after_term = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, acked, other) = (url.clone(), acked.clone(), other.clone());
            let (terminated, acked_after_term, stop) =
                (terminated.clone(), acked_after_term.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                let start = Instant::now();
                for i in 0.. {
                    if stop.load(Ordering::Acquire) || start.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                    let id = format!("drain-{}-{t}-{i}", std::process::id());
                    let body = push_body("refs/heads/main", &id);
                    let headers = push_headers(SECRET, &body, &id);
                    let was_terminated = terminated.load(Ordering::Acquire);
                    match try_post(&agent, &url, &headers, &body) {
                        Ok(s) if (200..300).contains(&s) => {
                            acked.lock().unwrap().push(id);
                            if was_terminated {
                                acked_after_term.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(s) => other.lock().unwrap().push((id, s)),
                        // Refused or reset: the server stopped accepting.
                        Err(_) if terminated.load(Ordering::Acquire) => break,
                        Err(e) => panic!("request {id} failed before SIGTERM: {e}"),
                    }
                }
            })
        })
        .collect();

    assert!(
        wait_until(WAIT, || acked.lock().unwrap().len() >= 120),
        "load never got going; log:\n{}",
        first.log()
    );
    terminated.store(true, Ordering::Release);
    let sent_at = Instant::now();
    let status = first.terminate();
    let took = sent_at.elapsed();
    stop.store(true, Ordering::Release);
    for w in workers {
        w.join().expect("sender thread");
    }
    let status = status.unwrap_or_else(|| panic!("no exit after SIGTERM; log:\n{}", first.log()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status:?}; log:\n{}",
        first.log()
    );
    assert!(
        took <= GRACE + Duration::from_secs(3),
        "draining took {took:?} with a {GRACE:?} grace period"
    );
    assert!(first.log().contains("Stopped."), "{}", first.log());
    let other = other.lock().unwrap().clone();
    assert!(
        other.iter().all(|(_, s)| *s == 503),
        "answers other than 2xx or 503 under load: {other:?}"
    );

    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let http_before_restart = received_counts(&receiver).len();
    let second = ServerOpts::new(&rules, &data).admin().start();
    let logs = || vec![first.log(), second.log()];
    let complete = wait_until(WAIT, || {
        let got = received_counts(&receiver);
        let fired = fired_counts(&logs(), "drain");
        acked
            .iter()
            .all(|id| got.contains_key(id) && fired.contains_key(id))
    });
    let got = received_counts(&receiver);
    let fired = fired_counts(&logs(), "drain");
    let missing_http: Vec<&String> = acked.iter().filter(|id| !got.contains_key(*id)).collect();
    let missing_log: Vec<&String> = acked.iter().filter(|id| !fired.contains_key(*id)).collect();
    let dup_http = got.values().filter(|n| **n > 1).count();
    let dup_log = fired.values().filter(|n| **n > 1).count();
    eprintln!(
        "sigterm drain: {} acknowledged ({} sent after SIGTERM), exit in {took:?}{}, \
         {http_before_restart} delivered by http before the restart; \
         duplicates: {dup_http} http, {dup_log} log",
        acked.len(),
        acked_after_term.load(Ordering::Relaxed),
        if first.log().contains("Grace period over") {
            " (grace period ran out)"
        } else {
            ""
        },
    );
    // What both logs say about a few of the missing.
    let story: String = missing_http
        .iter()
        .chain(&missing_log)
        .take(3)
        .flat_map(|id| {
            logs().into_iter().enumerate().flat_map(move |(run, log)| {
                log.lines()
                    .filter(|l| l.contains(id.as_str()))
                    .map(|l| format!("run {}: {l}\n", run + 1))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    assert!(
        complete,
        "acknowledged events never delivered: {} by http {:?}, {} by log {:?}\n\
         their log lines:\n{story}\nleased: {}\npending: {}\nrestarted log:\n{}",
        missing_http.len(),
        missing_http.iter().take(10).collect::<Vec<_>>(),
        missing_log.len(),
        missing_log.iter().take(10).collect::<Vec<_>>(),
        get(&second.admin_url("/api/deliveries?state=leased"), &[]).body,
        get(&second.admin_url("/api/deliveries?state=pending"), &[]).body,
        second.log()
    );
    // Actions running at SIGTERM finished within the grace period, so none
    // was cut off and sent again.
    assert_eq!(
        dup_http,
        0,
        "http actions sent twice across a graceful stop: {:?}",
        got.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
}

#[test]
fn a_second_signal_exits_at_once_and_the_cut_action_runs_after_restart() {
    const SECRET: &str = "drain-test-secret";
    let slow = Receiver::answering(
        Answer::status(200)
            .delay(Duration::from_secs(15))
            .echo(false),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(
        dir.path(),
        "drain.yaml",
        "drain.yaml",
        &[("@RECEIVER@", &slow.url(""))],
    );
    let data = dir.path().join("data.redb");
    let mut first = ServerOpts::new(&rules, &data)
        .arg("--grace")
        .arg("60s")
        .start();
    let id = unique("cut");
    assert_eq!(push(&first, "drain", SECRET, "x", &id).status, 202);
    assert!(
        wait_until(WAIT, || !slow.bodies().is_empty()),
        "the action never started; log:\n{}",
        first.log()
    );

    send_signal(&first, nix::sys::signal::Signal::SIGTERM);
    assert!(first.wait_log("Shutting down", 1, WAIT), "{}", first.log());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        matches!(first.child.try_wait(), Ok(None)),
        "exited while an action was still running within the grace period"
    );
    let second_signal = Instant::now();
    send_signal(&first, nix::sys::signal::Signal::SIGTERM);
    let exited = wait_until(Duration::from_secs(5), || {
        matches!(first.child.try_wait(), Ok(Some(_)))
    });
    assert!(
        exited,
        "still running 5 s after the second signal; log:\n{}",
        first.log()
    );
    let status = first.child.wait().expect("status");
    assert_ne!(status.code(), Some(0), "{status:?}");
    assert!(second_signal.elapsed() < Duration::from_secs(5));

    // The cut action runs again after a restart (pointed at a quick receiver).
    let quick = Receiver::answering(Answer::status(200).delay(Duration::ZERO).echo(false));
    install(
        dir.path(),
        "drain.yaml",
        "drain.yaml",
        &[("@RECEIVER@", &quick.url(""))],
    );
    let second = ServerOpts::new(&rules, &data).start();
    assert!(
        wait_until(WAIT, || received_counts(&quick).contains_key(&id)),
        "the interrupted action never ran again; log:\n{}",
        second.log()
    );
}
