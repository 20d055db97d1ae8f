//! Log fields and stored keys read as plain values: a status is a number
//! that is left out when there is none, lists and labels carry no Rust
//! syntax, in text and in JSON logs; an event's dedup key is shown as its
//! source and id in the admin API and in `hookrouter events`.

use std::time::Duration;

use serde_json::Value;

use crate::support::{self, Answer, Receiver, Server, ServerOpts, as_refs, get, signed_headers};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "log-fields-secret";

/// Every kind of attempt result: an HTTP 200, an HTTP 500 that retries and
/// dies, a refused connection (no status at all) that retries and dies, a
/// command that prints and exits 0, one that exits 1, and a log line.
fn rules(ok: &str, failing: &str, refused: &str) -> String {
    format!(
        r#"sources:
  - name: lf
    provider: github
    secret: {SECRET}

rules:
  - name: lf
    source: lf
    event: push
    actions:
      - http: {{ url: "{ok}/ok", json: {{ id: "{{{{ event.id }}}}" }} }}
      - http: {{ url: "{failing}/fail", json: {{ id: "{{{{ event.id }}}}" }} }}
        retry: {{ attempts: 2, backoff: 50ms, max_backoff: 100ms }}
      - http: {{ url: "{refused}/refused", json: {{ id: "{{{{ event.id }}}}" }} }}
        retry: {{ attempts: 2, backoff: 50ms, max_backoff: 100ms }}
      - shell: ["echo", "lf-shell[{{{{ event.id }}}}]"]
        timeout: 10s
      - shell: ["false"]
        timeout: 10s
      - log: "lf-fired[{{{{ event.id }}}}]"

  - name: lf-also
    source: lf
    event: push
    actions:
      - log: "lf-also-fired[{{{{ event.id }}}}]"
"#
    )
}

/// A port nothing listens on: bound, then released.
fn refused_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

/// One log line, text or JSON, asked for its fields the same way.
struct Line<'a> {
    raw: &'a str,
    json: Option<Value>,
}

impl<'a> Line<'a> {
    fn parse(raw: &'a str, json: bool) -> Self {
        let json = json
            .then(|| serde_json::from_str(raw).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}")));
        Line { raw, json }
    }

    fn is(&self, message: &str) -> bool {
        match &self.json {
            Some(v) => v["message"] == message,
            None => self.raw.contains(message),
        }
    }

    /// The field's value as written: the JSON value, or the text after
    /// `name=` up to the next space.
    fn field(&self, name: &str) -> Option<Value> {
        match &self.json {
            Some(v) => v.get(name).cloned(),
            None => {
                let prefix = format!("{name}=");
                self.raw
                    .split_whitespace()
                    .find_map(|t| t.strip_prefix(prefix.as_str()))
                    .map(|s| Value::String(s.to_owned()))
            }
        }
    }

    fn about(&self, rule: &str, action: u32) -> bool {
        self.field("rule").is_some_and(|r| r == rule)
            && self
                .field("action")
                .is_some_and(|a| a == action || a == action.to_string().as_str())
    }
}

/// What a number looks like in each format: bare in text, a JSON number.
fn number(json: bool, n: i64) -> Value {
    if json {
        Value::from(n)
    } else {
        Value::String(n.to_string())
    }
}

fn send(server: &Server, kind: &str, id: &str, secret: &str) -> support::Resp {
    let body = serde_json::json!({ "ref": "refs/heads/main", "note": id })
        .to_string()
        .into_bytes();
    let mut h = signed_headers("github", secret, &body, id);
    h.push(("X-GitHub-Event".into(), kind.into()));
    h.push(("Content-Type".into(), "application/json".into()));
    server.post("/hooks/lf", &as_refs(&h), &body)
}

