//! Running hookrouter in production: hot reload, the admin listener and its
//! metrics, draining on SIGTERM, retention, secrets kept out of logs, JSON
//! logs, and the command line's help and completions.
//!
//! Rule files come from `tests/fixtures/operate/` and are copied into a
//! fresh folder per test, so a test can edit them while the server runs.
//! Their rules log `<rule>-fired[<event id>]`, so the log tells which rule
//! ran for which event.

use crate::support::unique;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::{
    self, Answer, Receiver, Resp, Server, ServerOpts, as_refs, fixture, get, request,
    signed_headers, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
/// A rule file written to disk is serving within this long.
const RELOAD_DEADLINE: Duration = Duration::from_secs(2);

type Headers = Vec<(String, String)>;

// ---- helpers ----

/// Copy `tests/fixtures/operate/<from>` to `dir/<to>`, replacing each
/// `(placeholder, value)`.
fn install(dir: &Path, from: &str, to: &str, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(fixture(&format!("operate/{from}")))
        .unwrap_or_else(|e| panic!("read fixture operate/{from}: {e}"));
    for (k, v) in replace {
        text = text.replace(k, v);
    }
    support::write(dir, to, &text)
}

fn push_body(git_ref: &str, id: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": git_ref,
        "after": "0123456789abcdef0123456789abcdef01234567",
        "repository": { "full_name": "acme/api" },
        "note": id,
    })
    .to_string()
    .into_bytes()
}

/// GitHub headers for a push, signed with `secret`.
fn push_headers(secret: &str, body: &[u8], id: &str) -> Headers {
    let mut h = signed_headers("github", secret, body, id);
    h.push(("X-GitHub-Event".into(), "push".into()));
    h.push(("Content-Type".into(), "application/json".into()));
    h
}

/// POST a signed push of `git_ref` with event id `id` to `/hooks/<source>`.
fn push(server: &Server, source: &str, secret: &str, git_ref: &str, id: &str) -> Resp {
    let body = push_body(git_ref, id);
    let headers = push_headers(secret, &body, id);
    server.post(&format!("/hooks/{source}"), &as_refs(&headers), &body)
}

/// POST a push and return how many deliveries its 202 planned.
fn deliveries_for(server: &Server, source: &str, secret: &str, git_ref: &str, id: &str) -> u64 {
    let resp = push(server, source, secret, git_ref, id);
    assert_eq!(resp.status, 202, "push {id}: {resp:?}");
    resp.json()["deliveries"]
        .as_u64()
        .unwrap_or_else(|| panic!("no deliveries count in {resp:?}"))
}

fn admin_get(server: &Server, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    get(&server.admin_url(path), &headers)
}

fn status_json(server: &Server) -> Value {
    let resp = admin_get(server, "/api/status", None);
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()
}

fn metrics_text(server: &Server, token: Option<&str>) -> String {
    let resp = admin_get(server, "/metrics", token);
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.body
}

/// Lines of `log` that contain both `a` and `b`.
fn lines_with(log: &str, a: &str, b: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(a) && l.contains(b))
        .count()
}

fn start_json(opts: ServerOpts) -> Server {
    opts.arg("--log-format").arg("json").start()
}

/// `line:col` of the JSONPath that does not parse in `extra-broken.yaml`.
fn bad_jsonpath_place(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read");
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("$.commits[").map(|c| (i + 1, c + 1)))
        .expect("the bad JSONPath is in the fixture");
    format!("{line}:{col}")
}

fn send_signal(server: &Server, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, sig).expect("send signal");
}

// ---- hot reload ----

const RL_SECRET: &str = "reload-test-secret";

/// A server on `rules/base.yaml` (plus whatever `setup` adds), with admin.
fn reload_server(setup: impl FnOnce(&Path)) -> (TempDir, PathBuf, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    install(&rules, "reload/base.yaml", "base.yaml", &[]);
    setup(&rules);
    let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .admin()
        .start();
    (dir, rules, server)
}

