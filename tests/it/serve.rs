//! `hookrouter serve` end to end: signed requests over real HTTP to the real
//! binary, checked by status code, answer body and the log lines the actions
//! print.
//!
//! The rules in `tests/fixtures/serve/rules.yaml` log `<source>-fired[<id>]`
//! for every event they run, so the log tells exactly which events ran and
//! how often.
//!
//! Deduplication (repeats answered `duplicate`) is in `dedup.rs`, which
//! shares this file's fixture and helpers.

use crate::support::{now, unique};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use hookrouter::providers::{Algorithm, Encoding, HmacOptions, ProviderSettings, Secret};
use tempfile::TempDir;

use crate::support::{
    Headers, Resp, Server, ServerOpts, as_refs, fixture, push_body, push_headers as gh_headers,
    request, signed_headers, start_fresh,
};

const WAIT: Duration = Duration::from_secs(20);

pub(crate) const GH_SECRET: &str = "gh-test-secret";
pub(crate) const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MAC_SECRET: &str = "mac-test-secret";
const MACTS_SECRET: &str = "macts-test-secret";
/// A valid Standard Webhooks key that is not the configured one.
const OTHER_WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

pub(crate) fn rules() -> PathBuf {
    fixture("serve/rules.yaml")
}

/// A server on the serve fixture with its own data file.
fn start_with(opts: impl FnOnce(ServerOpts) -> ServerOpts) -> (TempDir, Server) {
    start_fresh(|_| rules(), opts)
}

pub(crate) fn start() -> (TempDir, Server) {
    start_with(|o| o)
}

fn with(mut headers: Headers, extra: &[(&str, &str)]) -> Headers {
    headers.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    headers
}

fn without(headers: Headers, name: &str) -> Headers {
    let before = headers.len();
    let kept: Headers = headers
        .into_iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .collect();
    assert_eq!(kept.len() + 1, before, "exactly one {name} header to drop");
    kept
}

// ---- bodies and signatures, per provider ----

pub(crate) fn order_body(note: &str) -> Vec<u8> {
    serde_json::json!({ "type": "order.created", "data": { "id": "ord_1", "note": note } })
        .to_string()
        .into_bytes()
}

fn std_headers_at(secret: &str, body: &[u8], id: &str, at: i64) -> Headers {
    let settings = ProviderSettings {
        secrets: vec![Secret::new(secret)],
        ..Default::default()
    };
    let signed =
        hookrouter::providers::sign("standard", &settings, body, id, at, "http://localhost/")
            .expect("sign standard");
    with(signed, &[("Content-Type", "application/json")])
}

pub(crate) fn std_headers(secret: &str, body: &[u8], id: &str) -> Headers {
    std_headers_at(secret, body, id, now())
}

fn thing_body(note: &str) -> Vec<u8> {
    serde_json::json!({ "type": "thing.happened", "note": note })
        .to_string()
        .into_bytes()
}

/// Headers of the generic `hmac` provider as configured in the fixture; the
/// event id travels in `X-Request-Id`.
fn mac_headers_at(secret: &str, timestamped: bool, body: &[u8], id: &str, at: i64) -> Headers {
    let settings = ProviderSettings {
        secrets: vec![Secret::new(secret)],
        hmac: Some(HmacOptions {
            header: "X-Signature".to_owned(),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: "sha256=".to_owned(),
            timestamp_header: timestamped.then(|| "X-Timestamp".to_owned()),
        }),
        ..Default::default()
    };
    let signed = hookrouter::providers::sign("hmac", &settings, body, id, at, "http://localhost/")
        .expect("sign hmac");
    with(
        signed,
        &[("X-Request-Id", id), ("Content-Type", "application/json")],
    )
}

fn mac_headers(secret: &str, body: &[u8], id: &str) -> Headers {
    mac_headers_at(secret, false, body, id, now())
}

fn macts_headers(secret: &str, body: &[u8], id: &str) -> Headers {
    mac_headers_at(secret, true, body, id, now())
}

