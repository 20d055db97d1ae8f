//! `respond:` through the real binary: a signed Slack slash command gets the
//! rendered answer (and its delivery runs), a duplicate gets the same bytes
//! even after the rules changed, a render error gets the standard 202 and a
//! log line, a store that cannot commit gets 503 and never the template, a
//! source's `respond:` answers what no rule's does, `check` warns when two
//! responding rules overlap and fails a test whose `respond:` cannot render,
//! and the schema describes `respond`. The last test runs on PostgreSQL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{
    Receiver, Resp, Server, ServerOpts, admin_get, as_refs, run, signed_headers, stderr, stdout,
    unique, wait_until, write,
};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const WAIT: Duration = Duration::from_secs(20);

/// A slash command form as Slack posts it, with `trigger_id` (the event id)
/// and `text` of the test's choosing.
fn slash_form(text: &str, trigger_id: &str) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("token", "gIkuvaNzQIHg97ATvDxqgjtO")
        .append_pair("team_id", "T0001")
        .append_pair("channel_id", "C2147483705")
        .append_pair("user_id", "U2147483697")
        .append_pair("command", "/agent")
        .append_pair("text", text)
        .append_pair("response_url", "https://hooks.slack.com/commands/1234/5678")
        .append_pair("trigger_id", trigger_id)
        .finish()
        .into_bytes()
}

/// POST `form` to `/hooks/slack`, signed now with the source's secret.
fn post_slack(server: &Server, form: &[u8]) -> Resp {
    let mut headers = signed_headers("slack", SECRET, form, "");
    headers.push((
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    ));
    server.post("/hooks/slack", &as_refs(&headers), form)
}

fn header<'a>(resp: &'a Resp, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Rules with a slash-command rule that answers with `respond` (YAML, under
/// `respond:`) and posts the command to `receiver`.
fn slash_rules(dir: &Path, receiver: &Receiver, respond: &str) -> PathBuf {
    write(
        dir,
        "rules.yaml",
        &format!(
            r#"sources:
  - name: slack
    provider: slack
    secret: {SECRET}
rules:
  - name: slash-agent
    source: slack
    event: slash_command
    match:
      $.command: /agent
    respond:
{respond}
    actions:
      - http:
          url: {url}
          json: {{ task: "{{{{ body.text }}}}", reply_url: "{{{{ body.response_url }}}}" }}
"#,
            url = receiver.url("/agent"),
        ),
    )
}

const EPHEMERAL: &str = r#"      status: 200
      headers: { X-Handled-By: "{{ rule.name }}" }
      json: { response_type: ephemeral, text: "On it: {{ body.text }}" }"#;

#[test]
fn a_slash_command_gets_the_rendered_answer_and_a_duplicate_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start();
    let rules = slash_rules(dir.path(), &receiver, EPHEMERAL);
    let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .admin()
        .start();

    let form = slash_form("summarise the incident", &unique("trigger"));
    let resp = post_slack(&server, &form);
    assert_eq!(resp.status, 200, "{resp:?}\nlog:\n{}", server.log());
    assert_eq!(
        resp.json(),
        serde_json::json!({"response_type": "ephemeral", "text": "On it: summarise the incident"}),
        "{resp:?}"
    );
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert_eq!(header(&resp, "x-handled-by"), Some("slash-agent"));

    // The event was stored with its delivery, which runs.
    assert!(receiver.wait_count(1, WAIT), "log:\n{}", server.log());
    let sent: serde_json::Value =
        serde_json::from_slice(&receiver.bodies()[0]).expect("the action posts JSON");
    assert_eq!(sent["task"], "summarise the incident");
    let deliveries = admin_get(&server, "/api/deliveries", None).json();
    let rules_of: Vec<&str> = deliveries["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter_map(|d| d["rule"].as_str())
        .collect();
    assert_eq!(rules_of, ["slash-agent"], "{deliveries}");

    // Slack's retry of the same command: the same answer, nothing new runs.
    let again = post_slack(&server, &form);
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body, resp.body, "a duplicate gets the same bytes");
    assert_eq!(header(&again, "x-handled-by"), Some("slash-agent"));
    assert!(server.wait_log("Duplicate event ignored.", 1, WAIT));

    // New rules answer new events differently; the duplicate is still
    // answered with what was stored, byte for byte.
    let changed = r#"      status: 201
      json: { text: "changed {{ body.text }}" }"#;
    slash_rules(dir.path(), &receiver, changed);
    let (fresh, sent) = form_with_new_rules(&server, "after the reload");
    assert_eq!(
        fresh.json()["text"],
        "changed after the reload",
        "{fresh:?}"
    );
    let third = post_slack(&server, &form);
    assert_eq!(
        (third.status, third.body.as_str()),
        (200, resp.body.as_str()),
        "{third:?}"
    );
    // One delivery per event sent, none for the duplicates.
    assert!(
        receiver.wait_count(1 + sent, WAIT),
        "log:\n{}",
        server.log()
    );
    let deliveries = admin_get(&server, "/api/deliveries?limit=1000", None).json();
    assert_eq!(
        deliveries["deliveries"].as_array().map(Vec::len),
        Some(1 + sent),
        "{deliveries}"
    );
}