/// Send a push of `git_ref` with a fresh id every 50 ms until one plans
/// `want` deliveries; returns that id.
fn poll_until_deliveries(server: &Server, git_ref: &str, want: u64) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < WAIT {
        let id = unique("rl-poll");
        if deliveries_for(server, "rl", RL_SECRET, git_ref, &id) == want {
            return Some(id);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A rule change written at `written` serves pushes of `git_ref` within the
/// deadline, and `rule` runs for one of them; returns that event's id.
fn expect_served(
    server: &Server,
    git_ref: &str,
    rule: &str,
    written: Instant,
    change: &str,
) -> String {
    let id = poll_until_deliveries(server, git_ref, 1)
        .unwrap_or_else(|| panic!("the {change} never took effect; log:\n{}", server.log()));
    let took = written.elapsed();
    assert!(
        took <= RELOAD_DEADLINE,
        "the {change} took {took:?} to serve (limit {RELOAD_DEADLINE:?})"
    );
    assert!(
        server.wait_log(&format!("{rule}-fired[{id}]"), 1, WAIT),
        "{rule} did not run for {id} after the {change}; log:\n{}",
        server.log()
    );
    id
}

#[test]
fn reload_serves_a_new_rule_file_within_two_seconds() {
    let (_dir, rules, server) = reload_server(|_| {});
    let before = unique("rl-before");
    assert_eq!(
        deliveries_for(&server, "rl", RL_SECRET, "refs/heads/dev", &before),
        0,
        "refs/heads/dev matches nothing yet"
    );

    let written = Instant::now();
    install(&rules, "reload/extra.yaml", "extra.yaml", &[]);
    expect_served(
        &server,
        "refs/heads/dev",
        "rl-extra",
        written,
        "new rule file",
    );
    assert!(
        !server.log().contains(&format!("rl-extra-fired[{before}]")),
        "an event accepted before the reload ran the new rule"
    );
    // The old rule still serves alongside it.
    let main = unique("rl-main");
    assert_eq!(
        deliveries_for(&server, "rl", RL_SECRET, "refs/heads/main", &main),
        1
    );
    assert!(server.wait_log(&format!("rl-main-fired[{main}]"), 1, WAIT));
    let status = status_json(&server);
    assert_eq!(status["rules"], 2, "{status}");
    assert_eq!(status["reload"]["ok"], true, "{status}");
    assert!(
        status["reload"]["generation"].as_u64().unwrap_or(0) >= 2,
        "{status}"
    );
}

#[test]
fn reload_serves_a_changed_match_value() {
    let (_dir, rules, server) = reload_server(|_| {});
    assert_eq!(
        deliveries_for(
            &server,
            "rl",
            RL_SECRET,
            "refs/heads/release",
            &unique("rl")
        ),
        0
    );
    let base = std::fs::read_to_string(rules.join("base.yaml")).expect("read base");
    let edited = base.replace("$.ref: refs/heads/main", "$.ref: refs/heads/release");
    assert_ne!(base, edited, "the fixture has the match value to change");
    let written = Instant::now();
    support::write(&rules, "base.yaml", &edited);
    expect_served(&server, "refs/heads/release", "rl-main", written, "edit");
    assert_eq!(
        deliveries_for(&server, "rl", RL_SECRET, "refs/heads/main", &unique("rl")),
        0,
        "the old match value still matches after the edit"
    );
}

/// `--rules` naming one file that sits beside the data file (the default
/// layout): an edit in place and an editor-style replace (write a temporary
/// file, rename it over) are both served within the deadline.
#[test]
fn a_single_rule_file_beside_the_data_file_reloads_on_edit_and_on_replace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = install(dir.path(), "reload/base.yaml", "hooks.yaml", &[]);
    let server = ServerOpts::new(&file, &dir.path().join("hookrouter.redb")).start();
    let base = std::fs::read_to_string(&file).expect("read base");
    for (step, git_ref) in [
        ("edit", "refs/heads/release"),
        ("replace", "refs/heads/hotfix"),
    ] {
        assert_eq!(
            deliveries_for(&server, "rl", RL_SECRET, git_ref, &unique("rl")),
            0,
            "{git_ref} matches before the {step}"
        );
        let edited = base.replace("$.ref: refs/heads/main", &format!("$.ref: {git_ref}"));
        assert_ne!(base, edited, "the fixture has the match value to change");
        let written = Instant::now();
        if step == "edit" {
            support::write(dir.path(), "hooks.yaml", &edited);
        } else {
            let tmp = support::write(dir.path(), ".hooks.yaml.swp", &edited);
            std::fs::rename(&tmp, &file).expect("rename over the rule file");
        }
        expect_served(&server, git_ref, "rl-main", written, step);
    }
}

#[test]
fn failed_reload_keeps_the_old_rules_reports_why_and_recovers() {
    let (_dir, rules, server) = reload_server(|rules| {
        install(rules, "reload/extra.yaml", "extra.yaml", &[]);
    });
    let metrics = metrics_text(&server, None);
    assert!(
        metrics.lines().any(|l| l == "hookrouter_reload_success 1"),
        "{metrics}"
    );

    // A broken edit: a new match value and a JSONPath that does not parse.
    let broken = install(&rules, "reload/extra-broken.yaml", "extra.yaml", &[]);
    let place = format!("extra.yaml:{}", bad_jsonpath_place(&broken));
    assert!(
        server.wait_log("Reload rejected", 1, WAIT),
        "no rejected reload in the log:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(
        lines_with(&log, "Reload rejected", &place) >= 1,
        "the log does not give {place} for the bad JSONPath:\n{log}"
    );

    let status = status_json(&server);
    let reload = &status["reload"];
    assert_eq!(reload["ok"], false, "{status}");
    let errors = reload["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        errors.iter().any(|e| e
            .as_str()
            .is_some_and(|e| e.contains(&place) && e.contains("JSONPath"))),
        "/api/status does not carry the error at {place}: {status}"
    );
    assert_eq!(
        status["rules"], 2,
        "the old set is no longer served: {status}"
    );
    let metrics = metrics_text(&server, None);
    assert!(
        metrics.lines().any(|l| l == "hookrouter_reload_success 0"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hookrouter_reloads_total{result=\"failed\"} ")),
        "{metrics}"
    );

    // The old rules keep serving: dev still fires, the broken edit's value
    // does not.
    let dev = unique("rl-dev");
    assert_eq!(
        deliveries_for(&server, "rl", RL_SECRET, "refs/heads/dev", &dev),
        1
    );
    assert!(
        server.wait_log(&format!("rl-extra-fired[{dev}]"), 1, WAIT),
        "the old rule did not run; log:\n{}",
        server.log()
    );
    assert_eq!(
        deliveries_for(&server, "rl", RL_SECRET, "refs/heads/broken", &unique("rl")),
        0,
        "part of the rejected edit took effect"
    );

    // Fixing the file recovers.
    let generation = reload["generation"].as_u64().expect("generation");
    let fixed = std::fs::read_to_string(fixture("operate/reload/extra.yaml"))
        .expect("read")
        .replace("refs/heads/dev", "refs/heads/fixed");
    support::write(&rules, "extra.yaml", &fixed);
    let recovered = wait_until(WAIT, || {
        let s = status_json(&server);
        s["reload"]["ok"] == true && s["reload"]["generation"].as_u64() > Some(generation)
    });
    assert!(
        recovered,
        "the fix was not loaded: {}\nlog:\n{}",
        status_json(&server),
        server.log()
    );
    let status = status_json(&server);
    assert_eq!(
        status["reload"]["errors"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );
    assert!(
        metrics_text(&server, None)
            .lines()
            .any(|l| l == "hookrouter_reload_success 1")
    );
    assert_eq!(
        deliveries_for(&server, "rl", RL_SECRET, "refs/heads/fixed", &unique("rl")),
        1
    );
    assert_eq!(
        deliveries_for(&server, "rl", RL_SECRET, "refs/heads/dev", &unique("rl")),
        0
    );
}

#[test]
fn sighup_reloads_what_the_watcher_does_not_see() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    install(&rules, "reload/hup.yaml", "hup.yaml", &[]);
    // Outside the watched folder, and not a rule file.
    support::write(dir.path(), "secret.txt", "hup-old-secret\n");
    let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .admin()
        .start();
    let old = unique("hup");
    assert_eq!(
        push(&server, "hup", "hup-old-secret", "x", &old).status,
        202
    );
    assert!(server.wait_log(&format!("hup-fired[{old}]"), 1, WAIT));

    support::write(dir.path(), "secret.txt", "hup-new-secret\n");
    // No watcher event: the old secret stays in force until SIGHUP.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        push(&server, "hup", "hup-new-secret", "x", &unique("hup")).status,
        401,
        "the secret changed without a reload"
    );
    assert_eq!(
        server.log().matches("Rules reloaded.").count(),
        0,
        "something other than SIGHUP reloaded:\n{}",
        server.log()
    );

    send_signal(&server, nix::sys::signal::Signal::SIGHUP);
    let reloaded = wait_until(WAIT, || {
        server.log().lines().any(|l| {
            l.contains("Rules reloaded.") && l.contains("trigger=") && l.contains("sighup")
        })
    });
    assert!(
        reloaded,
        "no reload with trigger=sighup; log:\n{}",
        server.log()
    );
    let new = unique("hup");
    assert_eq!(
        push(&server, "hup", "hup-new-secret", "x", &new).status,
        202,
        "SIGHUP did not bring in the new secret; log:\n{}",
        server.log()
    );
    assert!(server.wait_log(&format!("hup-fired[{new}]"), 1, WAIT));
    assert_eq!(
        push(&server, "hup", "hup-old-secret", "x", &unique("hup")).status,
        401,
        "the old secret still verifies after the reload"
    );
    let status = status_json(&server);
    assert_eq!(
        status["reload"]["generation"], 2,
        "SIGHUP should be exactly one reload: {status}"
    );
}