// ---- assertions ----

pub(crate) fn post(server: &Server, path: &str, headers: &Headers, body: &[u8]) -> Resp {
    server.post(path, &as_refs(headers), body)
}

pub(crate) fn fired(prefix: &str, id: &str) -> String {
    format!("{prefix}-fired[{id}]")
}

pub(crate) fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[track_caller]
fn assert_status(resp: &Resp, status: u16, what: &str) {
    assert_eq!(resp.status, status, "{what}: {resp:?}");
}

#[track_caller]
pub(crate) fn assert_accepted(resp: &Resp, id: &str) {
    assert_eq!(resp.status, 202, "expected 202 for {id}: {resp:?}");
    let json = resp.json();
    assert_eq!(json["status"], "accepted", "{resp:?}");
    assert_eq!(json["id"], id, "{resp:?}");
}

#[track_caller]
pub(crate) fn assert_duplicate(resp: &Resp, id: &str) {
    assert_eq!(
        resp.status, 200,
        "expected 200 duplicate for {id}: {resp:?}"
    );
    assert_eq!(resp.json()["status"], "duplicate", "{resp:?}");
}

/// Wait for `prefix-fired[id]` to appear; it must appear exactly once.
#[track_caller]
pub(crate) fn assert_fired_once(server: &Server, prefix: &str, id: &str) {
    let needle = fired(prefix, id);
    assert!(
        server.wait_log(&needle, 1, WAIT),
        "{needle} never logged; log:\n{}",
        server.log()
    );
    assert_eq!(
        count(&server.log(), &needle),
        1,
        "{needle} logged more than once; log:\n{}",
        server.log()
    );
}

/// A rejected request must have left nothing behind: the same id, sent
/// correctly now, is new (202, not a duplicate) and its action runs exactly
/// once, so the rejected one never ran.
#[track_caller]
fn assert_nothing_kept(
    server: &Server,
    path: &str,
    prefix: &str,
    good: (&Headers, &[u8]),
    id: &str,
) {
    let resp = post(server, path, good.0, good.1);
    assert_accepted(&resp, id);
    assert_fired_once(server, prefix, id);
}

// ---- accepted requests ----

#[test]
fn github_signed_request_is_accepted_and_runs() {
    let (_dir, server) = start();
    let id = unique("gh-ok");
    let body = push_body("refs/heads/main", "hello");
    let resp = post(
        &server,
        "/hooks/gh",
        &gh_headers(GH_SECRET, &body, &id),
        &body,
    );
    assert_accepted(&resp, &id);
    assert_eq!(resp.json()["deliveries"], 1, "{resp:?}");
    assert!(
        resp.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type")
                && v.starts_with("application/json")),
        "{resp:?}"
    );
    assert_fired_once(&server, "gh", &id);
}

#[test]
fn standard_webhooks_signed_request_is_accepted_and_runs() {
    let (_dir, server) = start();
    let id = unique("msg_std-ok");
    let body = order_body("hello");
    let resp = post(
        &server,
        "/hooks/std",
        &std_headers(STD_SECRET, &body, &id),
        &body,
    );
    assert_accepted(&resp, &id);
    assert_fired_once(&server, "std", &id);
}

#[test]
fn generic_hmac_signed_requests_are_accepted_and_run() {
    let (_dir, server) = start();
    let id = unique("mac-ok");
    let body = thing_body("plain");
    let resp = post(
        &server,
        "/hooks/mac",
        &mac_headers(MAC_SECRET, &body, &id),
        &body,
    );
    assert_accepted(&resp, &id);
    assert_fired_once(&server, "mac", &id);

    let id = unique("macts-ok");
    let body = thing_body("timestamped");
    let resp = post(
        &server,
        "/hooks/macts",
        &macts_headers(MACTS_SECRET, &body, &id),
        &body,
    );
    assert_accepted(&resp, &id);
    assert_fired_once(&server, "macts", &id);
}

