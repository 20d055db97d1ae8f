//! The bounded worker pool: with every slot busy, new deliveries are
//! committed queued and leased back as slots free up, none lost or run
//! twice, and no more actions run at once than there are workers.
//!
//! Uses the slow receiver and `drain.yaml` of the shutdown tests
//! (`support::slow_drain`).

use std::time::{Duration, Instant};

use crate::support::{ServerOpts, fired_counts, push, received_counts, slow_drain, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// With the worker pool full, new deliveries cannot be claimed and run from
/// memory: they are committed queued and leased back as slots free up. None
/// is lost or run twice, and the pool bound holds throughout.
#[test]
fn a_full_worker_pool_queues_deliveries_and_runs_each_once() {
    const DELAY: Duration = Duration::from_millis(400);
    const EVENTS: usize = 6;
    let (receiver, dir, rules) = slow_drain(DELAY);
    let data = dir.path().join("data.redb");
    // Two slots: the first event's two deliveries fill the pool, so the
    // events after it find no room while its HTTP call is held.
    let server = ServerOpts::new(&rules, &data)
        .arg("--workers")
        .arg("2")
        .start();
    let ids: Vec<String> = (0..EVENTS)
        .map(|i| format!("pool-{}-{i}", std::process::id()))
        .collect();
    for id in &ids {
        let resp = push(&server, "drain", "drain-test-secret", "refs/heads/main", id);
        assert_eq!(resp.status, 202, "{resp:?}");
    }
    let done = wait_until(WAIT, || {
        let got = received_counts(&receiver);
        let fired = fired_counts(&[server.log()], "drain");
        ids.iter()
            .all(|id| got.contains_key(id) && fired.contains_key(id))
    });
    assert!(done, "not every delivery ran; log:\n{}", server.log());
    // Give a duplicate run the time to show up before counting.
    std::thread::sleep(DELAY * 2);
    let got = received_counts(&receiver);
    let fired = fired_counts(&[server.log()], "drain");
    for id in &ids {
        assert_eq!(got.get(id), Some(&1), "HTTP calls for {id}: {got:?}");
        assert_eq!(fired.get(id), Some(&1), "log lines for {id}: {fired:?}");
    }
    // A slot frees only after the receiver answered, at least DELAY after the
    // call arrived, so no three calls can arrive within DELAY of each other.
    let mut at: Vec<Instant> = receiver.requests().iter().map(|r| r.at).collect();
    at.sort();
    for w in at.windows(3) {
        let spread = w[2].duration_since(w[0]);
        assert!(
            spread >= DELAY - Duration::from_millis(50),
            "three calls within {spread:?}: more than 2 actions ran at once"
        );
    }
}
