//! The admin listener answers only its own names and refuses state changes
//! sent by web pages of other sites: `Host` (421), `Sec-Fetch-Site` and
//! `Origin` (403), in that order and before the token (401); and it warns
//! at start when it is reachable from other machines without a token.
//!
//! Requests that set `Host` go over a raw TCP stream, since an HTTP client
//! derives `Host` from the URL. The rule's shell action appends a line per
//! run to a file, so "nothing ran again" is counted, not assumed.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::support::{self, Server, ServerOpts, as_refs, get, signed_headers, unique, wait_until};

const SECRET: &str = "admin-guard-test-secret";
const WAIT: Duration = Duration::from_secs(20);
const WARNING: &str = "Admin API on a non-loopback address without --admin-token";

/// A rules folder whose one rule appends `ran` to `dir/ran.txt` per push.
struct Setup {
    dir: TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("ran.txt");
        support::write(
            dir.path(),
            "rules/guard.yaml",
            &format!(
                r#"sources:
  - name: gh
    provider: github
    secret: {SECRET}
rules:
  - name: on-push
    source: gh
    event: push
    actions:
      - shell: ["/bin/sh", "-c", "echo ran >> '{}'"]
"#,
                out.display()
            ),
        );
        Setup { dir }
    }

    fn opts(&self) -> ServerOpts {
        ServerOpts::new(
            &self.dir.path().join("rules"),
            &self.dir.path().join("data.redb"),
        )
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("ran.txt")
    }

    /// How many times the action has run.
    fn runs(&self) -> usize {
        runs(&self.out())
    }
}

fn runs(out: &Path) -> usize {
    std::fs::read_to_string(out).map_or(0, |t| t.lines().count())
}

/// Send a signed push, wait for its action, and return the event's key.
fn push_and_run(setup: &Setup, server: &Server) -> String {
    let id = unique("guard");
    let body = serde_json::json!({ "ref": "refs/heads/main", "note": id })
        .to_string()
        .into_bytes();
    let mut headers = signed_headers("github", SECRET, &body, &id);
    headers.push(("X-GitHub-Event".into(), "push".into()));
    headers.push(("Content-Type".into(), "application/json".into()));
    let resp = server.post("/hooks/gh", &as_refs(&headers), &body);
    assert_eq!(resp.status, 202, "{resp:?}");
    assert!(
        wait_until(WAIT, || setup.runs() == 1),
        "the action did not run; log:\n{}",
        server.log()
    );
    resp.json()["key"].as_str().expect("key").to_owned()
}