#[test]
fn event_matching_no_rule_is_still_accepted() {
    let (_dir, server) = start();
    // A push to another branch fails the rule's condition.
    let id = unique("gh-nomatch");
    let body = push_body("refs/heads/dev", "no rule");
    let resp = post(
        &server,
        "/hooks/gh",
        &gh_headers(GH_SECRET, &body, &id),
        &body,
    );
    assert_accepted(&resp, &id);
    assert_eq!(resp.json()["deliveries"], 0, "{resp:?}");
    // An event type no rule listens to.
    let other = unique("msg_std-nomatch");
    let body = serde_json::json!({ "type": "user.deleted", "data": {} })
        .to_string()
        .into_bytes();
    let resp = post(
        &server,
        "/hooks/std",
        &std_headers(STD_SECRET, &body, &other),
        &body,
    );
    assert_accepted(&resp, &other);
    assert_eq!(resp.json()["deliveries"], 0, "{resp:?}");
    // Stored all the same: sending either again is a duplicate.
    let body = push_body("refs/heads/dev", "no rule");
    let resp = post(
        &server,
        "/hooks/gh",
        &gh_headers(GH_SECRET, &body, &id),
        &body,
    );
    assert_duplicate(&resp, &id);
    // Nothing ran for them, while a matching event still runs.
    let marker = unique("gh-marker");
    let body = push_body("refs/heads/main", "marker");
    let resp = post(
        &server,
        "/hooks/gh",
        &gh_headers(GH_SECRET, &body, &marker),
        &body,
    );
    assert_accepted(&resp, &marker);
    assert_fired_once(&server, "gh", &marker);
    let log = server.log();
    assert_eq!(count(&log, &fired("gh", &id)), 0, "{log}");
    assert_eq!(count(&log, &fired("std", &other)), 0, "{log}");
}

#[test]
fn a_rule_when_is_one_more_condition() {
    let rules = format!(
        r#"
sources:
  - name: gh
    provider: github
    secret: {GH_SECRET}
rules:
  - name: go
    source: gh
    when: "{{{{ body.note is startingwith('go') }}}}"
    actions: [{{ log: "go-fired[{{{{ event.id }}}}]" }}]
  - name: broken
    source: gh
    when: "{{{{ body.missing.deeper }}}}"
    actions: [{{ log: "broken-fired[{{{{ event.id }}}}]" }}]
  - name: always
    source: gh
    actions: [{{ log: "always-fired[{{{{ event.id }}}}]" }}]
"#
    );
    let (_dir, server) = start_fresh(
        |dir| crate::support::write(dir, "rules.yaml", &rules),
        |o| o,
    );
    let send = |note: &str| {
        let id = unique("gh-when");
        let body = push_body("refs/heads/main", note);
        let resp = post(
            &server,
            "/hooks/gh",
            &gh_headers(GH_SECRET, &body, &id),
            &body,
        );
        assert_accepted(&resp, &id);
        (id, resp.json()["deliveries"].clone())
    };
    // `when` renders `True` (any case counts): the rule matches.
    let (yes, deliveries) = send("go now");
    assert_eq!(deliveries, 2);
    assert_fired_once(&server, "go", &yes);
    // It renders `False`, or cannot render at all: no match, nothing runs.
    let (no, deliveries) = send("stop");
    assert_eq!(deliveries, 1);
    assert_fired_once(&server, "always", &no);
    let log = server.log();
    assert_eq!(count(&log, &fired("go", &no)), 0, "{log}");
    assert_eq!(count(&log, "broken-fired["), 0, "{log}");
}

// ---- bad signatures: 401, nothing stored, nothing run ----

