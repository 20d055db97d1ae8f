//! Agent controls end to end, with real processes and a real receiver:
//! groups (`on_busy: cancel | queue | replace | skip`), `then:` with
//! `result`, an action `when:` that is false, `stdin:` of several MiB,
//! `start_within:` across a restart, a `kill -9` between a parent's exit and
//! its `then:` child's request, the `cancel:` action, a group key that
//! renders empty, and a group's order and cancels across a restart.
//!
//! The runs are shell scripts that write timestamped markers (`start`,
//! `term` when SIGTERM arrives, `end`) into the test's folder, so the tests
//! check what the processes did and when, not only what the store says.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{
    self, Receiver, Server, ServerOpts, as_refs, get, signed_headers, unique, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "s3cret";

/// A run named `$1` lasting `$2` seconds. It appends `start NAME MS`, then
/// `end NAME MS` (or `term NAME MS` and `end NAME MS` on SIGTERM, exiting at
/// once) to `log`, and its pid to `pid-NAME`. The sleep runs in the
/// background so the trap fires the moment the signal arrives.
const RUN: &str = r#"#!/bin/sh
dir="$(dirname "$0")"
name="$1"
ms() { date +%s%3N; }
echo "$$" > "$dir/pid-$name"
trap 'echo "term $name $(ms)" >> "$dir/log"; echo "end $name $(ms)" >> "$dir/log"; exit 143' TERM
echo "start $name $(ms)" >> "$dir/log"
sleep "$2" &
wait $!
echo "end $name $(ms)" >> "$dir/log"
"#;

/// A tempdir holding `rules.yaml` (a `github` source, then `rules` with
/// `@DIR@` standing for the tempdir), `run.sh` and the data file.
struct Setup {
    dir: TempDir,
    rules: PathBuf,
}

impl Setup {
    fn new(rules: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "sources:\n  - name: github\n    provider: github\n    secret: {SECRET}\nrules:\n{}",
            rules.replace("@DIR@", &dir.path().display().to_string())
        );
        let rules = support::write(dir.path(), "rules.yaml", &text);
        let setup = Setup { dir, rules };
        setup.script("run.sh", RUN);
        setup
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn opts(&self) -> ServerOpts {
        ServerOpts::new(&self.rules, &self.path().join("data.redb")).admin()
    }

    fn start(&self) -> Server {
        self.opts().start()
    }

    fn script(&self, name: &str, text: &str) {
        let p = support::write(self.path(), name, text);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_default()
    }

