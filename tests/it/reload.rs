//! Hot reload: a rule file added, changed, edited in place or replaced is
//! served within two seconds; a reload that fails keeps the old rules,
//! says why (log, status, metrics) and recovers once the file is fixed;
//! SIGHUP reloads what the file watcher cannot see; neither a SIGHUP nor an
//! edit right after startup is missed.
//!
//! Rule files come from `tests/fixtures/operate/reload/` (see
//! `support::install`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::support::{
    self, Server, ServerOpts, admin_get, bad_jsonpath_place, fixture, install, metrics_text, push,
    send_signal, unique, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);

/// A rule file written to disk is serving within this long.
const RELOAD_DEADLINE: Duration = Duration::from_secs(2);

/// POST a push and return how many deliveries its 202 planned.
fn deliveries_for(server: &Server, source: &str, secret: &str, git_ref: &str, id: &str) -> u64 {
    let resp = push(server, source, secret, git_ref, id);
    assert_eq!(resp.status, 202, "push {id}: {resp:?}");
    resp.json()["deliveries"]
        .as_u64()
        .unwrap_or_else(|| panic!("no deliveries count in {resp:?}"))
}

fn status_json(server: &Server) -> Value {
    let resp = admin_get(server, "/api/status", None);
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()
}

/// Lines of `log` that contain both `a` and `b`.
fn lines_with(log: &str, a: &str, b: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(a) && l.contains(b))
        .count()
}

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
