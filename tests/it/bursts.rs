//! Bursts and budgets end to end, with the real binary, signed GitHub
//! events and real processes: `debounce:` (one run per burst, on its newest
//! event, capped by `max_wait`, whole across a `kill -9`), `limit:` with
//! `over: drop` (counts that survive a restart) and `over: delay` (starts
//! spaced by the rate), and a 429 with `Retry-After` pausing a named limit
//! for every rule that names it; and, on PostgreSQL, a burst and a budget
//! fed through two replicas of one database.
//!
//! Shell runs append `run NAME COUNT FIRST_AT MS` lines to the test's
//! folder, so the tests check what ran and when, not only what the store
//! says.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{
    self, Answer, Receiver, Server, ServerOpts, as_refs, get, signed_headers, unique, wait_until,
};

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "s3cret";

/// Appends `run $1 $2 $3 MS` to `log`: the run's name, then what the rule
/// passes (the burst's count and first time, or nothing).
const MARK: &str = r#"#!/bin/sh
echo "run $1 $2 $3 $(date +%s%3N)" >> "$(dirname "$0")/log"
"#;

/// A tempdir with `rules.yaml` (a `github` source, then `body`, with
/// `@DIR@` standing for the tempdir), `mark.sh` and the data file.
struct Setup {
    dir: TempDir,
    rules: PathBuf,
}

impl Setup {
    fn new(body: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "sources:\n  - name: github\n    provider: github\n    secret: {SECRET}\n{}",
            body.replace("@DIR@", &dir.path().display().to_string())
        );
        let rules = support::write(dir.path(), "rules.yaml", &text);
        let p = support::write(dir.path(), "mark.sh", MARK);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Setup { dir, rules }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn start(&self) -> Server {
        ServerOpts::new(&self.rules, &self.path().join("data.redb"))
            .admin()
            .start()
    }

