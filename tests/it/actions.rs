//! Actions end to end: the real binary dispatching to a real receiver and
//! real processes, checked through what arrived and through the attempts the
//! admin API and the inspection commands report.
//!
//! Each test writes its own rule file into a tempdir: a `github` source and
//! rules whose actions call the test's `Receiver` (with short backoffs) or
//! run small scripts written next to the rules.

use crate::support::{now, unique};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::standard_verifier::{self, Rejection};
use crate::support::{
    self, Answer, Receiver, Recorded, Server, ServerOpts, as_refs, get, signed_headers, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "s3cret";
/// The Standard Webhooks reference key.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A rule file: the `github` source, then `rules` (YAML list items, indented
/// by two spaces) with `@URL@` standing for the receiver's base URL and
/// `@DIR@` for the test's tempdir.
fn rule_file(rules: &str, url: &str, dir: &Path) -> String {
    let head =
        format!("sources:\n  - name: github\n    provider: github\n    secret: {SECRET}\nrules:\n");
    head + &rules
        .replace("@URL@", url)
        .replace("@DIR@", &dir.display().to_string())
}

/// A tempdir holding `rules.yaml` and the data file.
struct Setup {
    dir: TempDir,
    rules: PathBuf,
}

impl Setup {
    fn new(rules: &str, url: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = rule_file(rules, url, dir.path());
        let rules = support::write(dir.path(), "rules.yaml", &text);
        Setup { dir, rules }
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

    /// An executable script in the tempdir.
    fn script(&self, name: &str, text: &str) -> PathBuf {
        let p = support::write(self.path(), name, text);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }
}

/// Post a signed push event and return its key from the 202 answer.
fn send(server: &Server, body: &Value) -> String {
    let body = body.to_string().into_bytes();
    let mut headers = signed_headers("github", SECRET, &body, &unique("evt"));
    headers.push(("X-GitHub-Event".into(), "push".into()));
    headers.push(("Content-Type".into(), "application/json".into()));
    let resp = server.post("/hooks/github", &as_refs(&headers), &body);
    assert_eq!(
        resp.status,
        202,
        "answer: {}\nlog:\n{}",
        resp.body,
        server.log()
    );
    resp.json()["key"]
        .as_str()
        .expect("the 202 answer has a key")
        .to_owned()
}

/// `GET /api/events/{key}`.
fn event(server: &Server, key: &str) -> Value {
    let resp = get(&server.admin_url(&format!("/api/events/{key}")), &[]);
    assert_eq!(resp.status, 200, "admin answer: {}", resp.body);
    resp.json()
}

/// Poll the event until `done` holds; panic with the last view otherwise.
fn wait_event(server: &Server, key: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(WAIT, || {
        last = event(server, key);
        done(&last)
    });
    assert!(
        ok,
        "timed out waiting for {what}; event:\n{last:#}\nlog:\n{}",
        server.log()
    );
    last
}

/// The deliveries of an event that are not `on_failure` follow-ups.
fn main_deliveries(ev: &Value) -> Vec<Value> {
    ev["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|d| d["on_failure"].is_null())
        .cloned()
        .collect()
}

/// The one main delivery of an event.
fn only_delivery(ev: &Value) -> Value {
    let list = main_deliveries(ev);
    assert_eq!(list.len(), 1, "expected one delivery: {ev:#}");
    list.into_iter().next().expect("one")
}

fn state_is(ev: &Value, state: &str) -> bool {
    let list = main_deliveries(ev);
    !list.is_empty() && list.iter().all(|d| d["state"] == state)
}

fn history(d: &Value) -> Vec<Value> {
    d["history"].as_array().cloned().unwrap_or_default()
}

fn field(list: &[Value], key: &str) -> Vec<Value> {
    list.iter().map(|a| a[key].clone()).collect()
}

/// Run an inspection command against the server's admin API.
fn cli(server: &Server, args: &[&str]) -> Output {
    let admin = server.admin.clone().expect("admin");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--admin", admin.as_str()]);
    support::run(&all)
}

fn cli_json(server: &Server, args: &[&str]) -> Value {
    let out = cli(server, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        support::stderr(&out)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn body_json(r: &Recorded) -> Value {
    serde_json::from_slice(&r.body).expect("JSON body")
}

const HTTP_RULE: &str = r#"
  - name: notify
    source: github
    event: push
    actions:
      - http:
          url: "@URL@/hook"
          json: { seq: "{{ body.seq }}" }
        retry: { attempts: 3, backoff: 100ms, max_backoff: 1s }
"#;

#[test]
fn http_retries_5xx_until_success_and_records_every_attempt() {
    let receiver = Receiver::start();
    receiver.script([Answer::status(500), Answer::status(500)]);
    let setup = Setup::new(HTTP_RULE, &receiver.url(""));
    let server = setup.start();

    let key = send(&server, &json!({ "seq": 1 }));
    let ev = wait_event(&server, &key, "the delivery to finish", |e| {
        state_is(e, "done") || state_is(e, "dead")
    });
    let d = only_delivery(&ev);
    assert_eq!(d["state"], "done", "{d:#}");
    assert_eq!(d["attempts"], 3, "{d:#}");
    let h = history(&d);
    assert_eq!(field(&h, "status"), [json!(500), json!(500), json!(200)]);
    assert_eq!(field(&h, "outcome"), ["retry", "retry", "ok"]);

    // The receiver saw the same request three times and answered 200 once.
    let reqs = receiver.requests();
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.url, "/hook");
        assert_eq!(body_json(r), json!({ "seq": 1 }));
    }

    // The inspection command shows the same record.
    let shown = cli_json(&server, &["events", &key, "--json"]);
    let d = only_delivery(&shown);
    assert_eq!(d["state"], "done");
    assert_eq!(
        field(&history(&d), "outcome"),
        ["retry", "retry", "ok"],
        "{shown:#}"
    );
}

#[test]
fn http_4xx_is_final() {
    let receiver = Receiver::start();
    let setup = Setup::new(HTTP_RULE, &receiver.url(""));
    let server = setup.start();

    for (i, status) in [404u16, 400].into_iter().enumerate() {
        receiver.script([Answer::status(status)]);
        let key = send(&server, &json!({ "seq": i }));
        let ev = wait_event(&server, &key, "the delivery to end", |e| {
            state_is(e, "done") || state_is(e, "dead")
        });
        let d = only_delivery(&ev);
        assert_eq!(d["state"], "dead", "{d:#}");
        assert_eq!(d["attempts"], 1, "{d:#}");
        let h = history(&d);
        assert_eq!(field(&h, "status"), [json!(status)]);
        assert_eq!(field(&h, "outcome"), ["dead"]);
        assert_eq!(receiver.count(), i + 1, "a {status} was retried");
    }
}

#[test]
fn http_429_retry_after_is_honoured() {
    let receiver = Receiver::start();
    receiver.script([Answer::status(429).header("Retry-After", "2")]);
    let setup = Setup::new(HTTP_RULE, &receiver.url(""));
    let server = setup.start();

    let key = send(&server, &json!({ "seq": 1 }));
    let ev = wait_event(&server, &key, "the delivery to finish", |e| {
        state_is(e, "done") || state_is(e, "dead")
    });
    let d = only_delivery(&ev);
    assert_eq!(d["state"], "done", "{d:#}");
    let h = history(&d);
    assert_eq!(field(&h, "status"), [json!(429), json!(200)]);
    assert_eq!(field(&h, "outcome"), ["retry", "ok"]);

    let reqs = receiver.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    // The backoff alone would be about 100ms.
    assert!(
        gap >= Duration::from_millis(1950),
        "the retry came {gap:?} after a 429 with Retry-After: 2"
    );
}

#[test]
fn http_timeout_is_retried() {
    let receiver = Receiver::start();
    receiver.script([Answer::status(200).delay(Duration::from_secs(2))]);
    let rules = r#"
  - name: slow
    source: github
    event: push
    actions:
      - http:
          url: "@URL@/hook"
          json: { seq: "{{ body.seq }}" }
        timeout: 300ms
        retry: { attempts: 3, backoff: 100ms, max_backoff: 1s }
"#;
    let setup = Setup::new(rules, &receiver.url(""));
    let server = setup.start();

    let key = send(&server, &json!({ "seq": 1 }));
    let ev = wait_event(&server, &key, "the delivery to finish", |e| {
        state_is(e, "done") || state_is(e, "dead")
    });
    let d = only_delivery(&ev);
    assert_eq!(d["state"], "done", "{d:#}");
    let h = history(&d);
    assert_eq!(field(&h, "outcome"), ["retry", "ok"], "{d:#}");
    assert_eq!(field(&h, "status"), [Value::Null, json!(200)]);
    let detail = h[0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("timed out"), "first attempt: {detail:?}");
    assert!(
        h[0]["duration_ms"].as_u64().expect("duration") < 1900,
        "the attempt waited for the slow answer: {d:#}"
    );
}

/// A delivery that gave up is `dead` in its history, its state, the listing
/// and the metrics; `failed`, which once also listed deliveries still
/// retrying, is read as `dead`.
#[test]
fn a_delivery_that_gave_up_is_dead_everywhere() {
    let rules = r#"
  - name: gives-up
    source: github
    event: push
    actions:
      - shell: ["false"]
        retry: { attempts: 1 }
  - name: keeps-trying
    source: github
    event: push
    actions:
      - shell: ["false"]
        retry: { attempts: 5, backoff: 1h, max_backoff: 1h }
"#;
    let setup = Setup::new(rules, "http://127.0.0.1:9");
    let server = setup.start();

    let key = send(&server, &json!({ "seq": 1 }));
    let ev = wait_event(&server, &key, "one dead and one retrying delivery", |e| {
        let list = main_deliveries(e);
        list.len() == 2 && list.iter().all(|d| d["attempts"] == 1)
    });
    let list = main_deliveries(&ev);
    let dead = list
        .iter()
        .find(|d| d["rule"] == "gives-up")
        .expect("gives-up");
    let retrying = list
        .iter()
        .find(|d| d["rule"] == "keeps-trying")
        .expect("keeps-trying");
    assert_eq!(dead["state"], "dead", "{ev:#}");
    assert_eq!(field(&history(dead), "outcome"), ["dead"]);
    assert_eq!(retrying["state"], "pending", "{ev:#}");
    assert_eq!(field(&history(retrying), "outcome"), ["retry"]);

    let ids = |v: &Value| -> Vec<Value> {
        v["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .map(|d| d["id"].clone())
            .collect()
    };
    let want = vec![dead["id"].clone()];
    for args in [
        ["deliveries", "--state", "dead", "--json"].as_slice(),
        &["deliveries", "--failed", "--json"],
    ] {
        assert_eq!(ids(&cli_json(&server, args)), want, "{args:?}");
    }
    for state in ["dead", "failed"] {
        let resp = get(
            &server.admin_url(&format!("/api/deliveries?state={state}")),
            &[],
        );
        assert_eq!(resp.status, 200, "{}", resp.body);
        assert_eq!(ids(&resp.json()), want, "state={state}");
    }

    let metrics = get(&server.admin_url("/metrics"), &[]).body;
    for line in [
        r#"hookrouter_deliveries_total{action="shell",outcome="dead"} 1"#,
        r#"hookrouter_deliveries_total{action="shell",outcome="retry"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in:\n{metrics}"
        );
    }
}

#[test]
fn dead_delivery_is_listed_and_replay_delivers_it() {
    let receiver = Receiver::start();
    receiver.script([
        Answer::status(503),
        Answer::status(503),
        Answer::status(503),
    ]);
    let setup = Setup::new(HTTP_RULE, &receiver.url(""));
    let server = setup.start();

    let key = send(&server, &json!({ "seq": 7 }));
    let ev = wait_event(&server, &key, "the delivery to end", |e| {
        state_is(e, "done") || state_is(e, "dead")
    });
    let dead = only_delivery(&ev);
    assert_eq!(dead["state"], "dead", "{dead:#}");
    assert_eq!(dead["attempts"], 3);
    assert_eq!(
        field(&history(&dead), "outcome"),
        ["retry", "retry", "dead"]
    );
    assert_eq!(receiver.count(), 3);

    let failed = cli_json(&server, &["deliveries", "--failed", "--json"]);
    let listed: Vec<&Value> = failed["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|d| d["id"] == dead["id"])
        .collect();
    assert_eq!(listed.len(), 1, "dead delivery not listed: {failed:#}");
    assert_eq!(listed[0]["state"], "dead");
    assert_eq!(listed[0]["event_key"], key.as_str());

    // The receiver answers 200 from now on.
    let out = cli(&server, &["replay", &key]);
    assert!(out.status.success(), "replay: {}", support::stderr(&out));

    let ev = wait_event(&server, &key, "the replayed delivery to finish", |e| {
        main_deliveries(e).len() == 2 && main_deliveries(e).iter().any(|d| d["state"] == "done")
    });
    let list = main_deliveries(&ev);
    let old = list.iter().find(|d| d["id"] == dead["id"]).expect("old");
    let new = list.iter().find(|d| d["id"] != dead["id"]).expect("new");
    assert_eq!(old["state"], "dead");
    assert_eq!(old["attempts"], 3);
    assert_eq!(new["state"], "done", "{new:#}");
    assert_eq!(new["attempts"], 1);
    assert_eq!(field(&history(new), "status"), [json!(200)]);
    let reqs = receiver.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(body_json(&reqs[3]), json!({ "seq": 7 }));
}

#[test]
fn on_failure_runs_once_with_the_failure_context() {
    let receiver = Receiver::start();
    receiver.script([Answer::status(503), Answer::status(503)]);
    let rules = r#"
  - name: fragile
    source: github
    event: push
    actions:
      - http:
          url: "@URL@/hook"
          json: { seq: "{{ body.seq }}" }
        retry: { attempts: 2, backoff: 100ms, max_backoff: 1s }
    on_failure:
      - http:
          url: "@URL@/failed"
          json:
            seq: "{{ body.seq }}"
            rule: "{{ rule.name }}"
            action: "{{ failure.action.type }}"
            attempts: "{{ failure.attempts }}"
            last_error: "{{ failure.last_error }}"
"#;
    let setup = Setup::new(rules, &receiver.url(""));
    let server = setup.start();

    let key = send(&server, &json!({ "seq": 3 }));
    let ev = wait_event(&server, &key, "the failure handler to finish", |e| {
        e["deliveries"].as_array().is_some_and(|all| {
            all.iter()
                .any(|d| !d["on_failure"].is_null() && d["state"] == "done")
        })
    });
    let main = only_delivery(&ev);
    assert_eq!(main["state"], "dead");
    assert_eq!(main["attempts"], 2);
    let follow_ups: Vec<&Value> = ev["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|d| !d["on_failure"].is_null())
        .collect();
    assert_eq!(follow_ups.len(), 1, "{ev:#}");
    assert_eq!(follow_ups[0]["attempts"], 1);

    let reqs = receiver.requests();
    let paths: Vec<&str> = reqs.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(paths, ["/hook", "/hook", "/failed"]);
    let got = body_json(&reqs[2]);
    assert_eq!(got["seq"], 3);
    assert_eq!(got["rule"], "fragile");
    assert_eq!(got["action"], "http");
    assert_eq!(got["attempts"], 2, "{got}");
    let last_error = got["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("503"), "last_error: {got}");
}

#[test]
fn pending_retry_survives_kill_9() {
    let receiver = Receiver::start();
    receiver.script([Answer::status(500)]);
    let rules = r#"
  - name: durable
    source: github
    event: push
    actions:
      - http:
          url: "@URL@/hook"
          json: { seq: "{{ body.seq }}" }
        retry: { attempts: 3, backoff: 3s, max_backoff: 3s }
"#;
    let setup = Setup::new(rules, &receiver.url(""));
    let mut server = setup.start();

    let key = send(&server, &json!({ "seq": 9 }));
    wait_event(&server, &key, "the first attempt to be recorded", |e| {
        state_is(e, "pending") && only_delivery(e)["attempts"] == 1
    });
    server.kill9();
    assert_eq!(
        receiver.count(),
        1,
        "the retry ran before the kill; the test proves nothing"
    );

    let server = setup.start();
    let ev = wait_event(&server, &key, "the retry after restart", |e| {
        state_is(e, "done") || state_is(e, "dead")
    });
    let d = only_delivery(&ev);
    assert_eq!(d["state"], "done", "{d:#}");
    assert_eq!(d["attempts"], 2);
    assert_eq!(field(&history(&d), "status"), [json!(500), json!(200)]);
    let reqs = receiver.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(body_json(&reqs[1]), json!({ "seq": 9 }));
}

/// Every file under `dir` whose name contains `needle`.
fn find_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if entry.file_name().to_string_lossy().contains(needle) {
                found.push(p.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    found
}

#[test]
fn shell_template_values_reach_argv_verbatim() {
    const ARGS: usize = 15;
    let mut rules = String::from(
        r#"
  - name: argv
    source: github
    event: push
    actions:
      - shell:
          - "@DIR@/argv.sh"
          - "@DIR@/out"
"#,
    );
    for i in 0..ARGS {
        rules.push_str(&format!("          - \"{{{{ body.args[{i}] }}}}\"\n"));
    }
    rules.push_str("        workdir: \"@DIR@\"\n");
    let setup = Setup::new(&rules, "");
    // Writes each argument to out/<n>, and their count to out/count.
    setup.script(
        "argv.sh",
        "#!/bin/sh\nout=\"$1\"\nshift\nmkdir -p \"$out\"\nprintf '%s' \"$#\" > \"$out/count\"\n\
         i=0\nfor a in \"$@\"; do\n  i=$((i + 1))\n  printf '%s' \"$a\" > \"$out/$i\"\ndone\n",
    );
    // What `rm -rf x` would remove.
    support::write(setup.path(), "x/keep", "keep");

    let c = setup.path().join("CANARY").display().to_string();
    let hostile: Vec<String> = vec![
        format!("$(touch {c})"),
        "$(touch CANARY)".to_owned(),
        format!("`touch {c}`"),
        format!("; touch {c}"),
        format!("| touch {c}"),
        "&& rm -rf x".to_owned(),
        format!("x && touch {c} && rm -rf x"),
        "it's \"quoted\" 'twice' \\ ".to_owned(),
        format!("line one\nline two; touch {c}\n"),
        "*".to_owned(),
        String::new(),
        "--help".to_owned(),
        "${env:PATH} ${IFS} $HOME".to_owned(),
        "{{ 7 * 7 }}".to_owned(),
        "tab\there ünïcødé ✓".to_owned(),
    ];
    assert_eq!(hostile.len(), ARGS);

    let server = setup.start();
    let key = send(&server, &json!({ "args": hostile }));
    let ev = wait_event(&server, &key, "the command to finish", |e| {
        state_is(e, "done") || state_is(e, "dead")
    });
    assert_eq!(only_delivery(&ev)["state"], "done", "{ev:#}");

    let out = setup.path().join("out");
    let count = std::fs::read_to_string(out.join("count")).expect("count");
    assert_eq!(count, ARGS.to_string(), "argument count");
    for (i, want) in hostile.iter().enumerate() {
        let got = std::fs::read(out.join((i + 1).to_string())).expect("argument file");
        assert_eq!(
            String::from_utf8_lossy(&got),
            want.as_str(),
            "argument {}",
            i + 1
        );
        assert_eq!(got, want.as_bytes());
    }
    let canaries = find_named(setup.path(), "CANARY");
    assert!(
        canaries.is_empty(),
        "a template value was run by a shell: {canaries:?}"
    );
    assert!(setup.path().join("x/keep").exists(), "`rm -rf x` ran");
}

#[test]
fn shell_env_is_only_path_and_the_listed_variables() {
    let rules = r#"
  - name: env
    source: github
    event: push
    actions:
      - shell: ["/usr/bin/env"]
        env: { VISIBLE: "yes-{{ body.seq }}" }
"#;
    let setup = Setup::new(rules, "");
    let server = setup
        .opts()
        .env("HOOKROUTER_TEST_LEAK", "leaked-value-1f3a")
        .env("AWS_SECRET_ACCESS_KEY", "leaked-value-9c2b")
        .start();

    let key = send(&server, &json!({ "seq": 5 }));
    let ev = wait_event(&server, &key, "the command to finish", |e| {
        state_is(e, "done") || state_is(e, "dead")
    });
    let d = only_delivery(&ev);
    assert_eq!(d["state"], "done", "{d:#}");
    let detail = history(&d)[0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let stdout = detail
        .strip_prefix("stdout: ")
        .unwrap_or_else(|| panic!("no output recorded: {detail:?}"));
    let mut names: Vec<&str> = stdout
        .lines()
        .map(|l| l.split_once('=').map_or(l, |(k, _)| k))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["PATH", "VISIBLE"], "child environment:\n{stdout}");
    assert!(stdout.lines().any(|l| l == "VISIBLE=yes-5"), "{stdout}");
    assert!(!stdout.contains("leaked-value"), "{stdout}");
}

/// Whether process `pid` is gone: no `/proc` entry, or a zombie (dead and
/// waiting only to be reaped by whoever adopted it).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[test]
fn shell_timeout_kills_the_process_group() {
    let rules = r#"
  - name: hang
    source: github
    event: push
    actions:
      - shell: ["@DIR@/hang.sh", "@DIR@/grandchild.pid", "@DIR@/child.pid"]
        timeout: 500ms
"#;
    let setup = Setup::new(rules, "");
    setup.script(
        "hang.sh",
        "#!/bin/sh\nsleep 60 &\necho \"$!\" > \"$1\"\necho \"$$\" > \"$2\"\nsleep 60\n",
    );
    let server = setup.start();

    let key = send(&server, &json!({ "seq": 1 }));
    let ev = wait_event(&server, &key, "the command to time out", |e| {
        state_is(e, "done") || state_is(e, "dead")
    });
    let d = only_delivery(&ev);
    assert_eq!(d["state"], "dead", "{d:#}");
    let h = history(&d);
    let detail = h[0]["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("timed out"), "detail: {detail:?}");
    assert!(
        h[0]["duration_ms"].as_u64().expect("duration") < 10_000,
        "{d:#}"
    );

    for name in ["child.pid", "grandchild.pid"] {
        let text = std::fs::read_to_string(setup.path().join(name)).expect("pid file");
        let pid: u32 = text.trim().parse().expect("pid");
        assert!(
            wait_until(Duration::from_secs(5), || process_gone(pid)),
            "{name} {pid} still runs after the timeout"
        );
    }
}

#[test]
fn concurrency_1_runs_deliveries_one_at_a_time_in_order() {
    let receiver = Receiver::start();
    receiver.script((0..5).map(|_| Answer::status(200).delay(Duration::from_millis(300))));
    let rules = r#"
  - name: serial
    source: github
    event: push
    actions:
      - http:
          url: "@URL@/hook"
          json: { seq: "{{ body.seq }}" }
        concurrency: 1
"#;
    let setup = Setup::new(rules, &receiver.url(""));
    let server = setup.start();

    let keys: Vec<String> = (0..5)
        .map(|n| send(&server, &json!({ "seq": n })))
        .collect();
    assert!(receiver.wait_count(5, WAIT), "log:\n{}", server.log());
    let reqs = receiver.requests();
    let order: Vec<Value> = reqs.iter().map(|r| body_json(r)["seq"].clone()).collect();
    assert_eq!(order, (0..5).map(|n| json!(n)).collect::<Vec<_>>());
    for pair in reqs.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(290),
            "requests overlapped: {gap:?} apart, arrival order {order:?}"
        );
    }
    for key in &keys {
        wait_event(&server, key, "the delivery to finish", |e| {
            state_is(e, "done")
        });
    }
}

#[test]
fn signed_http_requests_pass_a_standard_webhooks_verifier() {
    let receiver = Receiver::start();
    receiver.script([Answer::status(500)]);
    let rules = format!(
        r#"
  - name: signed
    source: github
    event: push
    actions:
      - http:
          url: "@URL@/hook"
          json: {{ seq: "{{{{ body.seq }}}}", msg: "{{{{ body.msg }}}}" }}
          sign: {{ secret: "{WHSEC}" }}
        retry: {{ attempts: 3, backoff: 100ms, max_backoff: 1s }}
"#
    );
    let setup = Setup::new(&rules, &receiver.url(""));
    let server = setup.start();

    let key = send(&server, &json!({ "seq": 4, "msg": "héllo \"world\"" }));
    let ev = wait_event(&server, &key, "the delivery to finish", |e| {
        state_is(e, "done") || state_is(e, "dead")
    });
    assert_eq!(only_delivery(&ev)["state"], "done", "{ev:#}");
    let reqs = receiver.requests();
    assert_eq!(reqs.len(), 2, "one retry, then success");

    let now = now();
    for r in &reqs {
        assert_eq!(
            standard_verifier::verify(WHSEC, &r.headers, &r.body, now),
            Ok(()),
            "headers {:?}",
            r.headers
        );
        assert_eq!(
            body_json(r),
            json!({ "seq": 4, "msg": "héllo \"world\"" }),
            "the signed body"
        );
    }
    let ids: Vec<&str> = reqs
        .iter()
        .map(|r| r.header("webhook-id").expect("webhook-id"))
        .collect();
    assert_eq!(ids[0], ids[1], "webhook-id changed across retries");

    // Tampered copies of the first request.
    let r = &reqs[0];
    let mut body = r.body.clone();
    body.push(b' ');
    assert_eq!(
        standard_verifier::verify(WHSEC, &r.headers, &body, now),
        Err(Rejection::NoMatchingSignature)
    );
    let with = |name: &str, value: &str| -> Vec<(String, String)> {
        r.headers
            .iter()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case(name) {
                    (k.clone(), value.to_owned())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect()
    };
    assert_eq!(
        standard_verifier::verify(WHSEC, &with("webhook-id", "msg_other"), &r.body, now),
        Err(Rejection::NoMatchingSignature)
    );
    let ts: i64 = r
        .header("webhook-timestamp")
        .expect("timestamp")
        .parse()
        .expect("number");
    assert_eq!(
        standard_verifier::verify(
            WHSEC,
            &with("webhook-timestamp", &(ts + 1).to_string()),
            &r.body,
            now
        ),
        Err(Rejection::NoMatchingSignature)
    );
    assert_eq!(
        standard_verifier::verify(
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            &r.headers,
            &r.body,
            now
        ),
        Err(Rejection::NoMatchingSignature)
    );
    assert_eq!(
        standard_verifier::verify(WHSEC, &r.headers, &r.body, now + 600),
        Err(Rejection::Expired)
    );
}

/// The verifier the test above relies on agrees with the Standard Webhooks
/// reference vectors (and their invalid variants).
#[test]
fn standard_verifier_agrees_with_the_reference_vectors() {
    let text = std::fs::read_to_string(support::fixture("actions/standard_webhooks_vectors.json"))
        .expect("vectors");
    let cases: Vec<Value> = serde_json::from_str(&text).expect("JSON");
    assert!(cases.len() >= 10);
    for case in &cases {
        let headers: Vec<(String, String)> = case["headers"]
            .as_object()
            .expect("headers")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("header").to_owned()))
            .collect();
        let got = standard_verifier::verify(
            case["secret"].as_str().expect("secret"),
            &headers,
            case["body"].as_str().expect("body").as_bytes(),
            case["now"].as_i64().expect("now"),
        );
        let verdict = match got {
            Ok(()) => "valid",
            Err(Rejection::Expired) => "expired",
            Err(_) => "invalid",
        };
        assert_eq!(verdict, case["expect"], "case {}: {got:?}", case["id"]);
    }
}
