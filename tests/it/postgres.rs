//! The PostgreSQL store through the real binary: `--store postgres://…`
//! accepts, runs and deduplicates; two replicas on one database answer a
//! resend sent to the other `duplicate`, and each action runs once.
//!
//! Needs `HOOKROUTER_TEST_PG` (see the README); without it the tests say
//! they skipped, and under `CI` they fail. Each test uses a schema of its
//! own, dropped at the end.

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
        "6",
        "dedup, rule dedup, events, deliveries, attempts, schema"
    );
}