/// Sends new slash commands until one is answered under the reloaded rules
/// (status 201); the watcher picks up the change within a moment. Returns
/// that answer and how many commands were sent.
fn form_with_new_rules(server: &Server, text: &str) -> (Resp, usize) {
    let mut last = None;
    let mut sent = 0;
    let reloaded = wait_until(WAIT, || {
        let resp = post_slack(server, &slash_form(text, &unique("trigger")));
        sent += 1;
        let done = resp.status == 201;
        last = Some(resp);
        done
    });
    let last = last.expect("a request was sent");
    assert!(reloaded, "never reloaded: {last:?}\nlog:\n{}", server.log());
    (last, sent)
}

#[test]
fn a_respond_that_cannot_render_answers_the_standard_202_and_logs_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start();
    let broken = r#"      json: { text: "{{ body.no_such_field.name }}" }"#;
    let rules = slash_rules(dir.path(), &receiver, broken);
    let server = Server::start(&rules, &dir.path().join("data.redb"));

    let trigger = unique("trigger");
    let resp = post_slack(&server, &slash_form("deploy", &trigger));
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(resp.json()["status"], "accepted", "{resp:?}");
    assert_eq!(resp.json()["id"], trigger.as_str(), "{resp:?}");
    assert!(
        server.wait_log("respond did not render", 1, WAIT),
        "no log line; log:\n{}",
        server.log()
    );
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("respond did not render"))
        .unwrap_or_default()
        .to_owned();
    // The rule, the failing template's place (line 12 of the file, where
    // the `text:` template is) and why.
    assert!(line.contains("slash-agent"), "{line}");
    assert!(line.contains("rules.yaml:12:"), "{line}");
    assert!(line.contains("undefined"), "{line}");
    assert!(!line.contains(SECRET), "{line}");
    // The event was stored and its action runs all the same.
    assert!(receiver.wait_count(1, WAIT), "log:\n{}", server.log());
}

#[test]
fn a_store_that_cannot_commit_answers_503_not_the_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start();
    let rules = slash_rules(dir.path(), &receiver, EPHEMERAL);
    // The writer panics on its second transaction (see `src/fault.rs`).
    let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .env("HOOKROUTER_FAULT", "writer-panic-after:1")
        .start();

    let first = post_slack(&server, &slash_form("one", &unique("trigger")));
    assert_eq!(first.status, 200, "{first:?}\nlog:\n{}", server.log());
    let lost = post_slack(&server, &slash_form("two", &unique("trigger")));
    assert_eq!(lost.status, 503, "{lost:?}\nlog:\n{}", server.log());
    assert_eq!(header(&lost, "retry-after"), Some("5"), "{lost:?}");
    assert!(!lost.body.contains("On it"), "{lost:?}");
    assert!(!lost.body.contains("ephemeral"), "{lost:?}");
}

#[test]
fn a_source_respond_answers_when_no_matched_rule_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write(
        dir.path(),
        "rules.yaml",
        &format!(
            r#"sources:
  - name: slack
    provider: slack
    secret: {SECRET}
    respond:
      status: 200
      body: "received {{{{ event.type }}}} {{{{ event.id }}}}"
rules:
  - name: quiet
    source: slack
    event: slash_command
    match:
      $.command: /agent
      $.text: {{ equals: quiet }}
    actions:
      - log: "quiet [{{{{ event.id }}}}]"
  - name: loud
    source: slack
    event: slash_command
    match:
      $.text: {{ equals: loud }}
    respond:
      json: {{ text: "loud {{{{ body.user_id }}}}" }}
    actions:
      - log: "loud [{{{{ event.id }}}}]"
"#
        ),
    );
    let server = Server::start(&rules, &dir.path().join("data.redb"));

    // A matched rule without `respond:`: the source answers.
    let quiet = unique("quiet");
    let resp = post_slack(&server, &slash_form("quiet", &quiet));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, format!("received slash_command {quiet}"));
    assert_eq!(
        header(&resp, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(server.wait_log(&format!("quiet [{quiet}]"), 1, WAIT));
    // The rule's `respond:` wins over the source's.
    let resp = post_slack(&server, &slash_form("loud", &unique("loud")));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.json()["text"], "loud U2147483697", "{resp:?}");
    // No rule matched: the source still answers for the stored event.
    let none = unique("none");
    let resp = post_slack(&server, &slash_form("nothing", &none));
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body, format!("received slash_command {none}"));
}

