//! The PostgreSQL store through the real binary: `--store postgres://…`
//! accepts, runs and deduplicates; two replicas on one database answer a
//! resend sent to the other `duplicate`, and each action runs once; a group
//! fed through both replicas runs one member at a time, in order of
//! arrival; and a newer member accepted by one replica stops the older run
//! on the other (`on_busy: cancel`).
//!
//! Needs `HOOKROUTER_TEST_PG` (see the README); without it the tests say
//! they skipped, and under `CI` they fail. Each test uses a schema of its
//! own, dropped at the end.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{BIN, Server, ServerOpts, push, unique, wait_until, write};

const SECRET: &str = "pg-secret";
const WAIT: Duration = Duration::from_secs(20);

/// The test server's URL, or `None` (after saying so) to skip.
pub(crate) fn test_pg() -> Option<String> {
    match std::env::var("HOOKROUTER_TEST_PG") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but HOOKROUTER_TEST_PG is not: the PostgreSQL tests must run under CI"
            );
            eprintln!("skipped: PostgreSQL not available (set HOOKROUTER_TEST_PG)");
            None
        }
    }
}

/// A schema of its own, made and dropped with `psql` (it comes with the
/// server's packages).
pub(crate) struct Schema {
    admin: String,
    name: String,
}

impl Schema {
    pub(crate) fn create(admin: &str) -> Schema {
        let name = unique("hr_it").replace('-', "_").to_lowercase();
        psql(admin, &format!("CREATE SCHEMA {name}"));
        Schema {
            admin: admin.to_owned(),
            name,
        }
    }

    pub(crate) fn url(&self) -> String {
        let sep = if self.admin.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-csearch_path%3D{}", self.admin, self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        psql(
            &self.admin,
            &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
        );
    }
}

pub(crate) fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-XAtqc", sql])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql {sql}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rules(dir: &Path) -> std::path::PathBuf {
    write(
        dir,
        "rules.yaml",
        &format!(
            r#"sources:
  - name: gh
    provider: github
    secret: {SECRET}
rules:
  - name: record
    source: gh
    event: push
    actions:
      - shell: ["sh", "-c", "echo \"$1\" >> \"$2\"", "sh", "{{{{ event.id }}}}", "{runs}"]
"#,
            runs = dir.join("runs").display()
        ),
    )
}

