//! Faults of a store on PostgreSQL, through the real binary: the database
//! stopped under load (503 with `Retry-After`, `/readyz` false, recovery
//! without a restart, nothing acknowledged lost, retries never doubling a
//! delivery set), one of two replicas killed with `kill -9` under load (its
//! leased deliveries taken over by the other), and the `--store` flag
//! (refused beside `--data`, never echoing a password). The status and
//! metrics that say which store and rule set a replica runs are checked on
//! redb too.
//!
//! The PostgreSQL tests need `HOOKROUTER_TEST_PG` (see the README) and skip
//! without it, failing under `CI`. The outage test starts and stops a
//! cluster of its own with `scripts/pg-test-cluster.sh`, so it never stops
//! the shared one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::postgres::{Schema, psql, test_pg};
use crate::support::{
    Answer, Receiver, Resp, Server, ServerOpts, admin_get, agent_with_timeout, metrics_text,
    post_with, push_body, push_headers, received_counts, root, run, stderr, unique, wait_until,
    write,
};

const SECRET: &str = "faults-secret";
const WAIT: Duration = Duration::from_secs(60);

/// One signed push, as a sender would send it: its answer, or `None` when
/// the connection failed.
fn send(agent: &ureq::Agent, server: &Server, id: &str) -> Option<Resp> {
    let body = push_body("refs/heads/main", id);
    let headers = push_headers(SECRET, &body, id);
    post_with(agent, &server.url("/hooks/gh"), &headers, &body).ok()
}

fn header<'a>(resp: &'a Resp, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every push makes one HTTP call to `receiver` carrying the event's id.
fn rules(dir: &Path, receiver: &Receiver) -> PathBuf {
    write(
        dir,
        "rules.yaml",
        &format!(
            r#"sources:
  - name: gh
    provider: github
    secret: {SECRET}
rules:
  - name: forward
    source: gh
    event: push
    actions:
      - http:
          url: "{url}"
          json: {{ id: "{{{{ event.id }}}}" }}
        retry: {{ attempts: 100, backoff: 100ms, max_backoff: 1s }}
"#,
            url = receiver.url("/hook")
        ),
    )
}

/// A PostgreSQL cluster of this test's own, made by the repository's
/// script; deleted on drop.
struct Cluster {
    dir: String,
    url: String,
}

