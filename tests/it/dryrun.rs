//! `hookrouter test`: a dry run of one request shows exactly what each
//! matching rule's actions would do (secrets redacted) and, for every other
//! rule, the condition that failed and the value it saw; `--verify` checks
//! the signature, `--body -` reads stdin, `--format json` is parseable.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::support::{BIN, fixture, now, root, signed_headers, stderr, stdout, write};

const RULES: &str = "tests/fixtures/valid/dryrun.yaml";
const PUSH_MAIN: &str = "tests/fixtures/payloads/push-main.json";
const PUSH_DEV: &str = "tests/fixtures/payloads/push-dev.json";
/// The value of `${env:TOKEN}` in the child: it must never be printed.
const TOKEN: &str = "tok_9f8e7d6c5b4a39281706";
/// The source secret (the default of `${env:HOOKROUTER_FIXTURE_SECRET:-…}`).
const SECRET: &str = "fixture-secret";

/// Run `hookrouter test --rules RULES --source gh ARGS…` with TOKEN set and,
/// when given, `stdin` as standard input.
fn dry_run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["test", "--rules", RULES, "--source", "gh"])
        .args(args)
        .current_dir(root())
        .env_remove("HOOKROUTER_RULES")
        .env_remove("HOOKROUTER_FIXTURE_SECRET")
        .env_remove("RUST_LOG")
        .env("TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start hookrouter test");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited with a code")
}

fn push_main_headers() -> [&'static str; 4] {
    [
        "--header",
        "X-GitHub-Event: push",
        "--header",
        "X-GitHub-Delivery: d-1",
    ]
}

/// What the matching push shows after the signature line.
const PUSH_MAIN_ROUTING: &str = r#"1 of 2 rules match

MATCH deploy-main (tests/fixtures/valid/dryrun.yaml:7:11)
  action 1: log deploy acme/api@0123456
    (attempts: 1, timeout: 30s)
  action 2: http POST https://deploy.internal/api/deploy
    authorization: Bearer [redacted]
    content-type: application/json
    body: {"repo":"acme/api","sha":"0123456789abcdef0123456789abcdef01234567","size":2}
    (attempts: 3, timeout: 30s)
  action 3: shell argv=["./scripts/deploy.sh","acme/api","fix: it's $(rm -rf /); done"]
    (attempts: 1, timeout: 10m)
no    pr-opened (tests/fixtures/valid/dryrun.yaml:24:11): event type "push" does not match its `event:` patterns
"#;

#[test]
fn matching_request_shows_every_action_as_rendered() {
    let mut args = vec!["--body", PUSH_MAIN];
    args.extend(push_main_headers());
    let out = dry_run(&args, None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let text = stdout(&out);
    // The log line, the request (method, URL, headers, body with `size`
    // kept a number) and the argv, one template per argument, nothing run.
    assert_eq!(
        text,
        format!(
            "event d-1 type=\"push\" source=gh provider=github\n\
             signature: not checked (add --verify)\n\
             {PUSH_MAIN_ROUTING}"
        )
    );
    assert!(!text.contains(TOKEN), "the token is redacted");
}

#[test]
fn non_matching_request_shows_the_failed_condition_and_the_value_seen() {
    let out = dry_run(
        &[
            "--body",
            PUSH_DEV,
            "-H",
            "X-GitHub-Event: push",
            "-H",
            "X-GitHub-Delivery: d-2",
        ],
        None,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "event d-2 type=\"push\" source=gh provider=github\n\
         signature: not checked (add --verify)\n\
         0 of 2 rules match\n\
         \n\
         no    deploy-main (tests/fixtures/valid/dryrun.yaml:7:11): $.ref equals \"refs/heads/main\": saw \"refs/heads/dev\"\n\
         no    pr-opened (tests/fixtures/valid/dryrun.yaml:24:11): event type \"push\" does not match its `event:` patterns\n"
    );
}

#[test]
fn body_from_stdin() {
    // Right branch, wrong repository: the second condition is the one named.
    let body =
        br#"{"ref": "refs/heads/main", "after": "abc", "repository": {"full_name": "other/api"}}"#;
    let out = dry_run(
        &[
            "--body",
            "-",
            "-H",
            "X-GitHub-Event: push",
            "-H",
            "X-GitHub-Delivery: d-3",
        ],
        Some(body),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("event d-3 type=\"push\" source=gh provider=github\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "no    deploy-main (tests/fixtures/valid/dryrun.yaml:7:11): $.repository.full_name regex \"^acme/\": saw \"other/api\"\n"
        ),
        "{text}"
    );

    // The same file through stdin renders the same as through --body FILE.
    let file = std::fs::read(fixture("payloads/push-main.json")).unwrap();
    let mut args = vec!["--body", "-"];
    args.extend(push_main_headers());
    let out = dry_run(&args, Some(&file));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).ends_with(PUSH_MAIN_ROUTING),
        "{}",
        stdout(&out)
    );
}