fn runs(dir: &Path, id: &str) -> usize {
    std::fs::read_to_string(dir.join("runs"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == id)
        .count()
}

fn replica(rules: &Path, dir: &Path, url: &str, name: &str) -> Server {
    let own = dir.join(name);
    std::fs::create_dir_all(&own).expect("replica dir");
    ServerOpts::new(rules, &own.join("unused.redb"))
        .args(&["--store", url, "--lease-ttl", "2s"])
        .start()
}

fn status(resp: &crate::support::Resp) -> (u16, String) {
    (
        resp.status,
        resp.json()["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[test]
fn accepts_runs_and_answers_a_resend_duplicate() {
    let Some(admin) = test_pg() else {
        return;
    };
    let schema = Schema::create(&admin);
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules(dir.path());
    let server = replica(&rules, dir.path(), &schema.url(), "a");
    let id = unique("pg-one");
    let first = push(&server, "gh", SECRET, "refs/heads/main", &id);
    assert_eq!(status(&first), (202, "accepted".to_owned()), "{first:?}");
    assert!(
        wait_until(WAIT, || runs(dir.path(), &id) == 1),
        "the shell action never ran; log:\n{}",
        server.log()
    );
    let again = push(&server, "gh", SECRET, "refs/heads/main", &id);
    assert_eq!(status(&again), (200, "duplicate".to_owned()), "{again:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(runs(dir.path(), &id), 1);
    let stored = psql(
        &schema.url(),
        "SELECT count(*) FROM hookrouter_deliveries WHERE state = 'done'",
    );
    assert_eq!(stored.trim(), "1");
}

#[test]
fn two_replicas_answer_a_resend_to_the_other_duplicate_and_run_once() {
    let Some(admin) = test_pg() else {
        return;
    };
    let schema = Schema::create(&admin);
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules(dir.path());
    let a = replica(&rules, dir.path(), &schema.url(), "a");
    let b = replica(&rules, dir.path(), &schema.url(), "b");
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = unique(&format!("pg-two-{i}"));
        // Alternate which replica sees the event first; the resend goes to
        // the other one.
        let (first, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let r = push(first, "gh", SECRET, "refs/heads/main", &id);
        assert_eq!(status(&r), (202, "accepted".to_owned()), "{r:?}");
        let r = push(other, "gh", SECRET, "refs/heads/main", &id);
        assert_eq!(status(&r), (200, "duplicate".to_owned()), "{r:?}");
        ids.push(id);
    }
    assert!(
        wait_until(WAIT, || ids.iter().all(|id| runs(dir.path(), id) >= 1)),
        "not every action ran; a:\n{}\nb:\n{}",
        a.log(),
        b.log()
    );
    // Longer than a lease: a second run would have had time to happen.
    std::thread::sleep(Duration::from_secs(3));
    for id in &ids {
        assert_eq!(runs(dir.path(), id), 1, "{id} ran more than once");
    }
}

#[test]
fn migrate_creates_the_schema_once() {
    let Some(admin) = test_pg() else {
        return;
    };
    let schema = Schema::create(&admin);
    let run = || {
        let out = Command::new(BIN)
            .args(["migrate", "--store", &schema.url()])
            .output()
            .expect("run migrate");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run();
    assert!(first.contains("applied 1"), "{first}");
    assert!(
        !first.contains("pg-secret") && !first.contains("postgres@"),
        "{first}"
    );
    let second = run();
    assert!(second.contains("nothing to apply"), "{second}");
    let tables = psql(
        &schema.url(),
        &format!(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = '{}' AND table_name LIKE 'hookrouter\\_%'",
            schema.name
        ),
    );
    assert_eq!(
        tables.trim(),
        "9",
        "dedup, rule dedup, events, deliveries, attempts, schema, bursts, limit hits, limit next"
    );
}

/// A run named `$1` lasting `$2` seconds. It appends `start NAME MS`, then
/// `end NAME MS` (or `term NAME MS` and `end NAME MS` on SIGTERM, exiting at
/// once) to `log` beside it, and its pid to `pid-NAME`.
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

/// Rules running `run.sh EVENT_ID SECS` (SECS: the pushed ref's last part)
/// in one group with `group`'s other fields, and the script.
fn grouped_rules(dir: &Path, group: &str) -> std::path::PathBuf {
    let script = write(dir, "run.sh", RUN);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    write(
        dir,
        "rules.yaml",
        &format!(
            r#"sources:
  - name: gh
    provider: github
    secret: {SECRET}
rules:
  - name: agent
    source: gh
    event: push
    actions:
      - shell: ["{script}", "{{{{ event.id }}}}", "{{{{ body.ref | replace('refs/heads/', '') }}}}"]
        group: {{ key: "pr-1", {group} }}
"#,
            script = script.display()
        ),
    )
}

/// `(what, name, ms)` of each line of `log`, in order.
fn marks(dir: &Path) -> Vec<(String, String, u64)> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((
                f.next()?.to_owned(),
                f.next()?.to_owned(),
                f.next()?.parse().ok()?,
            ))
        })
        .collect()
}

fn mark(dir: &Path, what: &str, name: &str) -> Option<u64> {
    marks(dir)
        .into_iter()
        .find(|(w, n, _)| w == what && n == name)
        .map(|(_, _, ms)| ms)
}

/// SIGKILL the process group of run `name`, so no test leaves it behind.
fn kill_run(dir: &Path, name: &str) {
    if let Ok(pid) = std::fs::read_to_string(dir.join(format!("pid-{name}")))
        .unwrap_or_default()
        .trim()
        .parse::<i32>()
    {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn a_group_fed_through_two_replicas_runs_one_at_a_time_in_arrival_order() {
    let Some(admin) = test_pg() else {
        return;
    };
    let schema = Schema::create(&admin);
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = grouped_rules(dir.path(), "limit: 1, on_busy: queue");
    let a = replica(&rules, dir.path(), &schema.url(), "a");
    let b = replica(&rules, dir.path(), &schema.url(), "b");
    let mut sent = Vec::new();
    for i in 0..6 {
        let id = unique(&format!("pg-queue-{i}"));
        let to = if i % 2 == 0 { &a } else { &b };
        let r = push(to, "gh", SECRET, "refs/heads/1", &id);
        assert_eq!(status(&r), (202, "accepted".to_owned()), "{r:?}");
        sent.push(id);
    }
    let ended = |dir: &Path| marks(dir).iter().filter(|m| m.0 == "end").count();
    assert!(
        wait_until(Duration::from_secs(60), || ended(dir.path()) == sent.len()),
        "not every run ended: {:?}\na:\n{}\nb:\n{}",
        marks(dir.path()),
        a.log(),
        b.log()
    );
    // Longer than a lease (2 s): a second run would have had time to start.
    std::thread::sleep(Duration::from_secs(3));
    let all = marks(dir.path());
    let mut runs = Vec::new();
    for id in &sent {
        let starts = all.iter().filter(|m| m.0 == "start" && &m.1 == id).count();
        assert_eq!(starts, 1, "{id} started {starts} times: {all:?}");
        let start = mark(dir.path(), "start", id).expect("start");
        let end = mark(dir.path(), "end", id).expect("end");
        runs.push((start, end, id.clone()));
    }
    runs.sort();
    let order: Vec<&String> = runs.iter().map(|r| &r.2).collect();
    assert_eq!(
        order,
        sent.iter().collect::<Vec<_>>(),
        "runs out of arrival order"
    );
    for pair in runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "{} started at {} before {} ended at {}: {all:?}",
            pair[1].2,
            pair[1].0,
            pair[0].2,
            pair[0].1
        );
    }
}

#[test]
fn a_newer_member_accepted_by_one_replica_stops_the_older_run_on_the_other() {
    let Some(admin) = test_pg() else {
        return;
    };
    let schema = Schema::create(&admin);
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = grouped_rules(dir.path(), "on_busy: cancel, kill_grace: 1s");
    // Only A runs while the older event arrives, so the older run is A's.
    let a = replica(&rules, dir.path(), &schema.url(), "a");
    let old = unique("pg-old");
    let r = push(&a, "gh", SECRET, "refs/heads/60", &old);
    assert_eq!(status(&r), (202, "accepted".to_owned()), "{r:?}");
    assert!(
        wait_until(WAIT, || mark(dir.path(), "start", &old).is_some()),
        "the older run never started; a:\n{}",
        a.log()
    );
    let b = replica(&rules, dir.path(), &schema.url(), "b");
    let new = unique("pg-new");
    let r = push(&b, "gh", SECRET, "refs/heads/1", &new);
    assert_eq!(status(&r), (202, "accepted".to_owned()), "{r:?}");
    let stopped = wait_until(WAIT, || mark(dir.path(), "end", &old).is_some());
    if !stopped {
        kill_run(dir.path(), &old);
    }
    assert!(
        stopped && mark(dir.path(), "term", &old).is_some(),
        "the older run on A was never stopped: {:?}\na:\n{}\nb:\n{}",
        marks(dir.path()),
        a.log(),
        b.log()
    );
    assert!(
        a.log().contains("Stopping a cancelled run."),
        "a:\n{}",
        a.log()
    );
    assert!(
        wait_until(WAIT, || mark(dir.path(), "end", &new).is_some()),
        "the newer run never ran: {:?}\na:\n{}\nb:\n{}",
        marks(dir.path()),
        a.log(),
        b.log()
    );
    let old_end = mark(dir.path(), "end", &old).expect("old end");
    let new_start = mark(dir.path(), "start", &new).expect("new start");
    assert!(new_start >= old_end, "the newer run overlapped the older");
    let states = || {
        psql(
            &schema.url(),
            "SELECT string_agg(state, ',' ORDER BY id) FROM hookrouter_deliveries",
        )
        .trim()
        .to_owned()
    };
    assert!(
        wait_until(WAIT, || states() == "cancelled,done"),
        "states: {}",
        states()
    );
}