impl Cluster {
    fn start() -> Cluster {
        let out = script(&["start"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let var = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .to_owned()
        };
        Cluster {
            dir: var("HOOKROUTER_PG_DIR"),
            url: var("HOOKROUTER_TEST_PG"),
        }
    }

    /// `pg_ctl stop -m fast`: connections are cut, the folder stays.
    fn halt(&self) {
        script(&["halt", &self.dir]);
    }

    /// Starts it again on the same port and folder.
    fn resume(&self) {
        script(&["resume", &self.dir]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/pg-test-cluster.sh"))
            .args(["stop", &self.dir])
            .output();
    }
}

fn script(args: &[&str]) -> std::process::Output {
    let out = Command::new(root().join("scripts/pg-test-cluster.sh"))
        .args(args)
        .output()
        .expect("run scripts/pg-test-cluster.sh");
    assert!(out.status.success(), "pg-test-cluster.sh {args:?}: {out:?}");
    out
}

/// What a sender saw for one event id.
#[derive(Debug, Clone)]
struct Sent {
    id: String,
    at: Instant,
    status: Option<u16>,
    retry_after: Option<String>,
}

/// Sends pushes to `server` one after another until `stop`, recording each
/// answer.
fn sender(
    server_url: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let agent = agent_with_timeout(Duration::from_secs(30));
        while !stop.load(Ordering::Relaxed) {
            let id = unique("pg-down");
            let body = push_body("refs/heads/main", &id);
            let headers = push_headers(SECRET, &body, &id);
            let at = Instant::now();
            let resp = post_with(&agent, &format!("{server_url}/hooks/gh"), &headers, &body).ok();
            log.lock().unwrap().push(Sent {
                id,
                at,
                status: resp.as_ref().map(|r| r.status),
                retry_after: resp
                    .as_ref()
                    .and_then(|r| header(r, "retry-after").map(str::to_owned)),
            });
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn count(url: &str, sql: &str) -> usize {
    psql(url, sql).trim().parse().expect("a count")
}

#[test]
fn postgres_stopped_under_load_answers_503_then_recovers_losing_nothing() {
    if test_pg().is_none() {
        return;
    }
    let cluster = Cluster::start();
    // Slow enough that deliveries are running when the database goes, so
    // their outcomes have to wait for it to come back.
    let receiver = Receiver::answering(Answer::status(200).delay(Duration::from_millis(500)));
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules(dir.path(), &receiver);
    let mut server = ServerOpts::new(&rules, &dir.path().join("unused.redb"))
        .args(&[
            "--store",
            &cluster.url,
            "--store-timeout",
            "1s",
            // Longer than the outage: a lease outlives it, and only a
            // finish recorded after it ends its delivery.
            "--lease-ttl",
            "10s",
        ])
        .admin()
        .start();
    let ready = admin_get(&server, "/readyz", None);
    assert_eq!(ready.status, 200, "{ready:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let sending = sender(server.url(""), stop.clone(), log.clone());
    assert!(
        wait_until(WAIT, || log.lock().unwrap().len() >= 20),
        "the sender got nowhere"
    );

    cluster.halt();
    let halted = Instant::now();
    // Answered 503 with Retry-After, and /readyz says why.
    assert!(
        wait_until(WAIT, || log.lock().unwrap().iter().any(|s| s.at > halted
            && s.status == Some(503)
            && s.retry_after.is_some())),
        "no 503 with Retry-After while the database was down; log:\n{}",
        server.log()
    );
    let mut down = None;
    assert!(
        wait_until(WAIT, || {
            let r = admin_get(&server, "/readyz", None);
            let hit = r.status == 503;
            down = Some(r);
            hit
        }),
        "/readyz stayed ready: {down:?}"
    );
    let down = down.expect("an answer").json();
    assert_eq!(down["ready"], false, "{down}");
    assert_eq!(down["reason"], "store unreachable", "{down}");
    // Long enough for every loop of the server to meet the outage.
    std::thread::sleep(Duration::from_secs(3));

    cluster.resume();
    let resumed = Instant::now();
    assert!(
        wait_until(WAIT, || admin_get(&server, "/readyz", None).status == 200),
        "/readyz did not recover: {:?}\nlog:\n{}",
        admin_get(&server, "/readyz", None),
        server.log()
    );
    assert!(
        server.child.try_wait().expect("child").is_none(),
        "the server exited; log:\n{}",
        server.log()
    );
    assert!(
        wait_until(WAIT, || log
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.at > resumed && s.status == Some(202))
            .count()
            >= 10),
        "new events were not accepted after the database came back; log:\n{}",
        server.log()
    );
    stop.store(true, Ordering::Relaxed);
    sending.join().expect("sender");
    let sent = log.lock().unwrap().clone();

    // Never a 2xx but 202 or 200; each refusal was 503 with Retry-After.
    for s in &sent {
        match s.status {
            Some(202 | 200) => {}
            Some(503) => assert!(s.retry_after.is_some(), "503 without Retry-After: {s:?}"),
            other => panic!("unexpected answer {other:?} for {}", s.id),
        }
    }
    let refused: Vec<&Sent> = sent.iter().filter(|s| s.status != Some(202)).collect();
    assert!(!refused.is_empty(), "nothing was refused during the outage");

    // The senders' retries: each resolves to a fresh accept or, when the
    // refused commit had landed after all, to `duplicate`.
    let agent = agent_with_timeout(Duration::from_secs(30));
    let mut duplicates = 0;
    for s in &refused {
        let r = send(&agent, &server, &s.id).expect("resend");
        match r.status {
            202 => {}
            200 => duplicates += 1,
            other => panic!("resend of {} answered {other}: {r:?}", s.id),
        }
    }
    let ids: Vec<&str> = sent.iter().map(|s| s.id.as_str()).collect();
    assert!(
        wait_until(WAIT, || {
            let got = received_counts(&receiver);
            ids.iter().all(|id| got.contains_key(*id))
        }),
        "lost: {:?}\nlog:\n{}",
        ids.iter()
            .filter(|id| !received_counts(&receiver).contains_key(**id))
            .collect::<Vec<_>>(),
        server.log()
    );
    // One event and one delivery per id: no retry made a second set.
    assert_eq!(
        count(&cluster.url, "SELECT count(*) FROM hookrouter_events"),
        ids.len()
    );
    assert_eq!(
        count(&cluster.url, "SELECT count(*) FROM hookrouter_deliveries"),
        ids.len()
    );
    assert!(
        wait_until(WAIT, || count(
            &cluster.url,
            "SELECT count(*) FROM hookrouter_deliveries WHERE state <> 'done'"
        ) == 0),
        "deliveries left unfinished"
    );
    let twice = received_counts(&receiver)
        .values()
        .filter(|n| **n > 1)
        .count();
    eprintln!(
        "PostgreSQL stopped under load: {} events sent, {} refused (503) and resent, {} of those already committed (duplicate), 0 lost, {} delivered more than once",
        ids.len(),
        refused.len(),
        duplicates,
        twice
    );

    let metrics = metrics_text(&server, None);
    for needle in [
        "hookrouter_store_info{engine=\"postgres\"} 1",
        "hookrouter_store_pool_max_size 16",
        "hookrouter_store_pool_size ",
        "hookrouter_store_pool_available ",
        "hookrouter_store_pool_waiting ",
        "hookrouter_store_commit_seconds_count ",
    ] {
        assert!(metrics.contains(needle), "no {needle} in:\n{metrics}");
    }
}

#[test]
fn kill9_one_of_two_replicas_under_load_the_other_finishes_its_deliveries() {
    let Some(admin) = test_pg() else {
        return;
    };
    let schema = Schema::create(&admin);
    let receiver = Receiver::answering(Answer::status(200).delay(Duration::from_millis(300)));
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules(dir.path(), &receiver);
    let replica = |name: &str| {
        let own = dir.path().join(name);
        std::fs::create_dir_all(&own).expect("replica dir");
        ServerOpts::new(&rules, &own.join("unused.redb"))
            .args(&["--store", &schema.url(), "--lease-ttl", "2s"])
            .admin()
            .start()
    };
    let mut a = replica("a");
    let b = replica("b");
    // Both replicas show the same rule set.
    let digest = |s: &Server| admin_get(s, "/api/status", None).json()["rules_digest"].clone();
    assert!(
        digest(&a).as_str().is_some_and(|d| d.len() == 16),
        "{}",
        digest(&a)
    );
    assert_eq!(digest(&a), digest(&b));

    const N: usize = 60;
    let agent = agent_with_timeout(Duration::from_secs(30));
    let mut acknowledged = Vec::new();
    let mut leased_at_kill = 0;
    for i in 0..N {
        let id = unique("pg-kill");
        let target = if i < N / 2 && i % 2 == 0 { &a } else { &b };
        let r = send(&agent, target, &id).expect("send");
        assert_eq!(r.status, 202, "{r:?}");
        acknowledged.push(id);
        if i == N / 2 {
            // Mid-way, with A's deliveries running against the slow receiver.
            a.kill9();
            leased_at_kill = count(
                &schema.url(),
                "SELECT count(*) FROM hookrouter_deliveries WHERE state = 'leased'",
            );
        }
    }
    assert!(
        wait_until(WAIT, || {
            let got = received_counts(&receiver);
            acknowledged.iter().all(|id| got.contains_key(id))
        }),
        "lost after kill -9: {:?}\nb:\n{}",
        acknowledged
            .iter()
            .filter(|id| !received_counts(&receiver).contains_key(*id))
            .collect::<Vec<_>>(),
        b.log()
    );
    assert!(
        wait_until(WAIT, || count(
            &schema.url(),
            "SELECT count(*) FROM hookrouter_deliveries WHERE state <> 'done'"
        ) == 0),
        "deliveries left unfinished; b:\n{}",
        b.log()
    );
    let got = received_counts(&receiver);
    let twice: BTreeMap<&String, &usize> = got.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "kill -9 one of two replicas: {} acknowledged, 0 lost, {} leased when A died, {} delivered more than once (A died mid-request): {:?}",
        acknowledged.len(),
        leased_at_kill,
        twice.len(),
        twice
    );
}

/// Runs `hookrouter serve` in `dir` with `args` (and `env`), which should refuse to
/// start: killed after 20 s if it serves instead, so the test fails rather
/// than hangs. Its exit code and stderr.
fn refused_serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(crate::support::BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .env_remove("HOOKROUTER_RULES")
        .env_remove("HOOKROUTER_DATA")
        .env_remove("HOOKROUTER_STORE")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start hookrouter");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    (out.status.code(), stderr(&out))
}

#[test]
fn store_and_data_together_are_refused_and_no_password_is_echoed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write(dir.path(), "rules.yaml", "sources: []\nrules: []\n");
    let rules = rules.to_str().expect("utf-8");
    let data = dir.path().join("x.redb");
    let data = data.to_str().expect("utf-8");

    for store in ["redb:other.redb", "postgres://u:secret-pw@127.0.0.1/db"] {
        let (code, err) = refused_serve(
            dir.path(),
            &["--rules", rules, "--store", store, "--data", data],
            &[],
        );
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("'--store <URL>' cannot be used with '--data <PATH>'"),
            "{err}"
        );
        assert!(!err.contains("secret-pw"), "{err}");
    }

    // Invalid URLs with a password in them, as a flag and from the
    // environment: the error names the flag, never the value.
    for bad in [
        "postgres://u:secret-pw@127.0.0.1:notaport/db",
        "postgres://u:secret-pw@127.0.0.1/db?sslmode=sometimes",
        "mysql://u:secret-pw@127.0.0.1/db",
    ] {
        let (code, err) = refused_serve(dir.path(), &["--rules", rules, "--store", bad], &[]);
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("invalid value for '--store <URL>'"), "{err}");
        assert!(!err.contains("secret-pw"), "{bad}: {err}");
        let out = run(&["migrate", "--store", bad]);
        assert!(!stderr(&out).contains("secret-pw"), "{}", stderr(&out));
        let (code, err) = refused_serve(
            dir.path(),
            &["--rules", rules],
            &[("HOOKROUTER_STORE", bad)],
        );
        assert_eq!(code, Some(2), "{err}");
        assert!(!err.contains("secret-pw"), "{bad}: {err}");
    }
}

