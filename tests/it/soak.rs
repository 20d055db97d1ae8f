//! Crash soak, short: signed events flow in while the server is killed with
//! `kill -9` at arbitrary moments and restarted on the same data file, a few
//! times over. Every event answered with a 2xx must reach the receiver at
//! least once; a delivery may repeat (an action cut off by the kill runs
//! again), so duplicates are counted, not refused.
//!
//! `bench/soak.sh` is the long version (release build, about 20 kills, tens
//! of thousands of events).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng as _;

use crate::support::{
    Receiver, Server, agent_with_timeout, post_with, push_headers, received_counts as delivered,
    wait_until, write,
};

const SECRET: &str = "soak-test-secret";
const EVENTS: usize = 400;
const SENDERS: usize = 4;
const KILLS: usize = 5;
/// How long a sender keeps retrying one event before giving up on it.
const RETRY_FOR: Duration = Duration::from_secs(60);
/// How long the last process may take to deliver what is left.
const DRAIN: Duration = Duration::from_secs(60);

fn rules(receiver: &str) -> String {
    format!(
        r#"
sources:
  - name: soak
    provider: github
    secret: {SECRET}

rules:
  - name: deliver
    source: soak
    event: push
    actions:
      - http:
          url: "{receiver}/deliver"
          json: {{ id: "{{{{ event.id }}}}" }}
        retry: {{ attempts: 50, backoff: 100ms, max_backoff: 1s }}
"#
    )
}

fn start(rules: &Path, data: &Path) -> Server {
    Server::start(rules, data)
}

/// What the senders saw.
#[derive(Default)]
struct Sent {
    /// Ids answered 202 (accepted) or 200 (already known).
    acked: BTreeSet<String>,
    /// Ids given up on: never answered 2xx.
    unacked: BTreeSet<String>,
    /// Requests that got no answer (the server died under them).
    failures: usize,
    /// Answers by status.
    statuses: BTreeMap<u16, usize>,
}

fn agent() -> ureq::Agent {
    agent_with_timeout(Duration::from_secs(10))
}

/// Post event `id` to `url`; `None` when no answer came.
fn send(agent: &ureq::Agent, url: &str, id: &str) -> Option<u16> {
    let body = serde_json::json!({ "ref": "refs/heads/main", "id": id })
        .to_string()
        .into_bytes();
    post_with(agent, url, &push_headers(SECRET, &body, id), &body)
        .ok()
        .map(|r| r.status)
}

/// Send events `t, t + SENDERS, …` each until it is answered 2xx, to
/// whichever process is current (`url`), as a webhook sender retries.
fn sender(t: usize, url: Arc<Mutex<String>>, acked: Arc<AtomicUsize>) -> Sent {
    let mut sent = Sent::default();
    let mut agent = agent();
    for i in (t..EVENTS).step_by(SENDERS) {
        let id = format!("soak-{}-{i:04}", std::process::id());
        let started = Instant::now();
        loop {
            if started.elapsed() > RETRY_FOR {
                sent.unacked.insert(id);
                break;
            }
            let target = url.lock().unwrap().clone();
            match send(&agent, &target, &id) {
                Some(status) => {
                    *sent.statuses.entry(status).or_default() += 1;
                    if (200..300).contains(&status) {
                        sent.acked.insert(id);
                        acked.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                None => {
                    sent.failures += 1;
                    // Pooled connections died with the process.
                    agent = self::agent();
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    sent
}

#[test]
fn kill9_during_a_stream_of_events_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start();
    let rules = write(dir.path(), "rules.yaml", &rules(&receiver.url("")));
    let data = dir.path().join("data.redb");

    let mut server = start(&rules, &data);
    let url = Arc::new(Mutex::new(server.url("/hooks/soak")));
    let acked = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let url = url.clone();
            let acked = acked.clone();
            std::thread::spawn(move || sender(t, url, acked))
        })
        .collect();

    // Kill at moments spread over the stream: after a share of the events
    // is in, plus a random few milliseconds.
    let mut rng = rand::rng();
    let mut kills = 0;
    for k in 1..=KILLS {
        let share = k * EVENTS / (KILLS + 1);
        wait_until(Duration::from_secs(30), || {
            acked.load(Ordering::SeqCst) >= share
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        if acked.load(Ordering::SeqCst) >= EVENTS {
            break;
        }
        server.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        server = start(&rules, &data);
        *url.lock().unwrap() = server.url("/hooks/soak");
    }
    let mut sent = Sent::default();
    for h in senders {
        let s = h.join().expect("sender");
        sent.acked.extend(s.acked);
        sent.unacked.extend(s.unacked);
        sent.failures += s.failures;
        for (k, v) in s.statuses {
            *sent.statuses.entry(k).or_default() += v;
        }
    }
    assert!(
        sent.unacked.is_empty(),
        "events never answered 2xx: {:?}\nlog:\n{}",
        sent.unacked,
        server.log()
    );
    assert_eq!(sent.acked.len(), EVENTS);
    // Random pauses can let the stream finish before the last kills; three
    // restarts under load still make the test mean something.
    assert!(
        kills >= KILLS - 2,
        "only {kills} kills landed while events were flowing"
    );

    let lost = || -> Vec<String> {
        let got = delivered(&receiver);
        sent.acked
            .iter()
            .filter(|id| !got.contains_key(*id))
            .cloned()
            .collect()
    };
    wait_until(DRAIN, || lost().is_empty());
    let lost = lost();
    let got = delivered(&receiver);
    let deliveries: usize = got.values().sum();
    let duplicates = deliveries - got.len();
    eprintln!(
        "soak: {kills} kills, {} events acknowledged, {} requests without an answer, \
         statuses {:?}; {} delivered, {deliveries} deliveries, {duplicates} duplicates \
         ({:.1}%), {} lost",
        sent.acked.len(),
        sent.failures,
        sent.statuses,
        got.len(),
        100.0 * duplicates as f64 / got.len().max(1) as f64,
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged events were never delivered: {lost:?}\nlast log:\n{}",
        lost.len(),
        server.log()
    );
    let unknown: Vec<_> = got.keys().filter(|id| !sent.acked.contains(*id)).collect();
    assert!(unknown.is_empty(), "delivered but never sent: {unknown:?}");
}
