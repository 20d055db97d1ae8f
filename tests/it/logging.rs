//! What the logs say: secrets (source secrets, tokens, what a receiver
//! echoes back) stay out of text and JSON debug logs and out of the API;
//! JSON logs are one object per line, and every line about an event carries
//! its id; JSON logs stay JSON when the rules are invalid.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    self, Answer, Headers, Receiver, Server, ServerOpts, admin_get, as_refs, bad_jsonpath_place,
    install, push, push_body, push_headers, signed_headers, unique,
};

const WAIT: Duration = Duration::from_secs(20);

fn start_json(opts: ServerOpts) -> Server {
    opts.arg("--log-format").arg("json").start()
}

// ---- secrets ----

fn secrets_stay_out_of_logs_and_the_api(json: bool) {
    let secret = format!("src-secret-{}-Q7vZ", std::process::id());
    let token = format!("tok-{}-W2xK", std::process::id());
    let echo = Receiver::answering(Answer::status(500).delay(Duration::ZERO).echo(true));
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(
        dir.path(),
        "secrets.yaml",
        "secrets.yaml",
        &[("@RECEIVER@", &echo.url(""))],
    );
    let opts = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .admin()
        .arg("--log-level")
        .arg("debug")
        .env("OPERATE_SOURCE_SECRET", &secret)
        .env("OPERATE_TOKEN", &token);
    let mut server = if json { start_json(opts) } else { opts.start() };

    let ids: Vec<String> = (0..3).map(|_| unique("sec")).collect();
    let mut keys = Vec::new();
    for id in &ids {
        let resp = push(&server, "sec", &secret, "refs/heads/main", id);
        assert_eq!(resp.status, 202, "{resp:?}");
        keys.push(resp.json()["key"].as_str().expect("key").to_owned());
    }
    // Wrong signatures: signed with another secret, and a garbled header.
    let body = push_body("refs/heads/main", "bad");
    let wrong = push_headers("another-secret", &body, &unique("sec"));
    assert_eq!(
        server.post("/hooks/sec", &as_refs(&wrong), &body).status,
        401
    );
    let garbled: Headers = push_headers(&secret, &body, &unique("sec"))
        .into_iter()
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case("X-Hub-Signature-256") {
                (k, format!("{v}00"))
            } else {
                (k, v)
            }
        })
        .collect();
    assert_eq!(
        server.post("/hooks/sec", &as_refs(&garbled), &body).status,
        401
    );
    // An event no rule matches: the debug log explains every rule.
    let issue_body = br#"{"action":"opened","issue":{"number":1}}"#;
    let mut issue = signed_headers("github", &secret, issue_body, &unique("sec"));
    issue.push(("X-GitHub-Event".into(), "issues".into()));
    issue.push(("Content-Type".into(), "application/json".into()));
    assert_eq!(
        server
            .post("/hooks/sec", &as_refs(&issue), issue_body)
            .status,
        202
    );

    // Every http delivery fails twice and goes dead; the command prints the
    // token; the log line prints the request headers.
    for id in &ids {
        assert!(
            server.wait_log(&format!("sec-fired[{id}]"), 1, WAIT),
            "{id} never ran; log:\n{}",
            server.log()
        );
    }
    assert!(
        server.wait_log("Delivery dead.", ids.len(), WAIT),
        "the failing deliveries did not go dead; log:\n{}",
        server.log()
    );
    assert!(server.wait_log("Command finished.", ids.len(), WAIT));
    assert!(server.wait_log("Rule did not match.", 2, WAIT));
    // The test means something only if the secrets were really in play.
    let seen = echo.heads();
    assert!(
        seen.iter().any(|h| h.contains(&format!("Bearer {token}"))),
        "the receiver never saw the token: {seen:?}"
    );
    let log = server.log();
    assert!(
        log.contains("[redacted]"),
        "nothing was redacted, so nothing secret reached the log:\n{log}"
    );

    let mut api = Vec::new();
    for path in [
        "/api/events",
        "/api/deliveries",
        "/api/deliveries?state=failed",
        "/api/status",
        "/metrics",
    ] {
        api.push((path.to_owned(), admin_get(&server, path, None)));
    }
    for key in &keys {
        let path = format!("/api/events/{key}");
        let resp = admin_get(&server, &path, None);
        assert!(
            resp.body.contains("HTTP 500"),
            "{path} has no failed attempts to look at: {}",
            resp.body
        );
        api.push((path, resp));
    }
    for (path, resp) in &api {
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert!(
            !resp.body.contains(&secret),
            "{path} shows the source secret:\n{}",
            resp.body
        );
        assert!(
            !resp.body.contains(&token),
            "{path} shows the token:\n{}",
            resp.body
        );
    }

    let status = server.terminate();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    let log = server.log();
    for (what, s) in [("source secret", &secret), ("token", &token)] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(s.as_str())).collect();
        assert!(
            hits.is_empty(),
            "the {what} is in the log:\n{}",
            hits.join("\n")
        );
    }
}

