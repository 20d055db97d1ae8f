//! `hookrouter migrate --from redb:PATH --to postgres://…` through the real
//! binary: a redb server's queue of retries (an HTTP action whose receiver
//! answered 500, retry due seconds later) is copied into PostgreSQL, the
//! copy is refused while a server holds the file, a second run copies
//! nothing, and a server on PostgreSQL runs each pending delivery once and
//! answers a resend of a copied event `duplicate`.
//!
//! Needs `HOOKROUTER_TEST_PG`, like `postgres.rs` (whose schema-per-test
//! helpers it uses).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::postgres::{Schema, psql, test_pg};
use crate::support::{
    Answer, BIN, Receiver, ServerOpts, admin_get, push, stderr, stdout, unique, wait_until, write,
};

const SECRET: &str = "migrate-secret";
const WAIT: Duration = Duration::from_secs(30);

/// One rule, one HTTP action to `url`, retried after about 6 s: long enough
/// that no retry happens before the redb server stops, short enough that
/// the copy comes due on PostgreSQL during the test.
fn rules(dir: &Path, url: &str) -> std::path::PathBuf {
    write(
        dir,
        "rules.yaml",
        &format!(
            r#"sources:
  - name: gh
    provider: github
    secret: {SECRET}
rules:
  - name: notify
    source: gh
    event: push
    actions:
      - http:
          url: "{url}/hook"
          json: {{ id: "{{{{ event.id }}}}" }}
        retry: {{ attempts: 5, backoff: 6s, max_backoff: 6s }}
"#
        ),
    )
}

fn migrate(from: &Path, to: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["migrate", "--from"])
        .arg(format!("redb:{}", from.display()))
        .args(["--to", to])
        .env_remove("HOOKROUTER_STORE")
        .env_remove("RUST_LOG")
        .output()
        .expect("run migrate")
}

fn count(url: &str, sql: &str) -> u64 {
    psql(url, sql).trim().parse().expect("a count")
}

#[test]
fn migrate_from_redb_moves_pending_retries_that_complete_on_postgres_once() {
    let Some(admin) = test_pg() else {
        return;
    };
    let schema = Schema::create(&admin);
    let pg = schema.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("single.redb");

    // A single node on redb whose receiver fails: every delivery is left
    // pending with one attempt and a retry seconds away.
    let failing = Receiver::answering(Answer::status(500));
    let rules_path = rules(dir.path(), &failing.url(""));
    let mut single = ServerOpts::new(&rules_path, &data).admin().start();
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("mig-{i}"))).collect();
    for id in &ids {
        let r = push(&single, "gh", SECRET, "refs/heads/main", id);
        assert_eq!(r.status, 202, "{r:?}");
    }
    assert!(
        wait_until(WAIT, || {
            let listed = admin_get(&single, "/api/deliveries?state=pending", None).json();
            let d = listed["deliveries"].as_array().cloned().unwrap_or_default();
            d.len() == 3 && d.iter().all(|d| d["attempts"] == 1)
        }),
        "the first attempts were not recorded; log:\n{}",
        single.log()
    );
    assert_eq!(failing.count(), 3);
    assert!(single.terminate().is_some_and(|s| s.success()));

    // While a server holds the file, the copy is refused and copies nothing.
    let mut holder = ServerOpts::new(&rules_path, &data).start();
    let refused = migrate(&data, &pg);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(stderr(&refused).contains("in use"), "{}", stderr(&refused));
    assert_eq!(count(&pg, "SELECT count(*) FROM hookrouter_events"), 0);
    assert!(holder.terminate().is_some_and(|s| s.success()));

    let first = migrate(&data, &pg);
    assert!(first.status.success(), "{first:?}");
    let said = stdout(&first);
    assert!(
        said.contains(
            "copied 3 events (0 already there), 3 unfinished deliveries with 3 attempts, \
             3 dedup keys"
        ),
        "{said}"
    );
    assert!(!said.contains("postgres@"), "credentials printed: {said}");
    // Running it again copies nothing twice.
    let second = migrate(&data, &pg);
    assert!(second.status.success(), "{second:?}");
    let said = stdout(&second);
    assert!(
        said.contains(
            "copied 0 events (3 already there), 0 unfinished deliveries with 0 attempts, \
             0 dedup keys"
        ),
        "{said}"
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM hookrouter_deliveries WHERE state = 'pending' AND attempts = 1 \
             AND last_error IS NOT NULL"
        ),
        3
    );
    assert_eq!(count(&pg, "SELECT count(*) FROM hookrouter_attempts"), 3);
    // Their retries keep the time redb gave them: later than their attempt.
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM hookrouter_deliveries d JOIN hookrouter_attempts a \
             ON a.delivery_id = d.id WHERE d.due_at_ms > a.at_ms + 3000"
        ),
        3
    );

    // On PostgreSQL, with the service back, each retry runs there once.
    let working = Receiver::start();
    let rules_path = rules(dir.path(), &working.url(""));
    let own = dir.path().join("replica");
    std::fs::create_dir_all(&own).expect("replica dir");
    let replica = ServerOpts::new(&rules_path, &own.join("unused.redb"))
        .args(&["--store", &pg, "--lease-ttl", "2s"])
        .start();
    assert!(
        working.wait_count(3, WAIT),
        "the copied retries did not run on PostgreSQL; log:\n{}",
        replica.log()
    );
    assert!(
        wait_until(WAIT, || count(
            &pg,
            "SELECT count(*) FROM hookrouter_deliveries WHERE state = 'done' AND attempts = 2"
        ) == 3),
        "not every copied delivery finished; log:\n{}",
        replica.log()
    );
    // Longer than a lease: a second run would have had time to happen.
    std::thread::sleep(Duration::from_secs(3));
    let mut seen: Vec<String> = working
        .bodies()
        .iter()
        .map(|b| {
            serde_json::from_slice::<serde_json::Value>(b).expect("JSON body")["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want, "each copied delivery runs exactly once");

    // The copied dedup keys hold: a resend is a duplicate and runs nothing.
    let again = push(&replica, "gh", SECRET, "refs/heads/main", &ids[0]);
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.json()["status"], "duplicate", "{again:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(working.count(), 3);
}