#[test]
fn render_failures_are_shown_not_hidden() {
    // `pr-opened` logs `body.number`, which this body lacks: strict
    // undefined values make the action fail rather than log an empty string.
    let out = dry_run(
        &[
            "--body",
            "-",
            "-H",
            "X-GitHub-Event: pull_request",
            "-H",
            "X-GitHub-Delivery: d-4",
        ],
        Some(br#"{"action": "opened"}"#),
    );
    // The real event would fail the same way: the dry run says so in its
    // exit code too.
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "MATCH pr-opened (tests/fixtures/valid/dryrun.yaml:24:11)\n  action 1: would FAIL: template failed: undefined value: `body.number` is undefined\n"
        ),
        "{text}"
    );
    assert!(text.contains("type=\"pull_request.opened\""), "{text}");
}

#[test]
fn json_format() {
    let mut args = vec!["--body", PUSH_MAIN, "--format", "json"];
    args.extend(push_main_headers());
    let out = dry_run(&args, None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains(TOKEN), "the token is redacted");
    let v: Value = serde_json::from_str(&text).expect("stdout is JSON");

    assert_eq!(v["event"]["id"], "d-1");
    assert_eq!(v["event"]["type"], "push");
    assert_eq!(v["event"]["source"], "gh");
    assert_eq!(v["event"]["provider"], "github");
    assert_eq!(v["event"]["body"]["ref"], "refs/heads/main");
    assert_eq!(v["signature"], Value::Null);

    let rules = v["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2);
    let deploy = &rules[0];
    assert_eq!(deploy["name"], "deploy-main");
    assert_eq!(deploy["matched"], true);
    assert_eq!(deploy["origin"], "tests/fixtures/valid/dryrun.yaml:7:11");
    let actions = deploy["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 3);
    assert_eq!(
        actions[0]["action"],
        json!({"type": "log", "line": "deploy acme/api@0123456"})
    );

    let http = &actions[1];
    assert_eq!(http["retry_attempts"], 3);
    assert_eq!(http["timeout_ms"], 30_000);
    let req = &http["action"];
    assert_eq!(req["type"], "http");
    assert_eq!(req["method"], "POST");
    assert_eq!(req["url"], "https://deploy.internal/api/deploy");
    assert_eq!(
        req["headers"],
        json!([
            ["authorization", "Bearer [redacted]"],
            ["content-type", "application/json"]
        ])
    );
    assert_eq!(req["signed"], false);
    // The body is the request's text, which is the JSON that would be sent.
    let body: Value = serde_json::from_str(req["body"].as_str().expect("body is text")).unwrap();
    assert_eq!(
        body,
        json!({"sha": "0123456789abcdef0123456789abcdef01234567", "repo": "acme/api", "size": 2})
    );

    let shell = &actions[2];
    assert_eq!(shell["timeout_ms"], 600_000);
    assert_eq!(
        shell["action"]["argv"],
        json!([
            "./scripts/deploy.sh",
            "acme/api",
            "fix: it's $(rm -rf /); done"
        ])
    );

    let pr = &rules[1];
    assert_eq!(pr["name"], "pr-opened");
    assert_eq!(pr["matched"], false);
    assert_eq!(
        pr["reason"],
        "event type \"push\" does not match its `event:` patterns"
    );
    assert!(pr.get("actions").is_none(), "{pr}");
}

#[test]
fn json_format_explains_a_miss() {
    let out = dry_run(
        &[
            "--body",
            PUSH_DEV,
            "--format",
            "json",
            "-H",
            "X-GitHub-Event: push",
        ],
        None,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["rules"][0]["matched"], false);
    assert_eq!(
        v["rules"][0]["reason"],
        r#"$.ref equals "refs/heads/main": saw "refs/heads/dev""#
    );
}

fn signature_args(body: &[u8], tamper: bool) -> Vec<String> {
    let mut args = vec!["--verify".to_owned()];
    for (k, v) in signed_headers("github", SECRET, body, "d-1") {
        let v = if tamper && k.eq_ignore_ascii_case("x-hub-signature-256") {
            // Same length, last hex digit changed.
            let flip = if v.ends_with('0') { '1' } else { '0' };
            format!("{}{flip}", &v[..v.len() - 1])
        } else {
            v
        };
        args.push("--header".to_owned());
        args.push(format!("{k}: {v}"));
    }
    args.push("--header".to_owned());
    args.push("X-GitHub-Event: push".to_owned());
    args
}

#[test]
fn verify_accepts_a_good_signature() {
    let body = std::fs::read(fixture("payloads/push-main.json")).unwrap();
    let mut args = vec!["--body".to_owned(), PUSH_MAIN.to_owned()];
    args.extend(signature_args(&body, false));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dry_run(&args, None);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "event d-1 type=\"push\" source=gh provider=github\n\
             signature: verified\n\
             {PUSH_MAIN_ROUTING}"
        )
    );
}

