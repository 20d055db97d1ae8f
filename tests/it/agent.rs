//! Agent controls end to end: cancelling runs by hand (`POST /api/cancel`,
//! `hookrouter cancel`), what a cancelled delivery becomes across a
//! `kill -9` and a restart, and replaying it.
//!
//! The runs are real processes: a script that writes a marker when it
//! starts and another when it receives SIGTERM, so a test sees that the
//! signal arrived, not only what the store says.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{
    self, Server, ServerOpts, as_refs, get, request, signed_headers, unique, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "s3cret";

/// A tempdir with `rules.yaml` (a `github` source, then `rules` with `@DIR@`
/// standing for the tempdir) and the data file.
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

    fn script(&self, name: &str, text: &str) {
        let p = support::write(self.path(), name, text);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    /// Lines of a marker file (empty when it does not exist).
    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path().join(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A run that records each start in `runs`, its pid in `pid`, and a line in
/// `term` when SIGTERM arrives. With `$1 = stay` it ignores SIGTERM (it
/// must then be killed); otherwise it exits at once on it. It gives up on
/// its own after 30 s so no test leaves it behind for long.
const RUN: &str = r#"#!/bin/sh
dir="$(dirname "$0")"
echo "$$" >> "$dir/runs"
echo "$$" > "$dir/pid"
if [ "$1" = stay ]; then
  trap 'echo term >> "$dir/term"' TERM
else
  trap 'echo term >> "$dir/term"; exit 143' TERM
fi
i=0
while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
"#;

fn rules(arg: &str) -> String {
    format!(
        r#"  - name: review
    source: github
    event: push
    actions:
      - shell: ["@DIR@/run.sh", "{arg}"]
        timeout: 60s
"#
    )
}

fn send(server: &Server) -> String {
    let body = json!({ "n": unique("n") }).to_string().into_bytes();
    let mut headers = signed_headers("github", SECRET, &body, &unique("evt"));
    headers.push(("X-GitHub-Event".into(), "push".into()));
    headers.push(("Content-Type".into(), "application/json".into()));
    let resp = server.post("/hooks/github", &as_refs(&headers), &body);
    assert_eq!(resp.status, 202, "{}\nlog:\n{}", resp.body, server.log());
    resp.json()["key"].as_str().expect("key").to_owned()
}

fn event(server: &Server, key: &str) -> Value {
    let resp = get(&server.admin_url(&format!("/api/events/{key}")), &[]);
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.json()
}

fn states(server: &Server, key: &str) -> Vec<String> {
    event(server, key)["deliveries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|d| d["state"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn cancel(server: &Server, key: &str) -> (u16, Value) {
    let resp = request(
        "POST",
        &server.admin_url(&format!("/api/cancel/{key}")),
        &[],
        b"",
    );
    let value = serde_json::from_str(&resp.body).unwrap_or(Value::Null);
    (resp.status, value)
}

fn kill_run(setup: &Setup) {
    if let Some(pid) = setup
        .lines("pid")
        .first()
        .and_then(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn post_api_cancel_stops_the_run_and_a_second_cancel_finds_nothing() {
    let setup = Setup::new(&rules("go"));
    setup.script("run.sh", RUN);
    let server = setup.start();
    let key = send(&server);
    assert!(
        wait_until(WAIT, || !setup.lines("runs").is_empty()),
        "the run never started\n{}",
        server.log()
    );
    let (status, answer) = cancel(&server, &key);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, json!({"cancelled": 1, "stopping": 1}));
    // The process got SIGTERM (its trap ran) and the delivery is cancelled.
    assert!(
        wait_until(Duration::from_secs(5), || !setup.lines("term").is_empty()),
        "no SIGTERM reached the run\n{}",
        server.log()
    );
    assert!(
        wait_until(WAIT, || states(&server, &key) == ["cancelled"]),
        "{:#}",
        event(&server, &key)
    );
    // Nothing left to cancel is an answer, not an error; an unknown event is.
    assert_eq!(
        cancel(&server, &key),
        (200, json!({"cancelled": 0, "stopping": 0}))
    );
    assert_eq!(cancel(&server, "01J0000000000000000000NOPE").0, 404);

    // `deliveries --state cancelled` lists it; the metric counts it.
    let admin = server.admin.clone().expect("admin");
    let out = support::run(&[
        "deliveries",
        "--state",
        "cancelled",
        "--json",
        "--admin",
        &admin,
    ]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let listed: Value = serde_json::from_str(&support::stdout(&out)).expect("json");
    assert_eq!(listed["deliveries"][0]["event_key"], key, "{listed:#}");
    let metrics = get(&server.admin_url("/metrics"), &[]).body;
    assert!(
        metrics.contains(r#"hookrouter_queue_depth{state="cancelled"} 1"#),
        "{metrics}"
    );
}

#[test]
fn hookrouter_cancel_and_replay_of_a_cancelled_delivery() {
    let setup = Setup::new(&rules("go"));
    setup.script("run.sh", RUN);
    let server = setup.start();
    let key = send(&server);
    assert!(wait_until(WAIT, || !setup.lines("runs").is_empty()));
    let admin = server.admin.clone().expect("admin");
    let out = support::run(&[
        "cancel", &key, "--rule", "review", "--json", "--admin", &admin,
    ]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let answer: Value = serde_json::from_str(&support::stdout(&out)).expect("json");
    assert_eq!(answer, json!({"cancelled": 1, "stopping": 1}));
    assert!(wait_until(WAIT, || states(&server, &key) == ["cancelled"]));
    // A cancel of another rule's deliveries finds nothing here.
    let out = support::run(&["cancel", &key, "--rule", "other", "--admin", &admin]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(
        support::stdout(&out).contains("cancelled 0 deliveries"),
        "{}",
        support::stdout(&out)
    );

    // A replay is an explicit request: the cancelled delivery runs again.
    let out = support::run(&["replay", &key, "--admin", &admin]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    assert!(
        wait_until(WAIT, || setup.lines("runs").len() == 2),
        "the replay did not run\n{}",
        server.log()
    );
    kill_run(&setup);
}

#[test]
fn a_run_marked_cancelled_is_never_rerun_after_kill_9() {
    // The run ignores SIGTERM: it is still running, marked for
    // cancellation, when the server dies.
    let setup = Setup::new(&rules("stay"));
    setup.script("run.sh", RUN);
    let mut server = setup.start();
    let key = send(&server);
    assert!(wait_until(WAIT, || !setup.lines("runs").is_empty()));
    assert_eq!(
        cancel(&server, &key),
        (200, json!({"cancelled": 1, "stopping": 1}))
    );
    assert!(wait_until(Duration::from_secs(5), || !setup
        .lines("term")
        .is_empty()));
    assert_eq!(states(&server, &key), ["leased"], "still in its kill grace");
    server.kill9();
    kill_run(&setup);

    let server = setup.start();
    assert!(
        wait_until(WAIT, || states(&server, &key) == ["cancelled"]),
        "{:#}",
        event(&server, &key)
    );
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(setup.lines("runs").len(), 1, "the cancelled run ran again");
}