    /// Every `run` line: (name, count, first_at, ms).
    fn runs(&self) -> Vec<Run> {
        std::fs::read_to_string(self.path().join("log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    ["run", name, rest @ ..] => Some(Run {
                        name: (*name).to_owned(),
                        args: rest[..rest.len().saturating_sub(1)]
                            .iter()
                            .map(|s| (*s).to_owned())
                            .collect(),
                        ms: rest.last()?.parse().ok()?,
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    fn wait_runs(&self, n: usize, server: &Server) -> Vec<Run> {
        assert!(
            wait_until(WAIT, || self.runs().len() >= n),
            "want {n} runs, got {:?}\nlog:\n{}",
            self.runs(),
            server.log()
        );
        self.runs()
    }
}

#[derive(Debug, Clone)]
struct Run {
    name: String,
    args: Vec<String>,
    ms: u64,
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// POST a signed push with `body`; returns the event key.
fn send(server: &Server, body: &Value) -> String {
    let body = body.to_string().into_bytes();
    let mut headers = signed_headers("github", SECRET, &body, &unique("evt"));
    headers.push(("X-GitHub-Event".into(), "push".into()));
    headers.push(("Content-Type".into(), "application/json".into()));
    let resp = server.post("/hooks/github", &as_refs(&headers), &body);
    assert_eq!(resp.status, 202, "{}\nlog:\n{}", resp.body, server.log());
    resp.json()["key"].as_str().expect("key").to_owned()
}

/// Replays event `key` through the API.
fn replay(server: &Server, key: &str) {
    let resp = support::request(
        "POST",
        &server.admin_url(&format!("/api/replay/{key}")),
        &[],
        b"",
    );
    assert_eq!(resp.json()["status"], "replayed", "{}", resp.body);
}

/// The deliveries in `state`, from the API.
fn in_state(server: &Server, state: &str) -> Vec<Value> {
    let resp = get(
        &server.admin_url(&format!("/api/deliveries?state={state}&limit=1000")),
        &[],
    );
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.json()["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A rule debouncing pushes by `ref`, passing the note, count and first
/// time to `mark.sh`.
fn debounce_rules(quiet: &str, max_wait: &str) -> String {
    format!(
        r#"rules:
  - name: burst
    source: github
    event: push
    debounce: {{ key: "{{{{ body.ref }}}}", quiet: {quiet}, max_wait: {max_wait} }}
    actions:
      - shell: ["@DIR@/mark.sh", "{{{{ body.note }}}}", "{{{{ debounce.count }}}}", "{{{{ debounce.first_at }}}}"]
"#
    )
}

#[test]
fn a_burst_runs_once_on_its_newest_event_quiet_after_the_last() {
    let setup = Setup::new(&debounce_rules("2s", "60s"));
    let server = setup.start();
    let started = Instant::now();
    let mut keys = Vec::new();
    for i in 1..=5 {
        if i > 1 {
            std::thread::sleep(Duration::from_millis(400));
        }
        keys.push(send(
            &server,
            &json!({ "ref": "a", "note": format!("a{i}") }),
        ));
        if i == 3 {
            send(&server, &json!({ "ref": "b", "note": "b1" }));
        }
    }
    let last = now_ms();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the events were sent within one quiet period"
    );
    let runs = setup.wait_runs(2, &server);
    // Nothing else runs once the bursts are over.
    std::thread::sleep(Duration::from_millis(2500));
    let runs_after = setup.runs();
    assert_eq!(runs_after.len(), 2, "one run per key: {runs_after:?}");
    let a = runs
        .iter()
        .find(|r| r.name.starts_with('a'))
        .expect("a ran");
    assert_eq!(a.name, "a5", "the newest event's body");
    assert_eq!(a.args[0], "5", "debounce.count");
    assert!(
        a.args[1].ends_with('Z'),
        "debounce.first_at: {:?}",
        a.args[1]
    );
    assert!(
        a.ms + 150 >= last + 2000,
        "about 2 s after the last event: ran {} ms after it",
        a.ms as i64 - last as i64
    );
    assert!(a.ms < last + 8000, "not much later than 2 s: {runs:?}");
    let b = runs.iter().find(|r| r.name == "b1").expect("b ran apart");
    assert_eq!(b.args[0], "1");
    // The four older events of `a` are recorded coalesced.
    let coalesced = in_state(&server, "coalesced");
    assert_eq!(coalesced.len(), 4, "{coalesced:#?}");
    // A replay re-runs a coalesced event, as a burst of its own.
    let first = keys[0].clone();
    replay(&server, &first);
    let runs = setup.wait_runs(3, &server);
    let again = runs.iter().find(|r| r.name == "a1").expect("a1 replayed");
    assert_eq!(again.args[0], "1", "{runs:?}");
}

#[test]
fn a_burst_that_never_goes_quiet_runs_by_max_wait() {
    let setup = Setup::new(&debounce_rules("2s", "4s"));
    let server = setup.start();
    let first = now_ms();
    // One event a second, for longer than `max_wait`: never quiet for 2 s.
    for i in 0..7u64 {
        let target = first + i * 1000;
        std::thread::sleep(Duration::from_millis(target.saturating_sub(now_ms())));
        send(
            &server,
            &json!({ "ref": "a", "note": format!("a{}", i + 1) }),
        );
    }
    let runs = setup.wait_runs(1, &server);
    let run = &runs[0];
    let after = run.ms - first;
    assert!(
        (3_800..6_500).contains(&after),
        "a run by about 4 s after the first event, not 2 s after the last: {after} ms; {runs:?}"
    );
    let count: u32 = run.args[0].parse().expect("count");
    assert!(
        (4..=5).contains(&count),
        "the events of the first 4 s: {run:?}"
    );
    assert_eq!(run.name, format!("a{count}"), "on the newest event");
}

#[test]
fn a_burst_interrupted_by_kill_9_still_runs_exactly_once() {
    let setup = Setup::new(&debounce_rules("3s", "60s"));
    let mut server = setup.start();
    for i in 1..=3 {
        send(&server, &json!({ "ref": "a", "note": format!("a{i}") }));
        std::thread::sleep(Duration::from_millis(300));
    }
    server.kill9();
    assert!(setup.runs().is_empty(), "killed mid-window, before any run");
    let server = setup.start();
    // The burst goes on across the restart: a fourth event joins it.
    send(&server, &json!({ "ref": "a", "note": "a4" }));
    let runs = setup.wait_runs(1, &server);
    std::thread::sleep(Duration::from_millis(4000));
    let runs_after = setup.runs();
    assert_eq!(runs_after.len(), 1, "exactly one run: {runs_after:?}");
    assert_eq!(runs[0].name, "a4");
    assert_eq!(runs[0].args[0], "4", "the burst was not split");
}

#[test]
fn over_drop_keeps_its_count_across_a_restart() {
    let setup = Setup::new(
        r#"rules:
  - name: budget
    source: github
    event: push
    limit: [{ key: "{{ body.ref }}", rate: 5/h, over: drop }]
    actions:
      - shell: ["@DIR@/mark.sh", "{{ body.note }}"]
"#,
    );
    let mut server = setup.start();
    for i in 1..=7 {
        send(&server, &json!({ "ref": "a", "note": format!("a{i}") }));
    }
    // Another key has a budget of its own.
    send(&server, &json!({ "ref": "b", "note": "b1" }));
    let runs = setup.wait_runs(6, &server);
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    for n in ["a1", "a2", "a3", "a4", "a5", "b1"] {
        assert!(names.contains(&n), "{n} ran: {names:?}");
    }
    let dropped = in_state(&server, "dropped");
    assert_eq!(dropped.len(), 2, "{dropped:#?}");
    assert!(
        dropped[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("5 per 3600s")),
        "{dropped:#?}"
    );
    server.kill9();

    let server = setup.start();
    let key = send(&server, &json!({ "ref": "a", "note": "a8" }));
    let event = get(&server.admin_url(&format!("/api/events/{key}")), &[]).json();
    assert_eq!(
        event["deliveries"][0]["state"], "dropped",
        "a restart resets nothing: {event:#}"
    );
    std::thread::sleep(Duration::from_millis(500));
    // (A run whose success was not yet on disk at the kill may run again:
    // at least once. The eighth event never runs.)
    assert!(
        setup.runs().iter().all(|r| r.name != "a8"),
        "the dropped event did not run: {:?}",
        setup.runs()
    );
    // A replay is an explicit request: it re-runs a dropped event.
    replay(&server, &key);
    assert!(
        wait_until(WAIT, || setup.runs().iter().any(|r| r.name == "a8")),
        "the replay ran: {:?}",
        setup.runs()
    );
    let metrics = support::metrics_text(&server, None);
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("state=\"dropped\"") && l.trim_end().ends_with(" 3")),
        "the metrics count the dropped deliveries:\n{metrics}"
    );
}

#[test]
fn over_delay_spaces_starts_by_the_rate_and_drops_nothing() {
    let setup = Setup::new(
        r#"limits:
  - { name: api, rate: 2/s, over: delay }
rules:
  - name: spaced
    source: github
    event: push
    limit: [api]
    actions:
      - shell: ["@DIR@/mark.sh", "{{ body.note }}"]
"#,
    );
    let server = setup.start();
    for i in 1..=20 {
        send(&server, &json!({ "ref": "a", "note": format!("s{i}") }));
    }
    let mut runs = setup.wait_runs(20, &server);
    runs.sort_by_key(|r| r.ms);
    let gaps: Vec<u64> = runs.windows(2).map(|w| w[1].ms - w[0].ms).collect();
    assert!(
        gaps.iter().all(|&g| g >= 450),
        "starts at least 0.5 s apart (50 ms tolerance): {gaps:?}"
    );
    assert!(in_state(&server, "dropped").is_empty(), "none dropped");
    let names: std::collections::BTreeSet<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), 20, "every event ran once: {names:?}");
}

#[test]
fn a_429_with_retry_after_pauses_every_rule_under_the_named_limit() {
    a_429_pauses_the_named_limit(|setup| setup.start());
}

/// The same on PostgreSQL, where a paused delivery is handed back to the
/// database (`defer`, token-checked) rather than to the redb file.
#[test]
fn a_429_pauses_the_named_limit_on_postgresql() {
    let Some(admin) = crate::postgres::test_pg() else {
        return;
    };
    let schema = crate::postgres::Schema::create(&admin);
    a_429_pauses_the_named_limit(|setup| {
        let own = setup.path().join("pg");
        std::fs::create_dir_all(&own).expect("replica dir");
        ServerOpts::new(&setup.rules, &own.join("unused.redb"))
            .args(&["--store", &schema.url()])
            .admin()
            .start()
    });
}

fn a_429_pauses_the_named_limit(start: impl Fn(&Setup) -> Server) {
    let receiver = Receiver::start();
    receiver.script([Answer::status(429).header("Retry-After", "3")]);
    let setup = Setup::new(&format!(
        r#"limits:
  - {{ name: api, rate: 100/s, over: delay }}
rules:
  - name: first
    source: github
    event: push
    match: {{ $.ref: a }}
    limit: [api]
    actions:
      - http: {{ url: "{url}", json: {{ note: "{{{{ body.note }}}}" }} }}
        retry: {{ attempts: 3, backoff: 100ms }}
  - name: second
    source: github
    event: push
    match: {{ $.ref: b }}
    limit: [api]
    actions:
      - http: {{ url: "{url}", json: {{ note: "{{{{ body.note }}}}" }} }}
"#,
        url = receiver.url("/api")
    ));
    let server = start(&setup);
    send(&server, &json!({ "ref": "a", "note": "first" }));
    assert!(receiver.wait_count(1, WAIT), "the first call was made");
    let limited = receiver.requests()[0].at;
    // The other rule names the same limit: its call waits for the pause.
    send(&server, &json!({ "ref": "b", "note": "second" }));
    assert!(receiver.wait_count(3, WAIT), "log:\n{}", server.log());
    let requests = receiver.requests();
    for r in &requests[1..] {
        let waited = r.at.duration_since(limited);
        assert!(
            waited >= Duration::from_millis(2_900),
            "{} was sent {waited:?} after the 429; Retry-After said 3 s",
            String::from_utf8_lossy(&r.body)
        );
    }
    let bodies: Vec<String> = requests
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(bodies.iter().any(|b| b.contains("second")), "{bodies:?}");
    assert!(
        server.log().contains("limits paused"),
        "the pause is logged:\n{}",
        server.log()
    );
}

#[test]
fn config_errors_name_the_place_and_the_rule() {
    let setup = Setup::new(
        r#"limits:
  - { name: api, rate: 20/m, over: delay }
  - { name: bad, rate: 20/w, over: delay }
rules:
  - name: review
    source: github
    debounce: { key: "{{ body.number }}", quiet: 30s, max_wait: 5s }
    limit: [api, nope, { rate: 5/x, over: drop }, { rate: 5/h, over: later }]
    actions:
      - log: "{{ debounce.count }}"
"#,
    );
    let out = support::run(&["check", "--rules", &setup.rules.display().to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", support::stdout(&out));
    let text = format!("{}{}", support::stdout(&out), support::stderr(&out));
    let file = setup.rules.display().to_string();
    // Lines count the four-line source block `Setup` puts first.
    for want in [
        format!("{file}:7:24: limit \"bad\": invalid rate \"20/w\""),
        format!(
            "{file}:11:65: rule \"review\": `debounce.max_wait` (5s) is shorter than `quiet` (30s)"
        ),
        format!(
            "{file}:12:18: rule \"review\": `limit` names unknown limit \"nope\" (defined: api, bad)"
        ),
        format!("{file}:12:32: rule \"review\": invalid rate \"5/x\""),
        format!(
            "{file}:12:70: rule \"review\": `over` must be one of drop, delay, found \"later\""
        ),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
}

/// Two replicas of `setup`'s rules on the database at `url`, each with an
/// admin API.
fn two_replicas(setup: &Setup, url: &str) -> (Server, Server) {
    let start = |name: &str| {
        let own = setup.path().join(name);
        std::fs::create_dir_all(&own).expect("replica dir");
        ServerOpts::new(&setup.rules, &own.join("unused.redb"))
            .args(&["--store", url])
            .admin()
            .start()
    };
    (start("a"), start("b"))
}

#[test]
fn bursts_and_budgets_hold_across_two_replicas_on_postgresql() {
    let Some(admin) = crate::postgres::test_pg() else {
        return;
    };
    // A burst sent alternately to two replicas is one burst.
    let schema = crate::postgres::Schema::create(&admin);
    let setup = Setup::new(&debounce_rules("2s", "60s"));
    let (a, b) = two_replicas(&setup, &schema.url());
    for i in 1..=5 {
        let to = if i % 2 == 1 { &a } else { &b };
        send(to, &json!({ "ref": "a", "note": format!("a{i}") }));
        std::thread::sleep(Duration::from_millis(200));
    }
    let runs = setup.wait_runs(1, &a);
    std::thread::sleep(Duration::from_millis(3000));
    let runs_after = setup.runs();
    assert_eq!(runs_after.len(), 1, "one run for the burst: {runs_after:?}");
    assert_eq!(runs[0].name, "a5", "the newest event's body");
    assert_eq!(runs[0].args[0], "5", "debounce.count");
    assert_eq!(in_state(&b, "coalesced").len(), 4);
    drop((a, b));
    drop(schema);

    // A drop budget counts the events of both replicas.
    let schema = crate::postgres::Schema::create(&admin);
    let setup = Setup::new(
        r#"rules:
  - name: budget
    source: github
    event: push
    limit: [{ key: "{{ body.ref }}", rate: 5/h, over: drop }]
    actions:
      - shell: ["@DIR@/mark.sh", "{{ body.note }}"]
"#,
    );
    let (a, b) = two_replicas(&setup, &schema.url());
    for i in 1..=7 {
        let to = if i % 2 == 1 { &a } else { &b };
        send(to, &json!({ "ref": "a", "note": format!("a{i}") }));
    }
    setup.wait_runs(5, &a);
    let dropped = in_state(&a, "dropped");
    assert_eq!(dropped.len(), 2, "{dropped:#?}");
    std::thread::sleep(Duration::from_millis(1000));
    let runs = setup.runs();
    assert_eq!(runs.len(), 5, "5 runs, 2 dropped: {runs:?}");
}