#[test]
fn verify_rejects_a_bad_signature() {
    let body = std::fs::read(fixture("payloads/push-main.json")).unwrap();
    let mut args = vec!["--body".to_owned(), PUSH_MAIN.to_owned()];
    args.extend(signature_args(&body, true));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dry_run(&args, None);
    assert_eq!(code(&out), 1, "a rejected signature fails the dry run");
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "event d-1 type=\"push\" source=gh provider=github\n\
             signature: REJECTED (signature mismatch); the server would answer 401\n"
        ),
        "{text}"
    );
    assert!(!text.contains(SECRET), "{text}");

    // The body changed after signing: rejected too, in JSON as well.
    let mut args = vec!["--body".to_owned(), PUSH_DEV.to_owned()];
    args.extend(signature_args(&body, false));
    args.extend(["--format".to_owned(), "json".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dry_run(&args, None);
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        v["signature"],
        json!({"verified": false, "error": "signature mismatch"})
    );

    // No signature at all.
    let out = dry_run(
        &[
            "--verify",
            "--body",
            PUSH_MAIN,
            "-H",
            "X-GitHub-Event: push",
        ],
        None,
    );
    assert_eq!(code(&out), 1);
    assert!(
        stdout(&out).contains("signature: REJECTED ("),
        "{}",
        stdout(&out)
    );
}

#[test]
fn unknown_source_is_a_usage_error() {
    let out = Command::new(BIN)
        .args([
            "test", "--rules", RULES, "--source", "gitlab", "--body", PUSH_MAIN,
        ])
        .current_dir(root())
        .env("TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(stderr(&out), "error: unknown source \"gitlab\"\n");
    assert_eq!(stdout(&out), "");
    assert_eq!(code(&out), 2);
}

#[test]
fn other_failures_before_routing() {
    // A body file that does not exist: usage error.
    let out = dry_run(&["--body", "tests/fixtures/payloads/nope.json"], None);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).starts_with("error: cannot read tests/fixtures/payloads/nope.json: "),
        "{}",
        stderr(&out)
    );
    // A malformed header: usage error.
    let out = dry_run(&["--body", PUSH_MAIN, "-H", "no colon here"], None);
    assert_eq!(code(&out), 2);
    assert_eq!(
        stderr(&out),
        "error: --header \"no colon here\" is not `Name: value`\n"
    );
    // Invalid rules: exit 1 with the diagnostics, as `check` would.
    let out = Command::new(BIN)
        .args([
            "test", "--rules", RULES, "--source", "gh", "--body", PUSH_MAIN,
        ])
        .current_dir(root())
        .env_remove("TOKEN")
        .output()
        .unwrap();
    assert_eq!(
        stderr(&out),
        "error: tests/fixtures/valid/dryrun.yaml:18:45: rule \"deploy-main\": environment variable \
         TOKEN is not set (write ${env:TOKEN:-default} to give a default)\n1 error\n"
    );
    assert_eq!(code(&out), 1);
}