    /// The markers in `log`, in the order they were written.
    fn marks(&self) -> Vec<Mark> {
        self.read("log")
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some(Mark {
                    what: f.next()?.to_owned(),
                    name: f.next()?.to_owned(),
                    ms: f.next()?.parse().ok()?,
                })
            })
            .collect()
    }

    /// When run `name` wrote marker `what`, if it did.
    fn mark(&self, what: &str, name: &str) -> Option<u64> {
        self.marks()
            .into_iter()
            .find(|m| m.what == what && m.name == name)
            .map(|m| m.ms)
    }

    fn wait_mark(&self, what: &str, name: &str) -> u64 {
        assert!(
            wait_until(WAIT, || self.mark(what, name).is_some()),
            "no `{what} {name}` marker; markers: {:?}",
            self.read("log")
        );
        self.mark(what, name).expect("marker")
    }

    /// SIGKILL the process group of run `name`, so no test leaves it behind.
    fn kill_run(&self, name: &str) {
        if let Ok(pid) = self.read(&format!("pid-{name}")).trim().parse::<i32>() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[derive(Debug)]
struct Mark {
    what: String,
    name: String,
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

/// POST a signed GitHub `event` with `body`; returns the event key.
fn send_raw(server: &Server, event: &str, body: &Value) -> String {
    let body = body.to_string().into_bytes();
    let mut headers = signed_headers("github", SECRET, &body, &unique("evt"));
    headers.push(("X-GitHub-Event".into(), event.into()));
    headers.push(("Content-Type".into(), "application/json".into()));
    let resp = server.post("/hooks/github", &as_refs(&headers), &body);
    assert_eq!(resp.status, 202, "{}\nlog:\n{}", resp.body, server.log());
    resp.json()["key"].as_str().expect("key").to_owned()
}

/// A `pull_request` event (`action`) on PR `number`, whose run is `name`
/// lasting `secs`.
fn send_pr(server: &Server, action: &str, number: u32, name: &str, secs: &str) -> String {
    send_raw(
        server,
        "pull_request",
        &json!({
            "action": action,
            "number": number,
            "pull_request": { "number": number },
            "name": name,
            "secs": secs,
        }),
    )
}

fn event(server: &Server, key: &str) -> Value {
    let resp = get(&server.admin_url(&format!("/api/events/{key}")), &[]);
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.json()
}

fn deliveries(server: &Server, key: &str) -> Vec<Value> {
    event(server, key)["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn states(server: &Server, key: &str) -> Vec<String> {
    deliveries(server, key)
        .iter()
        .map(|d| d["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn wait_states(server: &Server, key: &str, want: &[&str]) {
    assert!(
        wait_until(WAIT, || states(server, key) == want),
        "want {want:?}, got {:#}\nlog:\n{}",
        event(server, key),
        server.log()
    );
}

/// One rule running `run.sh NAME SECS` for `pull_request.opened`, grouped by
/// PR number with `on_busy`.
fn group_rules(on_busy: &str) -> String {
    format!(
        r#"  - name: review
    source: github
    event: pull_request.opened
    actions:
      - shell: ["@DIR@/run.sh", "{{{{ body.name }}}}", "{{{{ body.secs }}}}"]
        group: {{ key: "{{{{ body.pull_request.number }}}}", on_busy: {on_busy}, kill_grace: 1s }}
        timeout: 30s
"#
    )
}

/// `[start, end]` of run `name`, waiting for both.
fn span(setup: &Setup, name: &str) -> (u64, u64) {
    (setup.wait_mark("start", name), setup.wait_mark("end", name))
}

fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[test]
fn on_busy_cancel_stops_the_running_member_and_runs_the_new_one() {
    let setup = Setup::new(&group_rules("cancel"));
    let server = setup.start();
    let a = send_pr(&server, "opened", 1, "A", "20");
    // A's trap must be set before the signal can fire it.
    setup.wait_mark("start", "A");
    let b = send_pr(&server, "opened", 1, "B", "1");
    let c = send_pr(&server, "opened", 2, "C", "1");

    let term_a = setup.wait_mark("term", "A");
    wait_states(&server, &a, &["cancelled"]);
    let (_, end_a) = span(&setup, "A");
    let (start_b, end_b) = span(&setup, "B");
    let (start_c, end_c) = span(&setup, "C");
    assert!(term_a <= end_a);
    assert!(
        start_b >= end_a,
        "B started at {start_b}, before A ended at {end_a}"
    );
    assert!(
        overlap((start_b, end_b), (start_c, end_c)),
        "C ({start_c}..{end_c}) did not overlap B ({start_b}..{end_b})"
    );
    wait_states(&server, &b, &["done"]);
    wait_states(&server, &c, &["done"]);
}

#[test]
fn on_busy_queue_runs_in_arrival_order_and_other_keys_in_parallel() {
    let setup = Setup::new(&group_rules("queue"));
    let server = setup.start();
    let a = send_pr(&server, "opened", 1, "A", "0.6");
    let b = send_pr(&server, "opened", 1, "B", "0.6");
    let c = send_pr(&server, "opened", 2, "C", "0.6");
    for key in [&a, &b, &c] {
        wait_states(&server, key, &["done"]);
    }
    let a_span = span(&setup, "A");
    let b_span = span(&setup, "B");
    let c_span = span(&setup, "C");
    assert!(
        b_span.0 >= a_span.1,
        "B {b_span:?} started before A {a_span:?} ended"
    );
    assert!(
        overlap(a_span, c_span),
        "C {c_span:?} did not run beside A {a_span:?}"
    );
    assert!(setup.mark("term", "A").is_none() && setup.mark("term", "B").is_none());
}

#[test]
fn on_busy_replace_runs_only_the_newest_waiting_member() {
    let setup = Setup::new(&group_rules("replace"));
    let server = setup.start();
    let a = send_pr(&server, "opened", 1, "A", "1");
    setup.wait_mark("start", "A");
    let b1 = send_pr(&server, "opened", 1, "B1", "0.1");
    let b2 = send_pr(&server, "opened", 1, "B2", "0.1");
    let b3 = send_pr(&server, "opened", 1, "B3", "0.1");
    wait_states(&server, &a, &["done"]);
    wait_states(&server, &b3, &["done"]);
    wait_states(&server, &b1, &["superseded"]);
    wait_states(&server, &b2, &["superseded"]);
    let (_, end_a) = span(&setup, "A");
    let (start_b3, _) = span(&setup, "B3");
    assert!(start_b3 >= end_a, "B3 started before A ended");
    assert!(setup.mark("term", "A").is_none(), "replace stopped A");
    for name in ["B1", "B2"] {
        assert!(
            setup.mark("start", name).is_none(),
            "{name} ran: {}",
            setup.read("log")
        );
    }
}

#[test]
fn on_busy_skip_records_skipped_and_never_spawns() {
    let setup = Setup::new(&group_rules("skip"));
    let server = setup.start();
    let a = send_pr(&server, "opened", 1, "A", "1");
    let b = send_pr(&server, "opened", 1, "B", "0.1");
    let c = send_pr(&server, "opened", 2, "C", "0.1");
    wait_states(&server, &b, &["skipped"]);
    wait_states(&server, &c, &["done"]);
    wait_states(&server, &a, &["done"]);
    assert!(
        setup.mark("start", "B").is_none() && setup.read("pid-B").is_empty(),
        "B was spawned: {}",
        setup.read("log")
    );
}

#[test]
fn then_child_posts_the_result_once_and_a_false_when_is_skipped() {
    let receiver = Receiver::start();
    let setup = Setup::new(&format!(
        r#"  - name: answer
    source: github
    event: push
    actions:
      - shell: ["sh", "-c", "echo '{{\"result\":\"hi\"}}'"]
        then:
          - http:
              url: {url}
              json: {{ body: "{{{{ result.json.result }}}}" }}
            when: "{{{{ result.json.result is defined }}}}"
          - http:
              url: {url}
              json: {{ body: never }}
            when: "{{{{ result.json.missing is defined }}}}"
"#,
        url = receiver.url("/answer")
    ));
    let server = setup.start();
    let key = send_raw(&server, "push", &json!({ "n": 1 }));
    wait_states(&server, &key, &["done", "done", "skipped"]);
    // Nothing else is on its way.
    std::thread::sleep(Duration::from_millis(300));
    let bodies: Vec<Value> = receiver
        .bodies()
        .iter()
        .map(|b| serde_json::from_slice(b).expect("json"))
        .collect();
    assert_eq!(bodies, [json!({"body": "hi"})]);
    // The children know their parent.
    let rows = deliveries(&server, &key);
    let parent = rows[0]["id"].clone();
    assert_eq!(rows[1]["parent"], parent, "{rows:#?}");
    assert_eq!(rows[2]["parent"], parent, "{rows:#?}");
}

#[test]
fn a_failed_parent_sends_no_follow_up_and_runs_on_failure() {
    let receiver = Receiver::start();
    let setup = Setup::new(&format!(
        r#"  - name: answer
    source: github
    event: push
    actions:
      - shell: ["sh", "-c", "echo '{{\"result\":\"hi\"}}'; exit 1"]
        retry: {{ attempts: 1 }}
        then:
          - http: {{ url: "{then}", json: {{ body: "{{{{ result.json.result }}}}" }} }}
    on_failure:
      - http: {{ url: "{failed}", json: {{ reason: "{{{{ failure.last_error }}}}" }} }}
"#,
        then = receiver.url("/then"),
        failed = receiver.url("/failed"),
    ));
    let server = setup.start();
    let key = send_raw(&server, "push", &json!({ "n": 1 }));
    wait_states(&server, &key, &["dead", "done"]);
    std::thread::sleep(Duration::from_millis(300));
    let urls: Vec<String> = receiver.requests().into_iter().map(|r| r.url).collect();
    assert_eq!(urls, ["/failed"]);
}

#[test]
fn two_mib_of_stdin_reach_the_child_whole_and_stay_out_of_its_cmdline() {
    // The script copies its own cmdline, then counts stdin while echoing
    // all of it to stderr, so the runner must write stdin while reading
    // the child's output.
    let setup = Setup::new(
        r#"  - name: prompt
    source: github
    event: push
    actions:
      - shell: ["@DIR@/count.sh"]
        stdin: "{{ body.payload }}"
"#,
    );
    setup.script(
        "count.sh",
        r#"#!/bin/sh
dir="$(dirname "$0")"
tr '\0' ' ' < /proc/$$/cmdline > "$dir/cmdline"
tee /dev/stderr | wc -c > "$dir/count"
"#,
    );
    let server = setup.start();
    let marker = "PROMPT-7f3a";
    let payload = format!("{marker}{}", "x".repeat(2 * 1024 * 1024 - marker.len()));
    let key = send_raw(&server, "push", &json!({ "payload": payload }));
    wait_states(&server, &key, &["done"]);
    assert_eq!(setup.read("count").trim(), (2 * 1024 * 1024).to_string());
    let cmdline = setup.read("cmdline");
    assert!(cmdline.contains("count.sh"), "{cmdline}");
    assert!(!cmdline.contains(marker), "the payload is in the cmdline");
}

#[test]
fn start_within_expires_a_delivery_kept_waiting_across_a_restart() {
    let receiver = Receiver::start();
    // `hold.sh` runs long the first time and exits at once after, so the
    // member holding the group re-runs quickly after the restart.
    let setup = Setup::new(&format!(
        r#"  - name: review
    source: github
    event: push
    actions:
      - shell: ["@DIR@/hold.sh", "{{{{ body.name }}}}"]
        group: {{ key: one, kill_grace: 1s }}
        start_within: 1s
        timeout: 30s
    on_failure:
      - http: {{ url: "{url}", json: {{ reason: "{{{{ failure.reason }}}}" }} }}
"#,
        url = receiver.url("/failed")
    ));
    setup.script(
        "hold.sh",
        r#"#!/bin/sh
dir="$(dirname "$0")"
echo "$$" > "$dir/pid-$1"
echo "start $1 0" >> "$dir/log"
[ -e "$dir/held-$1" ] && exit 0
touch "$dir/held-$1"
sleep 30 &
wait $!
"#,
    );
    let mut server = setup.opts().arg("--grace").arg("100ms").start();
    let a = send_raw(&server, "push", &json!({ "name": "A" }));
    setup.wait_mark("start", "A");
    let b = send_raw(&server, "push", &json!({ "name": "B" }));
    wait_until(WAIT, || states(&server, &b) == ["pending"]);
    server.terminate().expect("server stopped");
    setup.kill_run("A");
    std::thread::sleep(Duration::from_millis(1_200));

    let server = setup.start();
    wait_states(&server, &b, &["expired", "done"]);
    wait_states(&server, &a, &["done"]);
    std::thread::sleep(Duration::from_millis(300));
    let bodies: Vec<Value> = receiver
        .bodies()
        .iter()
        .map(|b| serde_json::from_slice(b).expect("json"))
        .collect();
    assert_eq!(bodies, [json!({"reason": "expired"})]);
    assert!(setup.mark("start", "B").is_none(), "B ran");
}

#[test]
fn kill_9_between_a_parent_success_and_its_child_request_sends_the_child_once() {
    // The child's receiver is not there yet: its attempts are refused, so
    // the server is killed with the parent's success recorded and the
    // child's request still to make.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/answer");
    let setup = Setup::new(&format!(
        r#"  - name: answer
    source: github
    event: push
    actions:
      - shell: ["@DIR@/parent.sh"]
        then:
          - http: {{ url: "{url}", json: {{ body: "{{{{ result.json.result }}}}" }} }}
            retry: {{ attempts: 50, backoff: 200ms, max_backoff: 200ms }}
"#
    ));
    setup.script(
        "parent.sh",
        r#"#!/bin/sh
echo run >> "$(dirname "$0")/runs"
echo '{"result":"hi"}'
"#,
    );
    let mut server = setup.start();
    let key = send_raw(&server, "push", &json!({ "n": 1 }));
    assert!(
        wait_until(WAIT, || {
            let rows = deliveries(&server, &key);
            rows.len() == 2 && rows[0]["state"] == "done" && rows[1]["last_error"].is_string()
        }),
        "{:#}",
        event(&server, &key)
    );
    server.kill9();

    let receiver = Receiver::start_on(&format!("127.0.0.1:{port}"));
    let server = setup.start();
    wait_states(&server, &key, &["done", "done"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.count(), 1, "{:?}", receiver.bodies());
    assert_eq!(receiver.bodies()[0], br#"{"body":"hi"}"#);
    assert_eq!(setup.read("runs").lines().count(), 1, "the parent re-ran");
}

#[test]
fn a_closed_pull_request_cancels_its_running_review_within_a_second() {
    let setup = Setup::new(
        r#"  - name: review
    source: github
    event: pull_request.opened
    actions:
      - shell: ["@DIR@/run.sh", "{{ body.name }}", "20"]
        group: { key: "{{ body.pull_request.number }}", on_busy: cancel, kill_grace: 1s }
        timeout: 30s
    on_cancel:
      - log: "review-cancelled[{{ body.pull_request.number }}] {{ cancel.reason }}"
  - name: stop-review
    source: github
    event: pull_request.closed
    actions:
      - cancel: { rule: review, key: "{{ body.pull_request.number }}" }
"#,
    );
    let server = setup.start();
    let review = send_pr(&server, "opened", 7, "A", "20");
    let other = send_pr(&server, "opened", 8, "B", "20");
    setup.wait_mark("start", "A");
    setup.wait_mark("start", "B");
    let closed = send_pr(&server, "closed", 7, "-", "0");
    let sent = now_ms();
    let term = setup.wait_mark("term", "A");
    assert!(
        term.saturating_sub(sent) < 1_000,
        "SIGTERM reached the run {} ms after the 202",
        term.saturating_sub(sent)
    );
    wait_states(&server, &review, &["cancelled", "done"]);
    wait_states(&server, &closed, &["done"]);
    assert!(
        server.wait_log("review-cancelled[7]", 1, WAIT),
        "{}",
        server.log()
    );
    // The other pull request's review is untouched.
    assert_eq!(states(&server, &other), ["leased"]);
    assert!(setup.mark("term", "B").is_none());
    setup.kill_run("B");
}

#[test]
fn a_group_key_that_renders_empty_is_dead_with_a_clear_message() {
    let setup = Setup::new(
        r#"  - name: review
    source: github
    event: push
    actions:
      - shell: ["@DIR@/run.sh", "A", "0"]
        group: { key: "{{ body.missing | default('') }}" }
    on_failure:
      - log: "group-failed[{{ failure.last_error }}]"
"#,
    );
    let server = setup.start();
    let key = send_raw(&server, "push", &json!({ "n": 1 }));
    wait_states(&server, &key, &["dead", "done"]);
    let rows = deliveries(&server, &key);
    assert!(
        rows[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("group key rendered empty")),
        "{rows:#?}"
    );
    assert!(setup.mark("start", "A").is_none(), "the run was spawned");
}

#[test]
fn on_busy_cancel_stops_a_member_leased_in_the_same_batch_as_the_newer_one() {
    // A and B wait in the store while four runs fill what one worker may
    // have leased at once; after a restart one lease takes both: A is let in and B, finding the
    // group full, cancels it in the same decision. A must still be stopped,
    // not left to run to its end while B waits.
    let setup = Setup::new(&format!(
        "{}{}",
        group_rules("cancel"),
        r#"  - name: hold
    source: github
    event: push
    actions:
      - shell: ["@DIR@/hold.sh", "H1"]
      - shell: ["@DIR@/hold.sh", "H2"]
      - shell: ["@DIR@/hold.sh", "H3"]
      - shell: ["@DIR@/hold.sh", "H4"]
"#
    ));
    setup.script(
        "hold.sh",
        r#"#!/bin/sh
dir="$(dirname "$0")"
echo "$$" > "$dir/pid-$1"
echo "start $1 0" >> "$dir/log"
[ -e "$dir/held-$1" ] && exit 0
touch "$dir/held-$1"
sleep 30 &
wait $!
"#,
    );
    let mut server = setup
        .opts()
        .args(&["--workers", "1", "--grace", "100ms"])
        .start();
    send_raw(&server, "push", &json!({ "n": 1 }));
    assert!(
        wait_until(WAIT, || !setup.marks().is_empty()),
        "no hold ran"
    );
    let a = send_pr(&server, "opened", 1, "A", "20");
    let b = send_pr(&server, "opened", 1, "B", "0.1");
    assert_eq!(states(&server, &a), ["pending"]);
    server.terminate().expect("server stopped");
    for h in ["H1", "H2", "H3", "H4"] {
        setup.kill_run(h);
    }

    let server = setup.start();
    let started = std::time::Instant::now();
    wait_states(&server, &b, &["done"]);
    wait_states(&server, &a, &["cancelled"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "B waited for A to run out"
    );
    let a_end = setup.mark("end", "A");
    assert!(
        a_end.is_none() || setup.mark("term", "A").is_some(),
        "A ran to its end: {}",
        setup.read("log")
    );
    setup.kill_run("A");
}

#[test]
fn a_member_running_at_a_stop_runs_again_before_the_newer_ones_of_its_group() {
    // A runs (holding the one worker) when B arrives; three more runs fill
    // what the dispatcher may lease, so B is never looked at before the
    // stop. After the restart A, the older, must run again before B.
    let setup = Setup::new(
        r#"  - name: review
    source: github
    event: push
    actions:
      - shell: ["@DIR@/hold.sh", "{{ body.name }}"]
        group: { key: one }
        timeout: 30s
  - name: fill
    source: github
    event: pull_request
    actions:
      - shell: ["@DIR@/hold.sh", "H1"]
      - shell: ["@DIR@/hold.sh", "H2"]
      - shell: ["@DIR@/hold.sh", "H3"]
"#,
    );
    setup.script(
        "hold.sh",
        r#"#!/bin/sh
dir="$(dirname "$0")"
echo "$$" > "$dir/pid-$1"
echo "start $1 $(date +%s%3N)" >> "$dir/log"
[ -e "$dir/held-$1" ] && exit 0
[ "$1" = B ] && exit 0
touch "$dir/held-$1"
sleep 30 &
wait $!
"#,
    );
    let mut server = setup
        .opts()
        .args(&["--workers", "1", "--grace", "100ms"])
        .start();
    let a = send_raw(&server, "push", &json!({ "name": "A" }));
    setup.wait_mark("start", "A");
    send_raw(&server, "pull_request", &json!({ "n": 1 }));
    let b = send_raw(&server, "push", &json!({ "name": "B" }));
    std::thread::sleep(Duration::from_millis(200));
    server.terminate().expect("server stopped");
    for name in ["A", "H1", "H2", "H3"] {
        setup.kill_run(name);
    }

    let server = setup.start();
    wait_states(&server, &a, &["done"]);
    wait_states(&server, &b, &["done"]);
    let order: Vec<String> = setup
        .marks()
        .into_iter()
        .filter(|m| m.name == "A" || m.name == "B")
        .map(|m| m.name)
        .collect();
    assert_eq!(order, ["A", "A", "B"], "{}", setup.read("log"));
}