#[test]
fn sighup_right_after_startup_reloads_and_does_not_kill() {
    // The harness returns as soon as the server announces itself; a SIGHUP
    // at that moment must already be handled (its default action ends the
    // process). Several starts, since the window is short.
    for _ in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = install(dir.path(), "metrics.yaml", "metrics.yaml", &[]);
        let mut server = ServerOpts::new(&rules, &dir.path().join("data.redb")).start();
        send_signal(&server, nix::sys::signal::Signal::SIGHUP);
        let reloaded = wait_until(WAIT, || {
            server.log().lines().any(|l| {
                l.contains("Rules reloaded.") && l.contains("trigger=") && l.contains("sighup")
            }) || matches!(server.child.try_wait(), Ok(Some(_)))
        });
        assert!(
            matches!(server.child.try_wait(), Ok(None)),
            "SIGHUP right after startup ended the process; log:\n{}",
            server.log()
        );
        assert!(reloaded, "no reload after SIGHUP; log:\n{}", server.log());
        assert_eq!(server.terminate().and_then(|s| s.code()), Some(0));
    }
}

#[test]
fn an_edit_right_after_startup_is_not_missed() {
    for _ in 0..3 {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("rules");
        install(&rules, "reload/base.yaml", "base.yaml", &[]);
        let server = ServerOpts::new(&rules, &dir.path().join("data.redb")).start();
        install(&rules, "reload/extra.yaml", "extra.yaml", &[]);
        assert!(
            poll_until_deliveries(&server, "refs/heads/dev", 1).is_some(),
            "an edit made as the server announced itself was never loaded; log:\n{}",
            server.log()
        );
    }
}

#[test]
fn readyz_follows_whether_rules_are_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    support::write(&rules, "empty.yaml", "# nothing yet\n");
    let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .admin()
        .start();
    let resp = admin_get(&server, "/readyz", None);
    assert_eq!(resp.status, 503, "ready without any source: {resp:?}");
    assert_eq!(admin_get(&server, "/healthz", None).status, 200);

    install(&rules, "metrics.yaml", "metrics.yaml", &[]);
    assert!(
        wait_until(WAIT, || admin_get(&server, "/readyz", None).status == 200),
        "not ready after rules arrived: {:?}\nlog:\n{}",
        admin_get(&server, "/readyz", None),
        server.log()
    );
    let ready = admin_get(&server, "/readyz", None).json();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["store"], true, "{ready}");
}