#[test]
fn tampered_body_is_401_and_nothing_is_kept() {
    let (_dir, server) = start();

    let id = unique("gh-tamper");
    let body = push_body("refs/heads/main", "original");
    let headers = gh_headers(GH_SECRET, &body, &id);
    let tampered = push_body("refs/heads/main", "tampered");
    assert_status(
        &post(&server, "/hooks/gh", &headers, &tampered),
        401,
        "github tampered",
    );
    assert_nothing_kept(&server, "/hooks/gh", "gh", (&headers, &body), &id);

    let id = unique("msg_std-tamper");
    let body = order_body("original");
    let headers = std_headers(STD_SECRET, &body, &id);
    let tampered = order_body("tampered");
    assert_status(
        &post(&server, "/hooks/std", &headers, &tampered),
        401,
        "standard tampered",
    );
    assert_nothing_kept(&server, "/hooks/std", "std", (&headers, &body), &id);

    let id = unique("mac-tamper");
    let body = thing_body("original");
    let headers = mac_headers(MAC_SECRET, &body, &id);
    let tampered = thing_body("tampered");
    assert_status(
        &post(&server, "/hooks/mac", &headers, &tampered),
        401,
        "hmac tampered",
    );
    assert_nothing_kept(&server, "/hooks/mac", "mac", (&headers, &body), &id);

    // The timestamp is part of what is signed.
    let id = unique("macts-tamper");
    let body = thing_body("original");
    let headers = macts_headers(MACTS_SECRET, &body, &id);
    let moved: Headers = headers
        .iter()
        .map(|(k, v)| {
            let v = if k.eq_ignore_ascii_case("x-timestamp") {
                (v.parse::<i64>().expect("timestamp") - 1).to_string()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    assert_status(
        &post(&server, "/hooks/macts", &moved, &body),
        401,
        "hmac timestamp changed",
    );
    assert_nothing_kept(&server, "/hooks/macts", "macts", (&headers, &body), &id);
}

#[test]
fn wrong_secret_is_401_and_nothing_is_kept() {
    let (_dir, server) = start();

    let id = unique("gh-secret");
    let body = push_body("refs/heads/main", "x");
    let bad = gh_headers("not-the-secret", &body, &id);
    assert_status(
        &post(&server, "/hooks/gh", &bad, &body),
        401,
        "github wrong secret",
    );
    assert_nothing_kept(
        &server,
        "/hooks/gh",
        "gh",
        (&gh_headers(GH_SECRET, &body, &id), &body),
        &id,
    );

    let id = unique("msg_std-secret");
    let body = order_body("x");
    let bad = std_headers(OTHER_WHSEC, &body, &id);
    assert_status(
        &post(&server, "/hooks/std", &bad, &body),
        401,
        "standard wrong secret",
    );
    assert_nothing_kept(
        &server,
        "/hooks/std",
        "std",
        (&std_headers(STD_SECRET, &body, &id), &body),
        &id,
    );

    let id = unique("mac-secret");
    let body = thing_body("x");
    let bad = mac_headers("not-the-secret", &body, &id);
    assert_status(
        &post(&server, "/hooks/mac", &bad, &body),
        401,
        "hmac wrong secret",
    );
    assert_nothing_kept(
        &server,
        "/hooks/mac",
        "mac",
        (&mac_headers(MAC_SECRET, &body, &id), &body),
        &id,
    );

    // Each source has its own secret: another source's does not verify.
    let id = unique("macts-secret");
    let body = thing_body("x");
    let bad = macts_headers(MAC_SECRET, &body, &id);
    assert_status(
        &post(&server, "/hooks/macts", &bad, &body),
        401,
        "hmac-ts wrong secret",
    );
    assert_nothing_kept(
        &server,
        "/hooks/macts",
        "macts",
        (&macts_headers(MACTS_SECRET, &body, &id), &body),
        &id,
    );
}

#[test]
fn timestamp_outside_the_window_is_401_and_nothing_is_kept() {
    let (_dir, server) = start();

    for (what, skew) in [("expired", -3600), ("future", 3600)] {
        let id = unique(&format!("msg_std-{what}"));
        let body = order_body(what);
        let bad = std_headers_at(STD_SECRET, &body, &id, now() + skew);
        assert_status(
            &post(&server, "/hooks/std", &bad, &body),
            401,
            &format!("standard {what}"),
        );
        assert_nothing_kept(
            &server,
            "/hooks/std",
            "std",
            (&std_headers(STD_SECRET, &body, &id), &body),
            &id,
        );

        let id = unique(&format!("macts-{what}"));
        let body = thing_body(what);
        let bad = mac_headers_at(MACTS_SECRET, true, &body, &id, now() + skew);
        assert_status(
            &post(&server, "/hooks/macts", &bad, &body),
            401,
            &format!("hmac {what}"),
        );
        assert_nothing_kept(
            &server,
            "/hooks/macts",
            "macts",
            (&macts_headers(MACTS_SECRET, &body, &id), &body),
            &id,
        );
    }
}

#[test]
fn missing_signature_header_is_401_and_nothing_is_kept() {
    let (_dir, server) = start();

    let id = unique("gh-nosig");
    let body = push_body("refs/heads/main", "x");
    let good = gh_headers(GH_SECRET, &body, &id);
    let bad = without(good.clone(), "X-Hub-Signature-256");
    assert_status(
        &post(&server, "/hooks/gh", &bad, &body),
        401,
        "github unsigned",
    );
    assert_nothing_kept(&server, "/hooks/gh", "gh", (&good, &body), &id);

    let id = unique("msg_std-nosig");
    let body = order_body("x");
    let good = std_headers(STD_SECRET, &body, &id);
    let bad = without(good.clone(), "webhook-signature");
    assert_status(
        &post(&server, "/hooks/std", &bad, &body),
        401,
        "standard unsigned",
    );
    assert_nothing_kept(&server, "/hooks/std", "std", (&good, &body), &id);

    let id = unique("mac-nosig");
    let body = thing_body("x");
    let good = mac_headers(MAC_SECRET, &body, &id);
    let bad = without(good.clone(), "X-Signature");
    assert_status(
        &post(&server, "/hooks/mac", &bad, &body),
        401,
        "hmac unsigned",
    );
    assert_nothing_kept(&server, "/hooks/mac", "mac", (&good, &body), &id);

    // A signature without the timestamp it covers is no better.
    let id = unique("macts-nots");
    let body = thing_body("x");
    let good = macts_headers(MACTS_SECRET, &body, &id);
    let bad = without(good.clone(), "X-Timestamp");
    assert_status(
        &post(&server, "/hooks/macts", &bad, &body),
        401,
        "hmac without timestamp",
    );
    assert_nothing_kept(&server, "/hooks/macts", "macts", (&good, &body), &id);
}

// ---- bad input ----

/// Send `head` and `body` in one write on a fresh connection and read the
/// answer until the server closes it: (status, body text).
fn raw_exchange(addr: &str, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut bytes = head.as_bytes().to_vec();
    bytes.extend_from_slice(body);
    // The server may answer before reading everything and close; what it
    // answered is what counts.
    let _ = stream.write_all(&bytes);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

fn head(path: &str, addr: &str, headers: &Headers, framing: &str) -> String {
    let mut h =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{framing}\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h
}

#[test]
fn body_over_max_body_is_413_with_content_length_or_chunked() {
    let (_dir, server) = start_with(|o| o.arg("--max-body").arg("1024"));
    let big = push_body("refs/heads/main", &"x".repeat(1500));
    assert!(big.len() > 1024 && big.len() < 2048);

    let id = unique("gh-big-cl");
    let headers = gh_headers(GH_SECRET, &big, &id);
    let (status, answer) = raw_exchange(
        &server.addr,
        &head(
            "/hooks/gh",
            &server.addr,
            &headers,
            &format!("Content-Length: {}", big.len()),
        ),
        &big,
    );
    assert_eq!(status, 413, "Content-Length over the cap: {answer}");

    let id = unique("gh-big-chunked");
    let headers = gh_headers(GH_SECRET, &big, &id);
    let mut chunked = Vec::new();
    for chunk in big.chunks(300) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, answer) = raw_exchange(
        &server.addr,
        &head(
            "/hooks/gh",
            &server.addr,
            &headers,
            "Transfer-Encoding: chunked",
        ),
        &chunked,
    );
    assert_eq!(status, 413, "chunked body over the cap: {answer}");

    // Neither was stored, and a body within the cap, chunked or not, is fine.
    let small = push_body("refs/heads/main", "small");
    let headers = gh_headers(GH_SECRET, &small, &id);
    let mut chunked = format!("{:x}\r\n", small.len()).into_bytes();
    chunked.extend_from_slice(&small);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let (status, answer) = raw_exchange(
        &server.addr,
        &head(
            "/hooks/gh",
            &server.addr,
            &headers,
            "Transfer-Encoding: chunked",
        ),
        &chunked,
    );
    assert_eq!(status, 202, "chunked body within the cap: {answer}");
    assert_fired_once(&server, "gh", &id);
    let after = unique("gh-after-413");
    let resp = post(
        &server,
        "/hooks/gh",
        &gh_headers(GH_SECRET, &small, &after),
        &small,
    );
    assert_accepted(&resp, &after);
    assert_fired_once(&server, "gh", &after);
}

#[test]
fn unknown_path_is_404_and_get_is_405() {
    let (_dir, server) = start();
    let id = unique("gh-route");
    let body = push_body("refs/heads/main", "x");
    let headers = gh_headers(GH_SECRET, &body, &id);

    assert_status(
        &post(&server, "/hooks/nope", &headers, &body),
        404,
        "unknown source",
    );
    assert_status(&post(&server, "/", &headers, &body), 404, "root");
    let resp = request("GET", &server.url("/hooks/gh"), &[], b"");
    assert_status(&resp, 405, "GET on a source");
    assert!(
        resp.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("allow") && v.contains("POST")),
        "{resp:?}"
    );
    assert_status(
        &request("PUT", &server.url("/hooks/gh"), &as_refs(&headers), &body),
        405,
        "PUT",
    );

    // Still up, and the id is still new.
    assert_accepted(&post(&server, "/hooks/gh", &headers, &body), &id);
    assert_fired_once(&server, "gh", &id);
}

#[test]
fn bad_bodies_are_4xx_after_verification_and_the_server_stays_up() {
    let (_dir, server) = start();
    let cases: Vec<(&str, Vec<u8>, &str, u16)> = vec![
        (
            "malformed",
            b"{\"ref\": \"refs/heads/main\",".to_vec(),
            "application/json",
            400,
        ),
        ("not-utf8", b"\xff\xfe{}".to_vec(), "application/json", 400),
        (
            "nested",
            "[".repeat(100_000).into_bytes(),
            "application/json",
            400,
        ),
        (
            "nested-closed",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            "application/json",
            400,
        ),
        (
            "text",
            push_body("refs/heads/main", "text"),
            "text/plain",
            415,
        ),
    ];
    for (what, body, content_type, status) in cases {
        let id = unique(&format!("gh-{what}"));
        let mut headers = signed_headers("github", GH_SECRET, &body, &id);
        headers.push(("X-GitHub-Event".to_owned(), "push".to_owned()));
        headers.push(("Content-Type".to_owned(), content_type.to_owned()));
        let resp = post(&server, "/hooks/gh", &headers, &body);
        assert_status(&resp, status, what);
        assert!(resp.json()["error"].is_string(), "{what}: {resp:?}");

        // Signed correctly, but unsigned it is a 401: the signature is
        // checked first.
        let unsigned = without(headers.clone(), "X-Hub-Signature-256");
        assert_status(&post(&server, "/hooks/gh", &unsigned, &body), 401, what);

        // Nothing was kept under that id, and the server still serves.
        let good = push_body("refs/heads/main", what);
        assert_nothing_kept(
            &server,
            "/hooks/gh",
            "gh",
            (&gh_headers(GH_SECRET, &good, &id), &good),
            &id,
        );
    }
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}