#[test]
fn check_warns_when_two_responding_rules_can_match_one_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write(
        dir.path(),
        "rules.yaml",
        &format!(
            r#"sources:
  - name: slack
    provider: slack
    secret: {SECRET}
rules:
  - name: first
    source: slack
    event: slash_command
    respond: {{ json: {{ text: one }} }}
    actions: [ {{ log: one }} ]
  - name: mentions
    source: slack
    event: app_mention
    respond: {{ json: {{ text: mention }} }}
    actions: [ {{ log: mention }} ]
  - name: second
    source: "*"
    event: "slash_*"
    respond: {{ json: {{ text: two }} }}
    actions: [ {{ log: two }} ]
"#
        ),
    );
    let out = run(&["check", "--rules", rules.to_str().expect("path")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "a warning, not an error: {err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert_eq!(warnings.len(), 1, "only first/second overlap: {err}");
    let w = warnings[0];
    // At the later rule's `respond:`, naming the earlier one and its place.
    assert!(w.contains("rules.yaml:19:"), "{w}");
    assert!(w.contains("rule \"second\""), "{w}");
    assert!(w.contains("rule \"first\" (respond at "), "{w}");
    assert!(w.contains("rules.yaml:9:"), "{w}");
    assert!(stdout(&out).contains("1 warning"), "{}", stdout(&out));
}

#[test]
fn check_refuses_a_status_that_is_not_2xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write(
        dir.path(),
        "rules.yaml",
        &format!(
            r#"sources:
  - name: slack
    provider: slack
    secret: {SECRET}
rules:
  - name: teapot
    source: slack
    respond:
      status: 418
      body: "no"
    actions: [ {{ log: x }} ]
"#
        ),
    );
    let out = run(&["check", "--rules", rules.to_str().expect("path")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rules.yaml:9:15: rule \"teapot\": `respond.status` must be 2xx"),
        "{err}"
    );
}

#[test]
fn the_schema_describes_respond() {
    let out = run(&["schema"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let schema: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let defs = &schema["$defs"];
    for owner in ["RuleConfig", "SourceConfig"] {
        assert_eq!(
            defs[owner]["properties"]["respond"]["anyOf"][0]["$ref"], "#/$defs/RespondConfig",
            "{owner}: {}",
            defs[owner]["properties"]["respond"]
        );
    }
    let respond = &defs["RespondConfig"];
    let mut keys: Vec<&String> = respond["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    keys.sort();
    assert_eq!(keys, ["body", "headers", "json", "status"]);
    assert_eq!(respond["additionalProperties"], false);
    assert_eq!(respond["properties"]["status"]["minimum"], 200);
    assert_eq!(respond["properties"]["status"]["maximum"], 299);
}

#[test]
fn on_postgres_a_duplicate_sent_to_another_replica_gets_the_same_answer() {
    let Some(admin) = crate::postgres::test_pg() else {
        return;
    };
    let schema = crate::postgres::Schema::create(&admin);
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start();
    let rules = slash_rules(dir.path(), &receiver, EPHEMERAL);
    let url = schema.url();
    let replica = |name: &str| {
        ServerOpts::new(&rules, &dir.path().join(format!("{name}.redb")))
            .args(&["--store", &url])
            .start()
    };
    let (a, b) = (replica("a"), replica("b"));

    let form = slash_form("check the queue", &unique("trigger"));
    let first = post_slack(&a, &form);
    assert_eq!(first.status, 200, "{first:?}\nlog:\n{}", a.log());
    assert_eq!(first.json()["text"], "On it: check the queue", "{first:?}");
    assert!(receiver.wait_count(1, WAIT), "log:\n{}", a.log());
    // The other replica never rendered it: it reads the stored answer.
    let again = post_slack(&b, &form);
    assert_eq!(
        (again.status, again.body.as_str()),
        (200, first.body.as_str()),
        "{again:?}\nlog:\n{}",
        b.log()
    );
    assert_eq!(header(&again, "x-handled-by"), Some("slash-agent"));
    assert!(b.wait_log("Duplicate event ignored.", 1, WAIT));
}

#[test]
fn check_fails_a_test_whose_respond_cannot_render() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write(
        dir.path(),
        "rules.yaml",
        &format!(
            r#"sources:
  - name: slack
    provider: slack
    secret: {SECRET}
rules:
  - name: slash
    source: slack
    event: slash_command
    respond:
      json: {{ text: "{{{{ body.missing.name }}}}" }}
    actions: [ {{ log: x }} ]
tests:
  - name: a command
    source: slack
    body: {{ command: /agent, text: hi, trigger_id: "1.2" }}
    expect: [slash]
"#
        ),
    );
    let out = run(&["check", "--rules", rules.to_str().expect("path")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "rules.yaml:10:21: test \"a command\": rule \"slash\" action respond cannot render"
        ),
        "{err}"
    );
}