// ---- metrics ----

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        "NaN" => return Some(f64::NAN),
        _ => {}
    }
    let allowed = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && s.chars().any(|c| c.is_ascii_digit());
    allowed.then(|| s.parse::<f64>().ok()).flatten()
}

/// `k="v",k2="v2"` (the part between braces).
fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let after = &rest[eq + 1..];
        let mut chars = after.char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {name} value is not quoted"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape \\{other:?}")),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                '\n' => return Err("newline in label value".into()),
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("label {name} value not closed"))?;
        out.push((name.to_owned(), value));
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            if r.is_empty() {
                return Err("trailing comma".into());
            }
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("expected , between labels, found {rest:?}"));
        }
    }
    let mut names: Vec<&String> = out.iter().map(|(k, _)| k).collect();
    names.sort();
    names.dedup();
    if names.len() != out.len() {
        return Err("repeated label name".into());
    }
    Ok(out)
}

/// The suffixes a sample of a family of `kind` may add to its name.
fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "gaugehistogram" => &["_bucket", "_gcount", "_gsum"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Check Prometheus / OpenMetrics text exposition line by line, and that
/// histograms are cumulative with `+Inf` equal to `_count`. Returns the
/// samples.
fn validate_exposition(text: &str) -> Result<Vec<Sample>, String> {
    const TYPES: [&str; 8] = [
        "counter",
        "gauge",
        "histogram",
        "gaugehistogram",
        "stateset",
        "info",
        "summary",
        "unknown",
    ];
    if !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let bad = |why: &str| format!("line {n} {line:?}: {why}");
        if eof {
            return Err(bad("after # EOF"));
        }
        if line.is_empty() {
            return Err(bad("empty line"));
        }
        if let Some(rest) = line.strip_prefix('#') {
            if line == "# EOF" {
                eof = true;
                continue;
            }
            let rest = rest
                .strip_prefix(' ')
                .ok_or_else(|| bad("no space after #"))?;
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            let name = parts.next().ok_or_else(|| bad("no metric name"))?;
            if !is_metric_name(name) {
                return Err(bad("bad metric name"));
            }
            let arg = parts.next();
            match keyword {
                "HELP" => {
                    if arg.is_none_or(|h| h.trim().is_empty()) {
                        return Err(bad("empty HELP"));
                    }
                }
                "TYPE" => {
                    let kind = arg.ok_or_else(|| bad("TYPE without a type"))?;
                    if !TYPES.contains(&kind) {
                        return Err(bad("unknown type"));
                    }
                    if families.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(bad("family typed twice"));
                    }
                }
                "UNIT" => {
                    if arg.is_none_or(|u| !is_label_name(u)) {
                        return Err(bad("bad UNIT"));
                    }
                }
                _ => return Err(bad("unknown # line")),
            }
            continue;
        }
        let (name, labels, rest) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let close = line.rfind('}').ok_or_else(|| bad("labels not closed"))?;
                let labels = parse_labels(&line[i + 1..close]).map_err(|e| bad(&e))?;
                (&line[..i], labels, &line[close + 1..])
            }
            Some(i) => (&line[..i], Vec::new(), &line[i..]),
            None => return Err(bad("no value")),
        };
        if !is_metric_name(name) {
            return Err(bad("bad metric name"));
        }
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| bad("no space before the value"))?;
        let mut fields = rest.split(' ');
        let value = fields
            .next()
            .and_then(parse_number)
            .ok_or_else(|| bad("value is not a float"))?;
        if let Some(ts) = fields.next()
            && parse_number(ts).is_none_or(|t| !t.is_finite())
        {
            return Err(bad("timestamp is not a number"));
        }
        if fields.next().is_some() {
            return Err(bad("trailing fields"));
        }
        let family = families
            .iter()
            .find(|(f, kind)| {
                suffixes(kind)
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .map(|(f, _)| f.clone());
        if family.is_none() {
            return Err(bad("sample of a family without a TYPE line before it"));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    if !eof {
        return Err("no # EOF line".into());
    }
    // Histograms: cumulative buckets, `+Inf` equal to `_count`.
    for (family, kind) in &families {
        if kind != "histogram" {
            continue;
        }
        let bucket_name = format!("{family}_bucket");
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == bucket_name) {
            let le = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .and_then(|(_, v)| parse_number(v))
                .ok_or_else(|| format!("{bucket_name} without a numeric le: {s:?}"))?;
            let rest: Labels = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            series.entry(rest).or_default().push((le, s.value));
        }
        for (labels, buckets) in &series {
            if buckets
                .windows(2)
                .any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1)
            {
                return Err(format!(
                    "{family}{labels:?}: buckets not cumulative: {buckets:?}"
                ));
            }
            let inf = buckets
                .last()
                .filter(|(le, _)| le.is_infinite())
                .ok_or_else(|| format!("{family}{labels:?}: no +Inf bucket"))?;
            let count = samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && s.labels == *labels)
                .ok_or_else(|| format!("{family}{labels:?}: no _count"))?;
            if (count.value - inf.1).abs() > f64::EPSILON {
                return Err(format!(
                    "{family}{labels:?}: +Inf bucket {} != _count {}",
                    inf.1, count.value
                ));
            }
        }
    }
    Ok(samples)
}