fn logs_and_dedup_read_plainly(json: bool) {
    let ok = Receiver::start();
    let failing = Receiver::answering(Answer::status(500));
    let dir = tempfile::tempdir().expect("tempdir");
    let rules_dir = dir.path().join("rules");
    support::write(
        &rules_dir,
        "lf.yaml",
        &rules(&ok.url(""), &failing.url(""), &refused_url()),
    );
    let data = dir.path().join("data.redb");
    let mut server = ServerOpts::new(&rules_dir, &data)
        .admin()
        .arg("--log-format")
        .arg(if json { "json" } else { "text" })
        // Only this program's lines: a library's debug text is its own.
        .arg("--log-level")
        .arg("warn,hookrouter=debug")
        .start();

    let id = support::unique("lf");
    let resp = send(&server, "push", &id, SECRET);
    assert_eq!(resp.status, 202, "{resp:?}");
    let key = resp.json()["key"].as_str().expect("key").to_owned();
    let unmatched = send(&server, "issues", &support::unique("lf"), SECRET);
    assert_eq!(unmatched.json()["deliveries"], 0, "{unmatched:?}");
    let forged = send(&server, "push", &support::unique("lf"), "wrong");
    assert_eq!(forged.status, 401, "{forged:?}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");

    // Four deliveries finish, three go dead (two after a retry each).
    assert!(
        server.wait_log("Delivery done.", 4, WAIT)
            && server.wait_log("Delivery dead.", 3, WAIT)
            && server.wait_log("Rules reloaded.", 1, WAIT),
        "the deliveries did not all finish; log:\n{}",
        server.log()
    );

    // The admin API shows the dedup key as the source and id it stands for.
    let detail = get(&server.admin_url(&format!("/api/events/{key}")), &[]);
    assert_eq!(detail.status, 200, "{detail:?}");
    assert!(
        !detail.body.contains("\\u0000") && !detail.body.contains('\0'),
        "the API shows the stored key's separator: {}",
        detail.body
    );
    assert_eq!(
        detail.json()["dedup"],
        serde_json::json!({ "source": "lf", "id": id }),
        "{}",
        detail.body
    );

    assert_eq!(server.terminate().and_then(|s| s.code()), Some(0));
    let log = server.log();

    let lines: Vec<Line> = log.lines().map(|l| Line::parse(l, json)).collect();
    for l in &lines {
        for bad in ["Some(", "None"] {
            assert!(!l.raw.contains(bad), "{bad} in a log line: {}", l.raw);
        }
        match &l.json {
            // A string field that is debug text starts with a quote or a
            // bracket once serialized into the JSON string.
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    if let Value::String(s) = v {
                        assert!(
                            !s.starts_with('"') && !s.starts_with('['),
                            "field {k} is debug text: {}",
                            l.raw
                        );
                    }
                }
            }
            Some(other) => panic!("not an object: {other}"),
            None => {
                for bad in ["=\"", "=["] {
                    assert!(!l.raw.contains(bad), "{bad} in a log line: {}", l.raw);
                }
            }
        }
    }
    let find = |message: &str, rule: &str, action: u32| -> Vec<&Line> {
        lines
            .iter()
            .filter(|l| l.is(message) && l.about(rule, action))
            .collect()
    };
    // (message, rule, action, the status its one line carries)
    let expected: [(&str, &str, u32, Option<i64>); 9] = [
        ("Delivery done.", "lf", 1, Some(200)),
        ("Delivery failed; will retry.", "lf", 2, Some(500)),
        ("Delivery dead.", "lf", 2, Some(500)),
        ("Delivery failed; will retry.", "lf", 3, None),
        ("Delivery dead.", "lf", 3, None),
        ("Delivery done.", "lf", 4, Some(0)),
        ("Delivery dead.", "lf", 5, Some(1)),
        ("Delivery done.", "lf", 6, None),
        ("Delivery done.", "lf-also", 1, None),
    ];
    for (message, rule, action, status) in expected {
        let found = find(message, rule, action);
        assert_eq!(
            found.len(),
            1,
            "one {message:?} line for {rule} action {action} wanted; log:\n{log}"
        );
        assert_eq!(
            found[0].field("status"),
            status.map(|s| number(json, s)),
            "status of {message:?} for {rule} action {action}: {}",
            found[0].raw
        );
    }
    // The command's output line names the rule, not the action.
    let command: Vec<&Line> = lines
        .iter()
        .filter(|l| l.is("Command finished.") && l.raw.contains(&format!("lf-shell[{id}]")))
        .collect();
    assert_eq!(command.len(), 1, "no command output line; log:\n{log}");
    assert_eq!(command[0].field("status"), Some(number(json, 0)));

    // Lists and labels are plain words.
    let field_of = |message: &str, name: &str| -> Vec<Option<Value>> {
        lines
            .iter()
            .filter(|l| l.is(message))
            .map(|l| l.field(name))
            .collect()
    };
    let text = |s: &str| Some(Value::String(s.to_owned()));
    // The event no rule matched has no `rules` field at all.
    assert_eq!(
        field_of("Event accepted.", "rules"),
        vec![text("lf,lf-also"), None]
    );
    assert_eq!(
        field_of("Signature verification failed.", "reason"),
        vec![text("mismatch")]
    );
    assert_eq!(field_of("Rules reloaded.", "trigger"), vec![text("sighup")]);

    // `hookrouter events KEY` on the data file shows the same dedup key.
    let out = support::run(&[
        "events",
        &key,
        "--data",
        data.to_str().expect("utf-8 path"),
        "--json",
    ]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let cli: Value = serde_json::from_str(&support::stdout(&out)).expect("events --json");
    assert_eq!(
        cli["dedup"],
        serde_json::json!({ "source": "lf", "id": id }),
        "{cli}"
    );
    assert!(!support::stdout(&out).contains("\\u0000"));
}

#[test]
fn text_logs_and_the_event_api_show_plain_values() {
    logs_and_dedup_read_plainly(false);
}

#[test]
fn json_logs_and_the_event_api_show_plain_values() {
    logs_and_dedup_read_plainly(true);
}