/// A Twilio source (which signs the URL it called) and a Slack source (which
/// sends a handshake), both served at their default paths.
const URL_RULES: &str = r#"
sources:
  - name: tw
    provider: twilio
    secret: tw-secret
  - name: sl
    provider: slack
    secret: sl-secret
rules:
  - name: any
    source: [tw, sl]
    actions:
      - log: "got {{ event.id }}"
"#;

/// Run `hookrouter test --rules <URL_RULES> ARGS…` with `body` on stdin.
fn dry_run_url_rules(args: &[&str], body: &[u8]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let rules = write(dir.path(), "rules.yaml", URL_RULES);
    let mut child = Command::new(BIN)
        .args(["test", "--rules", rules.to_str().unwrap(), "--body", "-"])
        .args(args)
        .env_remove("HOOKROUTER_RULES")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hookrouter test");
    let mut input = child.stdin.take().unwrap();
    input.write_all(body).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// `X-Twilio-Signature` (and the idempotency token) for `body` posted to `url`.
fn twilio_headers(body: &[u8], url: &str) -> Vec<String> {
    let settings = hookrouter::providers::ProviderSettings {
        secrets: vec![hookrouter::providers::Secret::new("tw-secret")],
        ..Default::default()
    };
    let signed =
        hookrouter::providers::sign("twilio", &settings, body, "tok-1", now(), url).expect("sign");
    let mut args = vec![
        "-H".to_owned(),
        "Content-Type: application/x-www-form-urlencoded".to_owned(),
    ];
    for (k, v) in signed {
        args.push("-H".to_owned());
        args.push(format!("{k}: {v}"));
    }
    args
}

#[test]
fn verify_uses_the_url_the_server_would_see_query_included() {
    // Twilio signs the URL with its query string; the server keeps the
    // sender's query, so the dry run must too.
    let body = b"MessageSid=SM1&Body=hi";
    let mut args = twilio_headers(body, "http://localhost/hooks/tw?tenant=acme&x=a+b");
    args.extend(
        [
            "--source",
            "tw",
            "--verify",
            "--query",
            "tenant=acme",
            "--query",
            "x=a b",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dry_run_url_rules(&args, body);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("signature: verified\n"), "{text}");
    assert!(text.contains("MATCH any"), "{text}");
}

#[test]
fn verify_uses_the_host_and_forwarded_scheme_like_the_server() {
    // Behind a TLS-terminating proxy the server builds the URL from the Host
    // header and `X-Forwarded-Proto`; so does the dry run.
    let body = b"MessageSid=SM2&Body=hi";
    let mut args = twilio_headers(body, "https://hooks.example.com/hooks/tw");
    args.extend(
        [
            "--source",
            "tw",
            "--verify",
            "-H",
            "Host: hooks.example.com",
            "-H",
            "X-Forwarded-Proto: https",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = dry_run_url_rules(&args, body);
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("signature: verified\n"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_handshake_is_shown_as_the_answer_not_routed() {
    // The server answers Slack's URL verification itself and routes nothing;
    // the dry run says so instead of matching rules against it.
    let body = br#"{"type": "url_verification", "challenge": "c-1"}"#;
    let out = dry_run_url_rules(&["--source", "sl"], body);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "handshake source=sl provider=slack\n\
         signature: not checked (add --verify)\n\
         the server would answer the provider's handshake: 200 (application/json) {\"challenge\":\"c-1\"}\n\
         nothing is stored or routed\n"
    );

    let out = dry_run_url_rules(&["--source", "sl", "--format", "json"], body);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["handshake"]["status"], 200);
    assert_eq!(v["handshake"]["body"], r#"{"challenge":"c-1"}"#);
    assert!(v.get("event").is_none(), "{v}");
    assert_eq!(v["rules"], json!([]));
}

// ---- agent controls ----

const AGENT_RULES: &str = "tests/fixtures/valid/agent.yaml";

/// `hookrouter test` on the agent fixture with a `pull_request` event whose
/// action is `action`, `body` on stdin and TOKEN set.
fn agent_run(action: &str, body: &Value, json: bool) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "test",
        "--rules",
        AGENT_RULES,
        "--source",
        "gh",
        "--body",
        "-",
    ])
    .args(["-H", "X-GitHub-Event: pull_request", "-H"])
    .arg(format!("X-GitHub-Delivery: d-{action}"))
    .args(if json { &["--format", "json"][..] } else { &[] })
    .current_dir(root())
    .env_remove("HOOKROUTER_RULES")
    .env_remove("HOOKROUTER_FIXTURE_SECRET")
    .env_remove("RUST_LOG")
    .env("TOKEN", TOKEN)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start hookrouter test");
    let mut input = child.stdin.take().unwrap();
    input.write_all(&serde_json::to_vec(body).unwrap()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn pull_request(action: &str, number: u64, draft: bool) -> Value {
    json!({
        "action": action,
        "number": number,
        "pull_request": {"draft": draft, "html_url": format!("https://github.test/acme/api/pull/{number}")},
        "repository": {"full_name": "acme/api"},
    })
}

#[test]
fn agent_controls_are_shown_with_their_verdicts() {
    let out = agent_run("opened", &pull_request("opened", 42, false), false);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains(TOKEN), "the token in stdin is redacted");
    assert_eq!(
        text,
        r#"event d-opened type="pull_request.opened" source=gh provider=github
signature: not checked (add --verify)
1 of 2 rules match

MATCH review-pr (tests/fixtures/valid/agent.yaml:9:11)
  when: true
  action 1: shell argv=["./agent.sh","--event","<attempt dir>/event.json"]
    when: true
    stdin: "Review https://github.test/acme/api/pull/42 with [redacted]"
    files (in <attempt dir>): event.json, prompt.md
    group key "pr-42" (limit 1, on_busy cancel, kill_grace 30s)
    start_within 15m
    (attempts: 1, timeout: 30m)
    after success:
      action 1.1: http, rendered after the run (reads `result`)
        when: decided after the run (reads `result`)
        (attempts: 8, timeout: 30s)
        after success:
          action 1.1.1: log posted the review of 42
            group key decided after the run (reads `result`) (limit 1, on_busy skip, kill_grace 10s)
            (attempts: 1, timeout: 30s)
  action 2: log PR 42 queued
    when: rendered "False", not `true`: it would be skipped
    group key "42" (limit 2, on_busy replace, kill_grace 10s)
    (attempts: 1, timeout: 30s)
no    stop-review (tests/fixtures/valid/agent.yaml:39:11): event type "pull_request.opened" does not match its `event:` patterns
"#
    );
}

#[test]
fn a_failing_rule_when_is_named_with_what_it_rendered() {
    let out = agent_run("opened", &pull_request("opened", 42, true), false);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("0 of 2 rules match\n"), "{text}");
    assert!(
        text.contains(
            "no    review-pr (tests/fixtures/valid/agent.yaml:9:11): `when` rendered \"False\", not `true`\n"
        ),
        "{text}"
    );

    // A `when` that cannot render does not match either, and says why.
    let body = json!({"action": "opened", "number": 7, "repository": {"full_name": "acme/api"}});
    let out = agent_run("opened", &body, false);
    let text = stdout(&out);
    assert!(
        text.contains(
            "no    review-pr (tests/fixtures/valid/agent.yaml:9:11): `when` did not render: template failed: undefined value"
        ),
        "{text}"
    );
}

#[test]
fn agent_controls_in_json() {
    let out = agent_run("opened", &pull_request("opened", 142, false), true);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains(TOKEN), "the token in stdin is redacted");
    let v: Value = serde_json::from_str(&text).expect("stdout is JSON");
    let review = &v["rules"][0];
    assert_eq!(review["matched"], true);
    assert_eq!(review["when"], json!({"verdict": "true"}));
    let agent = &review["actions"][0];
    assert_eq!(agent["type"], "shell");
    assert_eq!(agent["when"], json!({"verdict": "true"}));
    assert_eq!(
        agent["stdin"],
        "Review https://github.test/acme/api/pull/142 with [redacted]"
    );
    assert_eq!(agent["files"], json!(["event.json", "prompt.md"]));
    assert_eq!(
        agent["group"],
        json!({"key": "pr-142", "limit": 1, "on_busy": "cancel", "kill_grace_ms": 30_000})
    );
    assert_eq!(agent["start_within_ms"], 900_000);
    let post = &agent["then"][0];
    assert_eq!(post["type"], "http");
    assert_eq!(post["after_run"], true);
    assert!(post.get("action").is_none(), "{post}");
    assert_eq!(post["when"], json!({"verdict": "after_run"}));
    let log = &post["then"][0];
    assert_eq!(
        log["action"],
        json!({"type": "log", "line": "posted the review of 142"})
    );
    assert_eq!(log["group"]["after_run"], true);
    assert!(log["group"].get("key").is_none(), "{log}");
    // 142 > 100: this time the second action's `when` holds.
    let queued = &review["actions"][1];
    assert_eq!(queued["when"], json!({"verdict": "true"}));
    assert_eq!(queued["group"]["on_busy"], "replace");
    assert!(queued.get("then").is_none(), "{queued}");
    assert!(queued.get("stdin").is_none(), "{queued}");

    // Under 100 it renders "False".
    let out = agent_run("opened", &pull_request("opened", 42, false), true);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        v["rules"][0]["actions"][1]["when"],
        json!({"verdict": "false", "rendered": "False"})
    );
    let draft = agent_run("opened", &pull_request("opened", 42, true), true);
    let v: Value = serde_json::from_str(&stdout(&draft)).unwrap();
    assert_eq!(
        v["rules"][0]["when"],
        json!({"verdict": "false", "rendered": "False"})
    );
    assert_eq!(
        v["rules"][0]["reason"],
        "`when` rendered \"False\", not `true`"
    );
}