/// The sum of the samples named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

fn has(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

#[test]
fn exposition_validator_rejects_what_is_not_exposition() {
    let good = "# HELP a_total Things.\n# TYPE a counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\
                # HELP h Hist.\n# TYPE h histogram\nh_sum 1.5\nh_count 2\n\
                h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n";
    let samples = validate_exposition(good).expect("valid exposition");
    assert_eq!(value(&samples, "a_total", &[("x", "1")]), 3.0);
    for bad in [
        "a_total 1\n# EOF\n",                              // no TYPE
        "# TYPE a counter\na_total one\n# EOF\n",          // value
        "# TYPE a counter\na_total{x=1} 1\n# EOF\n",       // unquoted
        "# TYPE a counter\na_total{x=\"1\",} 1\n# EOF\n",  // trailing comma
        "# TYPE a counter\na_total{x=\"1\"}1\n# EOF\n",    // no space
        "# TYPE a counter\na_total 1\n",                   // no EOF
        "# TYPE a counter\na_total 1\n# EOF\na_total 2\n", // after EOF
        "# TYPE a kounter\na_total 1\n# EOF\n",            // type
        "# TYPE a counter\n\na_total 1\n# EOF\n",          // empty line
        "# HELP a\n# TYPE a counter\na_total 1\n# EOF\n",  // empty help
        "# TYPE a counter\na 1\n# EOF\n",                  // counter suffix
        "# TYPE a counter\na_total 1 2 3\n# EOF\n",        // extra
        "# TYPE h histogram\nh_count 2\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\n# EOF\n",
        "# TYPE h histogram\nh_count 3\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n",
        "# TYPE a counter\n# TYPE a counter\na_total 1\n# EOF\n", // typed twice
        "# a comment\n# EOF\n",                                   // stray comment
    ] {
        assert!(
            validate_exposition(bad).is_err(),
            "accepted invalid exposition:\n{bad}"
        );
    }
}

const MET_SECRET: &str = "metrics-test-secret";

#[test]
fn metrics_are_valid_exposition_and_count_what_happens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(dir.path(), "metrics.yaml", "metrics.yaml", &[]);
    let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .admin()
        .start();
    let resp = admin_get(&server, "/metrics", None);
    assert_eq!(resp.status, 200);
    let ctype = resp
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        ctype.starts_with("application/openmetrics-text") || ctype.starts_with("text/plain"),
        "content type {ctype:?}"
    );
    let before = validate_exposition(&resp.body)
        .unwrap_or_else(|e| panic!("invalid exposition: {e}\n{}", resp.body));

    const N: usize = 3;
    let ids: Vec<String> = (0..N).map(|_| unique("met")).collect();
    for id in &ids {
        assert_eq!(push(&server, "met", MET_SECRET, "x", id).status, 202);
    }
    let bad = push(&server, "met", "not-the-secret", "x", &unique("met"));
    assert_eq!(bad.status, 401);
    for id in &ids {
        assert!(
            server.wait_log(&format!("met-fired[{id}]"), 1, WAIT),
            "{id} did not run; log:\n{}",
            server.log()
        );
    }
    // Deliveries are counted once recorded; give the dispatcher a moment.
    let mut text = String::new();
    let settled = wait_until(WAIT, || {
        text = metrics_text(&server, None);
        validate_exposition(&text).is_ok_and(|s| {
            value(&s, "hookrouter_deliveries_total", &[("outcome", "ok")])
                - value(&before, "hookrouter_deliveries_total", &[("outcome", "ok")])
                >= N as f64
        })
    });
    let after =
        validate_exposition(&text).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text}"));
    assert!(settled, "deliveries never counted:\n{text}");

    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        delta(
            "hookrouter_requests_total",
            &[("source", "met"), ("status", "202")]
        ),
        N as f64,
        "{text}"
    );
    assert_eq!(
        delta(
            "hookrouter_requests_total",
            &[("source", "met"), ("status", "401")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(
            "hookrouter_verification_failures_total",
            &[("source", "met"), ("reason", "mismatch")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta("hookrouter_events_matched_total", &[("rule", "met-all")]),
        N as f64,
        "{text}"
    );
    assert_eq!(
        delta(
            "hookrouter_deliveries_total",
            &[("action", "log"), ("outcome", "ok")]
        ),
        N as f64,
        "{text}"
    );
    assert!(
        delta("hookrouter_ingest_latency_seconds_count", &[]) >= (N + 1) as f64,
        "{text}"
    );
    assert!(
        delta(
            "hookrouter_ingest_latency_seconds_bucket",
            &[("le", "+Inf")]
        ) >= (N + 1) as f64,
        "{text}"
    );
    assert!(
        delta(
            "hookrouter_store_commit_batch_size_bucket",
            &[("le", "+Inf")]
        ) >= 1.0,
        "{text}"
    );
    for name in [
        "hookrouter_queue_depth",
        "hookrouter_ingest_latency_seconds_bucket",
        "hookrouter_store_commit_batch_size_bucket",
        "hookrouter_reload_success",
    ] {
        assert!(has(&after, name), "no {name}:\n{text}");
    }
    assert_eq!(
        value(&after, "hookrouter_queue_depth", &[("state", "pending")]),
        0.0,
        "{text}"
    );
}

#[test]
fn admin_token_guards_metrics_and_api_but_not_probes() {
    const TOKEN: &str = "admin-test-token-5c1e";
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(dir.path(), "metrics.yaml", "metrics.yaml", &[]);
    let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .admin()
        .arg("--admin-token")
        .arg(TOKEN)
        .start();
    let id = unique("tok");
    let accepted = push(&server, "met", MET_SECRET, "x", &id);
    assert_eq!(accepted.status, 202);
    let key = accepted.json()["key"].as_str().expect("key").to_owned();

    for path in [
        "/metrics".to_owned(),
        "/api/status".to_owned(),
        "/api/events".to_owned(),
        format!("/api/events/{key}"),
        "/api/deliveries".to_owned(),
    ] {
        for wrong in [None, Some("wrong-token"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let resp = admin_get(&server, &path, wrong);
            assert_eq!(resp.status, 401, "{path} with {wrong:?}: {resp:?}");
            assert!(!resp.body.contains(&id), "{path} leaked data without auth");
        }
        let basic_auth = format!("Basic {TOKEN}");
        let basic = get(
            &server.admin_url(&path),
            &[("Authorization", basic_auth.as_str())],
        );
        assert_eq!(basic.status, 401, "{path} accepted a non-bearer scheme");
        let resp = admin_get(&server, &path, Some(TOKEN));
        assert_eq!(resp.status, 200, "{path} with the token: {resp:?}");
    }
    let replay = request(
        "POST",
        &server.admin_url(&format!("/api/replay/{key}")),
        &[],
        b"",
    );
    assert_eq!(replay.status, 401, "replay without the token: {replay:?}");
    let events = admin_get(&server, "/api/events", Some(TOKEN)).body;
    assert!(events.contains(&id), "{events}");
    let metrics = admin_get(&server, "/metrics", Some(TOKEN)).body;
    validate_exposition(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));

    for path in ["/healthz", "/readyz"] {
        let resp = admin_get(&server, path, None);
        assert_eq!(resp.status, 200, "{path} needs no token: {resp:?}");
    }
    assert_eq!(admin_get(&server, "/readyz", None).json()["ready"], true);
}

// ---- SIGTERM ----

fn try_post(agent: &ureq::Agent, url: &str, headers: &Headers, body: &[u8]) -> Result<u16, String> {
    let mut req = http::Request::builder().method("POST").uri(url);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(body.to_vec()).map_err(|e| e.to_string())?;
    agent
        .run(req)
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// Ids in `drain-fired[<id>]` log lines, with how often each appears.
fn fired_counts(logs: &[String], tag: &str) -> BTreeMap<String, usize> {
    let needle = format!("{tag}-fired[");
    let mut out = BTreeMap::new();
    for log in logs {
        for line in log.lines() {
            if let Some(start) = line.find(&needle) {
                let rest = &line[start + needle.len()..];
                if let Some(end) = rest.find(']') {
                    *out.entry(rest[..end].to_owned()).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

fn received_counts(receiver: &Receiver) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for body in receiver.bodies() {
        if let Some(id) = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
        {
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}

/// A receiver that answers 200 after `delay`, and `drain.yaml` pointed at it
/// in a fresh folder.
fn slow_drain(delay: Duration) -> (Receiver, TempDir, PathBuf) {
    let receiver = Receiver::answering(Answer::status(200).delay(delay).echo(false));
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(
        dir.path(),
        "drain.yaml",
        "drain.yaml",
        &[("@RECEIVER@", &receiver.url(""))],
    );
    (receiver, dir, rules)
}

#[test]
fn sigterm_under_load_drains_and_every_acknowledged_event_runs() {
    const SECRET: &str = "drain-test-secret";
    const THREADS: usize = 4;
    const GRACE: Duration = Duration::from_secs(5);
    // A slow receiver: actions are still running, and more are queued, when
    // SIGTERM arrives.
    let (receiver, dir, rules) = slow_drain(Duration::from_millis(150));
    let data = dir.path().join("data.redb");
    // Few workers, so deliveries are still queued at SIGTERM.
    let mut first = ServerOpts::new(&rules, &data)
        .arg("--grace")
        .arg("5s")
        .arg("--workers")
        .arg("4")
        .start();
    let url = first.url("/hooks/drain");

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let other = Arc::new(Mutex::new(Vec::<(String, u16)>::new()));
    let terminated = Arc::new(AtomicBool::new(false));
    let acked_after_term = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, acked, other) = (url.clone(), acked.clone(), other.clone());
            let (terminated, acked_after_term, stop) =
                (terminated.clone(), acked_after_term.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                let start = Instant::now();
                for i in 0.. {
                    if stop.load(Ordering::Acquire) || start.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                    let id = format!("drain-{}-{t}-{i}", std::process::id());
                    let body = push_body("refs/heads/main", &id);
                    let headers = push_headers(SECRET, &body, &id);
                    let was_terminated = terminated.load(Ordering::Acquire);
                    match try_post(&agent, &url, &headers, &body) {
                        Ok(s) if (200..300).contains(&s) => {
                            acked.lock().unwrap().push(id);
                            if was_terminated {
                                acked_after_term.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(s) => other.lock().unwrap().push((id, s)),
                        // Refused or reset: the server stopped accepting.
                        Err(_) if terminated.load(Ordering::Acquire) => break,
                        Err(e) => panic!("request {id} failed before SIGTERM: {e}"),
                    }
                }
            })
        })
        .collect();

    assert!(
        wait_until(WAIT, || acked.lock().unwrap().len() >= 120),
        "load never got going; log:\n{}",
        first.log()
    );
    terminated.store(true, Ordering::Release);
    let sent_at = Instant::now();
    let status = first.terminate();
    let took = sent_at.elapsed();
    stop.store(true, Ordering::Release);
    for w in workers {
        w.join().expect("sender thread");
    }
    let status = status.unwrap_or_else(|| panic!("no exit after SIGTERM; log:\n{}", first.log()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status:?}; log:\n{}",
        first.log()
    );
    assert!(
        took <= GRACE + Duration::from_secs(3),
        "draining took {took:?} with a {GRACE:?} grace period"
    );
    assert!(first.log().contains("Stopped."), "{}", first.log());
    let other = other.lock().unwrap().clone();
    assert!(
        other.iter().all(|(_, s)| *s == 503),
        "answers other than 2xx or 503 under load: {other:?}"
    );

    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let http_before_restart = received_counts(&receiver).len();
    let second = ServerOpts::new(&rules, &data).admin().start();
    let logs = || vec![first.log(), second.log()];
    let complete = wait_until(WAIT, || {
        let got = received_counts(&receiver);
        let fired = fired_counts(&logs(), "drain");
        acked
            .iter()
            .all(|id| got.contains_key(id) && fired.contains_key(id))
    });
    let got = received_counts(&receiver);
    let fired = fired_counts(&logs(), "drain");
    let missing_http: Vec<&String> = acked.iter().filter(|id| !got.contains_key(*id)).collect();
    let missing_log: Vec<&String> = acked.iter().filter(|id| !fired.contains_key(*id)).collect();
    let dup_http = got.values().filter(|n| **n > 1).count();
    let dup_log = fired.values().filter(|n| **n > 1).count();
    eprintln!(
        "sigterm drain: {} acknowledged ({} sent after SIGTERM), exit in {took:?}{}, \
         {http_before_restart} delivered by http before the restart; \
         duplicates: {dup_http} http, {dup_log} log",
        acked.len(),
        acked_after_term.load(Ordering::Relaxed),
        if first.log().contains("Grace period over") {
            " (grace period ran out)"
        } else {
            ""
        },
    );
    // What both logs say about a few of the missing.
    let story: String = missing_http
        .iter()
        .chain(&missing_log)
        .take(3)
        .flat_map(|id| {
            logs().into_iter().enumerate().flat_map(move |(run, log)| {
                log.lines()
                    .filter(|l| l.contains(id.as_str()))
                    .map(|l| format!("run {}: {l}\n", run + 1))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    assert!(
        complete,
        "acknowledged events never delivered: {} by http {:?}, {} by log {:?}\n\
         their log lines:\n{story}\nleased: {}\npending: {}\nrestarted log:\n{}",
        missing_http.len(),
        missing_http.iter().take(10).collect::<Vec<_>>(),
        missing_log.len(),
        missing_log.iter().take(10).collect::<Vec<_>>(),
        get(&second.admin_url("/api/deliveries?state=leased"), &[]).body,
        get(&second.admin_url("/api/deliveries?state=pending"), &[]).body,
        second.log()
    );
    // Actions running at SIGTERM finished within the grace period, so none
    // was cut off and sent again.
    assert_eq!(
        dup_http,
        0,
        "http actions sent twice across a graceful stop: {:?}",
        got.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
}

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

#[test]
fn a_second_signal_exits_at_once_and_the_cut_action_runs_after_restart() {
    const SECRET: &str = "drain-test-secret";
    let slow = Receiver::answering(
        Answer::status(200)
            .delay(Duration::from_secs(15))
            .echo(false),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(
        dir.path(),
        "drain.yaml",
        "drain.yaml",
        &[("@RECEIVER@", &slow.url(""))],
    );
    let data = dir.path().join("data.redb");
    let mut first = ServerOpts::new(&rules, &data)
        .arg("--grace")
        .arg("60s")
        .start();
    let id = unique("cut");
    assert_eq!(push(&first, "drain", SECRET, "x", &id).status, 202);
    assert!(
        wait_until(WAIT, || !slow.bodies().is_empty()),
        "the action never started; log:\n{}",
        first.log()
    );

    send_signal(&first, nix::sys::signal::Signal::SIGTERM);
    assert!(first.wait_log("Shutting down", 1, WAIT), "{}", first.log());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        matches!(first.child.try_wait(), Ok(None)),
        "exited while an action was still running within the grace period"
    );
    let second_signal = Instant::now();
    send_signal(&first, nix::sys::signal::Signal::SIGTERM);
    let exited = wait_until(Duration::from_secs(5), || {
        matches!(first.child.try_wait(), Ok(Some(_)))
    });
    assert!(
        exited,
        "still running 5 s after the second signal; log:\n{}",
        first.log()
    );
    let status = first.child.wait().expect("status");
    assert_ne!(status.code(), Some(0), "{status:?}");
    assert!(second_signal.elapsed() < Duration::from_secs(5));

    // The cut action runs again after a restart (pointed at a quick receiver).
    let quick = Receiver::answering(Answer::status(200).delay(Duration::ZERO).echo(false));
    install(
        dir.path(),
        "drain.yaml",
        "drain.yaml",
        &[("@RECEIVER@", &quick.url(""))],
    );
    let second = ServerOpts::new(&rules, &data).start();
    assert!(
        wait_until(WAIT, || received_counts(&quick).contains_key(&id)),
        "the interrupted action never ran again; log:\n{}",
        second.log()
    );
}

// ---- retention ----

const RET_SECRET: &str = "retention-test-secret";

fn retention_server(args: &[&str]) -> (TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(dir.path(), "retention.yaml", "retention.yaml", &[]);
    let mut opts = ServerOpts::new(&rules, &dir.path().join("data.redb")).admin();
    for a in args {
        opts = opts.arg(a);
    }
    (dir, opts.start())
}

fn listed(server: &Server, id: &str) -> bool {
    let resp = admin_get(server, "/api/events?limit=1000", None);
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["event_id"] == id))
}

#[test]
fn retention_prunes_old_events() {
    let (_dir, server) = retention_server(&["--retention", "2s", "--dedup-window", "1s"]);
    let id = unique("ret");
    let sent = Instant::now();
    let resp = push(&server, "ret", RET_SECRET, "x", &id);
    assert_eq!(resp.status, 202, "{resp:?}");
    let key = resp.json()["key"].as_str().expect("key").to_owned();
    assert!(listed(&server, &id), "a fresh event is not listed");
    assert!(server.wait_log(&format!("ret-fired[{id}]"), 1, WAIT));

    let gone = wait_until(WAIT, || !listed(&server, &id));
    let after = sent.elapsed();
    assert!(
        gone,
        "the event is still listed after {after:?}; log:\n{}",
        server.log()
    );
    assert!(
        after >= Duration::from_secs(2),
        "pruned after {after:?}, before the 2 s retention"
    );
    assert_eq!(
        admin_get(&server, &format!("/api/events/{key}"), None).status,
        404
    );
    assert!(
        server.log().contains("Pruned old data."),
        "{}",
        server.log()
    );

    // Past the dedup window the same id is a new event.
    let again = push(&server, "ret", RET_SECRET, "x", &id);
    assert_eq!(again.status, 202, "{again:?}");
    assert!(server.wait_log(&format!("ret-fired[{id}]"), 2, WAIT));
}

#[test]
fn duplicates_within_the_window_stay_duplicates_across_prunes() {
    let (_dir, server) = retention_server(&["--retention", "60s", "--dedup-window", "60s"]);
    let id = unique("dup");
    assert_eq!(push(&server, "ret", RET_SECRET, "x", &id).status, 202);
    let dup = push(&server, "ret", RET_SECRET, "x", &id);
    assert_eq!(dup.status, 200, "{dup:?}");
    assert_eq!(dup.json()["status"], "duplicate", "{dup:?}");
    // Pruning runs every 6 s at this retention; outlast one pass.
    std::thread::sleep(Duration::from_secs(7));
    let dup = push(&server, "ret", RET_SECRET, "x", &id);
    assert_eq!(dup.status, 200, "{dup:?}");
    assert_eq!(dup.json()["status"], "duplicate", "{dup:?}");
    assert!(listed(&server, &id));
    assert!(server.wait_log(&format!("ret-fired[{id}]"), 1, WAIT));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.log().matches(&format!("ret-fired[{id}]")).count(),
        1,
        "a duplicate ran again"
    );
}

#[test]
fn retention_is_raised_to_the_dedup_window() {
    let (_dir, server) = retention_server(&["--retention", "1s", "--dedup-window", "5s"]);
    assert!(
        server.wait_log("Retention raised", 1, WAIT),
        "{}",
        server.log()
    );
    let id = unique("raise");
    assert_eq!(push(&server, "ret", RET_SECRET, "x", &id).status, 202);
    // Well past the 1 s asked for, with pruning every second.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        listed(&server, &id),
        "pruned before the dedup window ended; log:\n{}",
        server.log()
    );
    let dup = push(&server, "ret", RET_SECRET, "x", &id);
    assert_eq!(dup.status, 200, "{dup:?}");
    assert_eq!(dup.json()["status"], "duplicate", "{dup:?}");
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

// ---- command line ----

#[test]
fn completions_print_a_script_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = support::run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = support::stdout(&out);
        assert!(
            script.len() > 200 && script.contains("hookrouter"),
            "{shell} completions:\n{script}"
        );
    }
    let out = support::run(&["completions", "no-such-shell"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn help_of_every_command_has_an_example() {
    let out = support::run(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = support::stdout(&out);
    assert!(help.contains("Example"), "hookrouter --help:\n{help}");
    // Subcommands as `--help` lists them.
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description continues further indented.
        .filter(|l| !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    for want in [
        "serve",
        "check",
        "test",
        "events",
        "deliveries",
        "replay",
        "schema",
        "completions",
    ] {
        assert!(
            commands.iter().any(|c| c == want),
            "{want} is not listed in --help: {commands:?}\n{help}"
        );
    }
    for command in &commands {
        let out = support::run(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help: {out:?}");
        let text = support::stdout(&out);
        assert!(
            text.contains("Example"),
            "hookrouter {command} --help has no example:\n{text}"
        );
    }
}