#[test]
fn status_and_metrics_name_the_store_and_the_rules_digest_which_follows_a_reload() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules(dir.path(), &receiver);
    let data = dir.path().join("data.redb");
    let server = ServerOpts::new(&rules, &data).admin().start();

    let ready = admin_get(&server, "/readyz", None).json();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(
        ready["store_url"],
        format!("redb:{}", data.display()),
        "{ready}"
    );
    let first = ready["rules_digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(first.len(), 16, "{ready}");
    assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{ready}");

    let status = admin_get(&server, "/api/status", None).json();
    assert_eq!(status["rules_digest"], first.as_str(), "{status}");
    assert_eq!(status["store"]["engine"], "redb", "{status}");
    assert_eq!(
        status["store"]["url"],
        format!("redb:{}", data.display()),
        "{status}"
    );
    assert_eq!(status["store"]["writable"], true, "{status}");
    // The digest says nothing about the secret.
    assert!(!status.to_string().contains(SECRET), "{status}");

    let agent = agent_with_timeout(Duration::from_secs(30));
    let r = send(&agent, &server, &unique("digest")).expect("send");
    assert_eq!(r.status, 202, "{r:?}");
    let metrics = metrics_text(&server, None);
    assert!(
        metrics.contains("hookrouter_store_info{engine=\"redb\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hookrouter_store_commit_seconds_count 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("hookrouter_store_pool"), "{metrics}");

    // Another rule set, another digest, once the reload is in.
    let text = std::fs::read_to_string(&rules).expect("read");
    std::fs::write(&rules, text.replace("attempts: 100", "attempts: 99")).expect("write");
    assert!(
        wait_until(Duration::from_secs(20), || {
            admin_get(&server, "/api/status", None).json()["rules_digest"] != first.as_str()
        }),
        "the digest did not follow the reload; log:\n{}",
        server.log()
    );
    let reloaded = admin_get(&server, "/readyz", None).json();
    assert_ne!(reloaded["rules_digest"], first.as_str(), "{reloaded}");
}