#[test]
fn secrets_stay_out_of_text_debug_logs_and_the_api() {
    secrets_stay_out_of_logs_and_the_api(false);
}

#[test]
fn secrets_stay_out_of_json_debug_logs_and_the_api() {
    secrets_stay_out_of_logs_and_the_api(true);
}

// ---- JSON logs ----

#[test]
fn json_logs_are_objects_and_lines_about_an_event_carry_its_id() {
    const SECRET: &str = "json-test-secret";
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    install(&rules, "jsonlog.yaml", "jsonlog.yaml", &[]);
    let mut server = start_json(
        ServerOpts::new(&rules, &dir.path().join("data.redb"))
            .admin()
            .arg("--log-level")
            .arg("debug"),
    );
    let matched = unique("js-main");
    let unmatched = unique("js-dev");
    assert_eq!(
        push(&server, "js", SECRET, "refs/heads/main", &matched).status,
        202
    );
    assert_eq!(
        push(&server, "js", SECRET, "refs/heads/main", &matched).status,
        200
    );
    assert_eq!(
        push(&server, "js", SECRET, "refs/heads/dev", &unmatched).status,
        202
    );
    assert_eq!(
        push(&server, "js", "wrong", "refs/heads/main", &unique("js")).status,
        401
    );
    assert!(
        server.wait_log(&format!("js-shell[{matched}]"), 1, WAIT),
        "the command's output was not logged:\n{}",
        server.log()
    );
    assert!(server.wait_log("Delivery done.", 2, WAIT));
    // A failed reload logs its diagnostics too.
    install(&rules, "reload/extra-broken.yaml", "broken.yaml", &[]);
    assert!(
        server.wait_log("Reload rejected", 1, WAIT),
        "{}",
        server.log()
    );
    assert_eq!(server.terminate().and_then(|s| s.code()), Some(0));

    let log = server.log();
    let mut about: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nlog:\n{log}"));
        assert!(v.is_object(), "not an object: {line}");
        for field in ["timestamp", "level", "message"] {
            assert!(v.get(field).is_some(), "no {field}: {line}");
        }
        for id in [matched.as_str(), unmatched.as_str()] {
            if line.contains(id) {
                assert_eq!(
                    v["event_id"], id,
                    "a line about event {id} without event_id: {line}"
                );
                about
                    .entry(id)
                    .or_default()
                    .push(v["message"].as_str().unwrap_or("").to_owned());
            }
        }
        // Messages that are always about one event.
        let message = v["message"].as_str().unwrap_or("");
        if [
            "Event accepted.",
            "Duplicate event ignored.",
            "Delivery done.",
            "Command finished.",
            "Rule did not match.",
            "Event matched no rule.",
        ]
        .contains(&message)
        {
            assert!(
                v["event_id"].as_str().is_some_and(|s| !s.is_empty()),
                "no event_id: {line}"
            );
        }
    }
    let messages = |id: &str| about.get(id).cloned().unwrap_or_default();
    for want in [
        "Event accepted.".to_owned(),
        "Duplicate event ignored.".to_owned(),
        "Delivery done.".to_owned(),
        "Command finished.".to_owned(),
        format!("js-fired[{matched}]"),
    ] {
        assert!(
            messages(&matched).contains(&want),
            "no {want:?} line for {matched}: {:?}",
            messages(&matched)
        );
    }
    for want in ["Event accepted.", "Rule did not match."] {
        assert!(
            messages(&unmatched).iter().any(|m| m == want),
            "no {want:?} line for {unmatched}: {:?}",
            messages(&unmatched)
        );
    }
}

#[test]
fn json_logs_stay_json_when_the_rules_are_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = install(dir.path(), "reload/extra-broken.yaml", "broken.yaml", &[]);
    let out = Command::new(support::BIN)
        .args([
            "serve",
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--rules",
        ])
        .arg(&broken)
        .arg("--data")
        .arg(dir.path().join("data.redb"))
        .env_remove("RUST_LOG")
        .env_remove("HOOKROUTER_RULES")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = support::stderr(&out);
    assert!(!stderr.trim().is_empty());
    for line in stderr.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nstderr:\n{stderr}"));
        assert!(v.is_object(), "{line}");
    }
    let place = format!("broken.yaml:{}", bad_jsonpath_place(&broken));
    assert!(stderr.contains(&place), "no {place} in:\n{stderr}");
}