/// An answer read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One request with exactly the given head; `host: None` sends no `Host`.
fn raw(
    admin: &str,
    version: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
) -> Raw {
    let mut head = format!("{method} {path} {version}\r\n");
    if let Some(h) = host {
        head.push_str(&format!("Host: {h}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(admin).expect("connect to admin");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(head.as_bytes()).expect("send");
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Raw { status, body }
}

fn send(server: &Server, method: &str, path: &str, host: &str, headers: &[(&str, &str)]) -> Raw {
    let admin = server.admin.as_deref().expect("admin");
    raw(admin, "HTTP/1.1", method, path, Some(host), headers)
}

fn admin_port(server: &Server) -> String {
    let admin = server.admin.as_deref().expect("admin");
    admin.rsplit_once(':').expect("port").1.to_owned()
}

/// The admin address to connect to: a wildcard bind is reached on loopback.
fn loopback(server: &Server) -> String {
    format!("127.0.0.1:{}", admin_port(server))
}

fn deliveries(server: &Server) -> usize {
    let resp = get(&server.admin_url("/api/deliveries?limit=1000"), &[]);
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()["deliveries"].as_array().expect("list").len()
}

#[test]
fn a_foreign_host_is_misdirected_and_nothing_is_read_or_replayed() {
    let setup = Setup::new();
    let server = setup.opts().admin().start();
    let key = push_and_run(&setup, &server);
    let before = deliveries(&server);
    let port = admin_port(&server);
    let evil = format!("evil.example:{port}");
    let rebound = format!("127.0.0.1.evil.example:{port}");

    for host in [evil.as_str(), "evil.example", rebound.as_str()] {
        let events = send(&server, "GET", "/api/events", host, &[]);
        assert_eq!(events.status, 421, "GET /api/events as {host}: {events:?}");
        assert!(
            events.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("--admin-host")),
            "{events:?}"
        );
        assert!(!events.body.contains(&key), "{events:?}");
        let one = send(&server, "GET", &format!("/api/events/{key}"), host, &[]);
        assert_eq!(one.status, 421, "{one:?}");
        assert!(!one.body.contains(&key), "{one:?}");
        for path in ["/healthz", "/readyz", "/metrics", "/api/status"] {
            let resp = send(&server, "GET", path, host, &[]);
            assert_eq!(resp.status, 421, "GET {path} as {host}: {resp:?}");
        }
        // The issue's reproduction: a form auto-submitted by a page.
        let origin = format!("http://{host}");
        let replay = send(
            &server,
            "POST",
            &format!("/api/replay/{key}"),
            host,
            &[
                ("Origin", origin.as_str()),
                ("Sec-Fetch-Site", "cross-site"),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
        );
        assert_eq!(replay.status, 421, "replay as {host}: {replay:?}");
        // Without any browser marks: the Host alone refuses it.
        let replay = send(&server, "POST", &format!("/api/replay/{key}"), host, &[]);
        assert_eq!(replay.status, 421, "{replay:?}");
    }

    let admin = server.admin.clone().expect("admin");
    let missing = raw(
        &admin,
        "HTTP/1.1",
        "POST",
        &format!("/api/replay/{key}"),
        None,
        &[],
    );
    assert_eq!(missing.status, 421, "no Host on HTTP/1.1: {missing:?}");
    let missing = raw(&admin, "HTTP/1.1", "GET", "/api/events", None, &[]);
    assert_eq!(missing.status, 421, "{missing:?}");
    let absolute = raw(
        &admin,
        "HTTP/1.1",
        "GET",
        &format!("http://{evil}/api/events"),
        Some(&format!("127.0.0.1:{port}")),
        &[],
    );
    assert_eq!(absolute.status, 421, "absolute-form target: {absolute:?}");

    assert_eq!(
        deliveries(&server),
        before,
        "a refused replay made deliveries"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(setup.runs(), 1, "a refused replay ran the action");
}

#[test]
fn own_names_and_admin_host_names_are_answered() {
    let setup = Setup::new();
    let server = setup
        .opts()
        .admin()
        .arg("--admin-host")
        .arg("admin.internal")
        .arg("--admin-host")
        .arg("lb.internal:8443")
        .env(
            "HOOKROUTER_ADMIN_HOST",
            "ignored-when-flags-are-given.example",
        )
        .start();
    let key = push_and_run(&setup, &server);
    let port = admin_port(&server);
    let hosts = [
        "localhost".to_owned(),
        format!("localhost:{port}"),
        "127.0.0.1".to_owned(),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "[::1]".to_owned(),
        "admin.internal".to_owned(),
        format!("Admin.Internal:{port}"),
        "lb.internal:8443".to_owned(),
    ];
    for host in &hosts {
        let resp = send(&server, "GET", "/api/events", host, &[]);
        assert_eq!(resp.status, 200, "as {host}: {resp:?}");
        assert!(resp.body.contains(&key), "{resp:?}");
        let health = send(&server, "GET", "/healthz", host, &[]);
        assert_eq!(health.status, 200, "/healthz as {host}: {health:?}");
    }
    // A name given with a port matches that port only.
    let other_port = send(&server, "GET", "/healthz", "lb.internal:9999", &[]);
    assert_eq!(other_port.status, 421, "{other_port:?}");
    let flag_wins = send(
        &server,
        "GET",
        "/healthz",
        "ignored-when-flags-are-given.example",
        &[],
    );
    assert_eq!(flag_wins.status, 421, "{flag_wins:?}");
    // Old health checkers speak HTTP/1.0 without Host; no browser does.
    let admin = server.admin.clone().expect("admin");
    let old = raw(&admin, "HTTP/1.0", "GET", "/healthz", None, &[]);
    assert_eq!(old.status, 200, "{old:?}");

    let replay = send(
        &server,
        "POST",
        &format!("/api/replay/{key}"),
        "admin.internal",
        &[],
    );
    assert_eq!(replay.status, 202, "replay as admin.internal: {replay:?}");
    assert!(wait_until(WAIT, || setup.runs() == 2), "replay did not run");
}

#[test]
fn admin_host_is_read_from_the_environment() {
    let setup = Setup::new();
    let server = setup
        .opts()
        .admin()
        .env("HOOKROUTER_ADMIN_HOST", "one.internal,two.internal")
        .start();
    for host in ["one.internal", "two.internal:1234"] {
        let resp = send(&server, "GET", "/readyz", host, &[]);
        assert_eq!(resp.status, 200, "as {host}: {resp:?}");
    }
    let resp = send(&server, "GET", "/readyz", "three.internal", &[]);
    assert_eq!(resp.status, 421, "{resp:?}");
}

#[test]
fn an_invalid_admin_host_is_a_usage_error() {
    let out = support::run(&[
        "serve",
        "--rules",
        "rules/",
        "--admin-host",
        "http://admin.example/",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = support::stderr(&out);
    assert!(
        err.contains("--admin-host") && err.contains("is not a host name"),
        "{err}"
    );
}

#[test]
fn a_cross_site_replay_is_refused_and_runs_nothing() {
    let setup = Setup::new();
    let server = setup.opts().admin().start();
    let key = push_and_run(&setup, &server);
    let before = deliveries(&server);
    let port = admin_port(&server);
    let host = format!("127.0.0.1:{port}");
    let path = format!("/api/replay/{key}");
    let evil_origin = format!("http://evil.example:{port}");
    let other_port = format!("http://127.0.0.1:{}", port.parse::<u32>().unwrap() + 1);

    for headers in [
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site")],
        vec![("Origin", evil_origin.as_str())],
        vec![("Origin", other_port.as_str())],
        vec![("Origin", "null")],
        vec![
            ("Sec-Fetch-Site", "cross-site"),
            ("Origin", evil_origin.as_str()),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
    ] {
        let resp = send(&server, "POST", &path, &host, &headers);
        assert_eq!(resp.status, 403, "{headers:?}: {resp:?}");
        assert!(
            resp.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("cross-site")),
            "{resp:?}"
        );
    }
    assert_eq!(
        deliveries(&server),
        before,
        "a refused replay made deliveries"
    );

    // Reads from another site are not state changes: the Host check is
    // what keeps them out, and this Host is the listener's own.
    let read = send(
        &server,
        "GET",
        "/api/events",
        &host,
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Origin", evil_origin.as_str()),
        ],
    );
    assert_eq!(read.status, 200, "{read:?}");

    // The listener's own pages may post.
    let own = format!("http://{host}");
    let same = send(
        &server,
        "POST",
        &path,
        &host,
        &[("Sec-Fetch-Site", "same-origin"), ("Origin", own.as_str())],
    );
    assert_eq!(same.status, 202, "same-origin replay: {same:?}");
    assert!(wait_until(WAIT, || setup.runs() == 2), "replay did not run");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(setup.runs(), 2, "a refused replay ran the action");
    assert_eq!(deliveries(&server), before + 1);
}

#[test]
fn curl_like_requests_and_the_replay_command_still_work() {
    let setup = Setup::new();
    let server = setup.opts().admin().start();
    let key = push_and_run(&setup, &server);
    let host = format!("localhost:{}", admin_port(&server));
    let resp = send(
        &server,
        "POST",
        &format!("/api/replay/{key}"),
        &host,
        &[("User-Agent", "curl/8.5.0"), ("Accept", "*/*")],
    );
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(resp.json()["status"], "replayed");
    assert!(wait_until(WAIT, || setup.runs() == 2), "replay did not run");

    let admin = server.admin.clone().expect("admin");
    for target in [admin.clone(), format!("http://{admin}")] {
        let out = support::run(&["replay", &key, "--admin", &target]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "replay --admin {target}: {out:?}"
        );
        assert!(support::stdout(&out).contains("replayed event"), "{out:?}");
    }
    assert!(
        wait_until(WAIT, || setup.runs() == 4),
        "CLI replays did not run"
    );
    let out = support::run(&["events", "--admin", &admin, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(support::stdout(&out).contains(&key), "{out:?}");
}

#[test]
fn host_and_site_are_checked_before_the_token() {
    const TOKEN: &str = "admin-guard-token-77d2";
    let setup = Setup::new();
    let server = setup.opts().admin().arg("--admin-token").arg(TOKEN).start();
    let key = push_and_run(&setup, &server);
    let port = admin_port(&server);
    let path = format!("/api/replay/{key}");
    let own = format!("127.0.0.1:{port}");
    let bearer = format!("Bearer {TOKEN}");
    let auth = ("Authorization", bearer.as_str());

    let foreign = send(&server, "POST", &path, "evil.example", &[auth]);
    assert_eq!(foreign.status, 421, "{foreign:?}");
    let foreign = send(&server, "GET", "/healthz", "evil.example", &[]);
    assert_eq!(foreign.status, 421, "{foreign:?}");
    let cross = send(
        &server,
        "POST",
        &path,
        &own,
        &[("Sec-Fetch-Site", "cross-site"), auth],
    );
    assert_eq!(cross.status, 403, "{cross:?}");
    let cross = send(
        &server,
        "POST",
        &path,
        &own,
        &[("Sec-Fetch-Site", "cross-site")],
    );
    assert_eq!(cross.status, 403, "{cross:?}");
    let no_token = send(&server, "POST", &path, &own, &[]);
    assert_eq!(no_token.status, 401, "{no_token:?}");
    let ok = send(&server, "POST", &path, &own, &[auth]);
    assert_eq!(ok.status, 202, "{ok:?}");
    assert!(wait_until(WAIT, || setup.runs() == 2), "replay did not run");
}

/// Start on `--admin ADDR` plus `extra` flags and return the server.
fn start_admin_on(setup: &Setup, addr: &str, extra: &[&str]) -> Server {
    let mut opts = setup.opts().arg("--admin").arg(addr);
    for a in extra {
        opts = opts.arg(a);
    }
    opts.start()
}

#[test]
fn a_non_loopback_admin_listener_without_a_token_warns() {
    let setup = Setup::new();
    let server = start_admin_on(&setup, "0.0.0.0:0", &[]);
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains(WARNING))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("anyone who can reach it can read stored events and replay them"),
        "{line}"
    );
    let port = admin_port(&server);
    assert!(
        line.contains(&format!("admin_addr=0.0.0.0:{port}")),
        "{line}"
    );
    // Still served, by loopback and by its bound address.
    let admin = loopback(&server);
    for host in [format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
        let resp = raw(&admin, "HTTP/1.1", "GET", "/healthz", Some(&host), &[]);
        assert_eq!(resp.status, 200, "as {host}: {resp:?}");
    }
    let resp = raw(
        &admin,
        "HTTP/1.1",
        "GET",
        "/healthz",
        Some("evil.example"),
        &[],
    );
    assert_eq!(resp.status, 421, "{resp:?}");

    // An empty token is no token.
    drop(server);
    let server = start_admin_on(&setup, "0.0.0.0:0", &["--admin-token", ""]);
    assert!(server.log().contains(WARNING), "{}", server.log());
}

#[test]
fn a_token_or_a_loopback_address_does_not_warn() {
    let setup = Setup::new();
    for (addr, extra) in [
        (
            "0.0.0.0:0",
            &["--admin-token", "admin-guard-token-1b9e"][..],
        ),
        ("127.0.0.1:0", &[][..]),
        ("localhost:0", &[][..]),
    ] {
        let server = start_admin_on(&setup, addr, extra);
        let log = server.log();
        assert!(log.contains("Admin API listening."), "{addr}: {log}");
        assert!(!log.contains(WARNING), "{addr} {extra:?} warned:\n{log}");
        assert!(
            !log.contains("admin-guard-token-1b9e"),
            "the token was logged"
        );
    }
}

#[test]
fn help_documents_admin_host() {
    let out = support::run(&["serve", "--help"]);
    let help = support::stdout(&out);
    assert!(help.contains("--admin-host <NAME>"), "{help}");
    assert!(help.contains("HOOKROUTER_ADMIN_HOST"), "{help}");
}