#[test]
fn a_cancel_action_shows_its_rule_and_key() {
    let out = agent_run("closed", &pull_request("closed", 42, false), false);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "MATCH stop-review (tests/fixtures/valid/agent.yaml:39:11)\n  \
             action 1: cancel rule=review-pr key=\"pr-42\"\n    \
             (attempts: 1, timeout: 30s)\n    \
             after success:\n      \
             action 1.1: log stopped the review of 42\n"
        ),
        "{text}"
    );
}

/// `hookrouter test` on the labeled-issue rules of the `check` fixture.
fn labeled(body: &[u8]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "test",
        "--rules",
        "tests/fixtures/invalid/render_error_test.yaml",
        "--source",
        "gh",
        "--body",
        "-",
        "-H",
        "X-GitHub-Event: issues",
    ])
    .current_dir(root())
    .env_remove("HOOKROUTER_RULES")
    .env_remove("RUST_LOG")
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start hookrouter test");
    let mut input = child.stdin.take().unwrap();
    input.write_all(body).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn an_action_that_cannot_render_exits_1_and_a_skipped_one_does_not() {
    let out = labeled(br#"{"action": "labeled", "label": {"name": "agent"}}"#);
    assert_eq!(code(&out), 1, "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "action 2: would FAIL: template failed: undefined value: `body.comment` is undefined"
        ),
        "{text}"
    );
    // With the field present every action renders; action 3's `when:` holds.
    let out =
        labeled(br#"{"action": "labeled", "label": {"name": "agent"}, "comment": {"body": "go"}}"#);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    // A rule that does not match renders nothing, so nothing can fail.
    let out = labeled(br#"{"action": "opened"}"#);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
}
