//! Every provider adapter through the real binary over real HTTP: signed
//! requests, handshakes, secret rotation, clock skew, malformed signature
//! headers, URL-bound schemes (Twilio, Square) and `hookrouter sign`.
//!
//! `tests/fixtures/providers/rules.yaml` has one source per provider (named
//! after it), each with two secrets, an old and a new one, and one rule per
//! source that logs `<source>-event type=[<type>] id=[<id>]`, so the log
//! shows which events ran, with which type and id.

use crate::support::{now, unique};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey};
use hmac::{Hmac, Mac as _};
use hookrouter::providers::{Algorithm, Encoding, HmacOptions, ProviderSettings, Secret};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::support::{
    Headers, Resp, Server, as_refs, fixture, run, start_fresh, stderr, stdout, write,
};

const WAIT: Duration = Duration::from_secs(20);

/// The public URLs configured on the `twilio` and `square` sources.
const TWILIO_URL: &str = "https://hooks.example.com/twilio/sms?tenant=acme";
const SQUARE_URL: &str = "https://hooks.example.com/square";

/// RFC 8032 section 7.1, TEST 1 and TEST 2: secret keys, and the public keys
/// the fixture configures for `discord`.
const DISCORD_OLD: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const DISCORD_NEW: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
const DISCORD_OLD_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const DISCORD_NEW_PUBLIC: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";

/// (source, old secret, new secret), as in the fixture. Discord's are the
/// private halves of the configured public keys.
const SECRETS: &[(&str, &str, &str)] = &[
    ("github", "github-old-secret", "github-new-secret"),
    (
        "standard",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ),
    (
        "stripe",
        "whsec_stripe_old_secret",
        "whsec_stripe_new_secret",
    ),
    (
        "slack",
        "8f742231b10e8888abcd99yyyzzz85a5",
        "0c5ad0e4e1e2a2b3c4d5e6f708192a3b",
    ),
    ("shopify", "shopify-old-secret", "shopify-new-secret"),
    ("gitlab", "gitlab-old-token", "gitlab-new-token"),
    ("twilio", "twilio-old-auth-token", "twilio-new-auth-token"),
    (
        "twilio-proxy",
        "twilio-old-auth-token",
        "twilio-new-auth-token",
    ),
    (
        "square",
        "square-old-signature-key",
        "square-new-signature-key",
    ),
    (
        "square-proxy",
        "square-old-signature-key",
        "square-new-signature-key",
    ),
    (
        "paddle",
        "pdl_ntfset_01old000000000000000000000_oldSecretValue+abc",
        "pdl_ntfset_01new000000000000000000000_newSecretValue+xyz",
    ),
    ("zoom", "zoom-old-secret-token", "zoom-new-secret-token"),
    ("discord", DISCORD_OLD, DISCORD_NEW),
    (
        "pagerduty",
        "lDQHScfUeXUKaIWOldSecret+Z+IK",
        "lDQHScfUeXUKaIWNewSecret+Z+IK",
    ),
    ("linear", "lin_wh_old_secret", "lin_wh_new_secret"),
    ("mailgun", "key-mailgun-old", "key-mailgun-new"),
    ("hmac", "hmac-old-secret", "hmac-new-secret"),
    ("hmac-ts", "hmacts-old-secret", "hmacts-new-secret"),
];

/// Sources whose requests carry a signature, at their default path.
const SIGNED: &[&str] = &[
    "github",
    "standard",
    "stripe",
    "slack",
    "shopify",
    "gitlab",
    "twilio",
    "square",
    "paddle",
    "zoom",
    "discord",
    "pagerduty",
    "linear",
    "mailgun",
    "hmac",
    "hmac-ts",
];

/// Sources with a signed timestamp, and their window in seconds (the
/// provider's default, except `hmac-ts`, which sets `tolerance: 2m`).
const WINDOWS: &[(&str, i64)] = &[
    ("stripe", 300),
    ("slack", 300),
    ("standard", 300),
    ("zoom", 300),
    ("discord", 300),
    ("paddle", 5),
    ("linear", 60),
    ("mailgun", 300),
    ("hmac-ts", 120),
];

// ---- server, clock, ids ----

fn start() -> (TempDir, Server) {
    start_fresh(|_| fixture("providers/rules.yaml"), |o| o)
}

// ---- secrets ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Old,
    New,
    /// A well-formed secret the source does not have.
    Unknown,
}

fn secret(source: &str, key: Key) -> String {
    let (_, old, new) = SECRETS
        .iter()
        .find(|(name, _, _)| *name == source)
        .unwrap_or_else(|| panic!("no secret for {source}"));
    match key {
        Key::Old => (*old).to_owned(),
        Key::New => (*new).to_owned(),
        Key::Unknown => match source {
            "standard" => format!("whsec_{}", BASE64.encode("a key nobody configured!")),
            "discord" => "07".repeat(32),
            _ => "not-the-configured-secret".to_owned(),
        },
    }
}

/// The `provider:` of a fixture source.
fn provider_of(source: &str) -> &str {
    match source {
        "twilio-proxy" => "twilio",
        "square-proxy" => "square",
        "hmac-ts" => "hmac",
        other => other,
    }
}

/// The generic `hmac` options of the `hmac` and `hmac-ts` sources.
fn hmac_options(source: &str) -> Option<HmacOptions> {
    match source {
        "hmac" => Some(HmacOptions {
            header: "X-Signature".to_owned(),
            algorithm: Algorithm::Sha512,
            encoding: Encoding::Base64,
            prefix: "sha512=".to_owned(),
            timestamp_header: None,
        }),
        "hmac-ts" => Some(HmacOptions {
            header: "X-Signature".to_owned(),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: "v1=".to_owned(),
            timestamp_header: Some("X-Timestamp".to_owned()),
        }),
        _ => None,
    }
}

fn hmac_sha256_hex(key: &str, message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("key");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

// ---- requests as each provider sends them ----

/// A request before signing: body, the headers a sender adds besides the
/// signature, and what the rule's log line must show for it.
#[derive(Debug, Clone)]
struct Unsigned {
    source: &'static str,
    body: Vec<u8>,
    headers: Headers,
    /// The URL the sender signs (Twilio, Square).
    url: String,
    /// Unix seconds the request is stamped with.
    at: i64,
    kind: String,
    id: String,
}

/// A request ready to send.
#[derive(Debug, Clone)]
struct Req {
    source: &'static str,
    /// Path and query.
    target: String,
    headers: Headers,
    body: Vec<u8>,
    kind: String,
    id: String,
}

impl Req {
    fn needle(&self) -> String {
        format!(
            "{}-event type=[{}] id=[{}]",
            self.source, self.kind, self.id
        )
    }

    fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }
}

fn json(value: &serde_json::Value) -> Vec<u8> {
    value.to_string().into_bytes()
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn pairs(list: &[(&str, &str)]) -> Headers {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The body and extra headers `source`'s sender would send for event `id`.
fn unsigned(source: &'static str, id: &str, at: i64) -> Unsigned {
    use serde_json::json as j;
    let ms = at * 1000;
    let (body, headers, kind, id): (Vec<u8>, Headers, &str, String) = match source {
        "github" => (
            json(&j!({"action": "opened", "number": 7, "note": id})),
            pairs(&[JSON, ("X-GitHub-Event", "pull_request")]),
            "pull_request.opened",
            id.to_owned(),
        ),
        "standard" => (
            json(&j!({"type": "invoice.paid", "data": {"note": id}})),
            pairs(&[JSON]),
            "invoice.paid",
            id.to_owned(),
        ),
        "stripe" => (
            json(&j!({"id": id, "object": "event", "type": "charge.refunded"})),
            pairs(&[JSON]),
            "charge.refunded",
            id.to_owned(),
        ),
        "slack" => (
            json(&j!({
                "type": "event_callback",
                "event_id": id,
                "event": {"type": "app_mention", "text": "hi"}
            })),
            pairs(&[JSON]),
            "app_mention",
            id.to_owned(),
        ),
        "shopify" => (
            json(&j!({"id": 820_982_911, "note": id})),
            pairs(&[JSON, ("X-Shopify-Topic", "orders/create")]),
            "orders/create",
            id.to_owned(),
        ),
        "gitlab" => (
            json(&j!({"object_kind": "merge_request", "note": id})),
            pairs(&[JSON, ("X-Gitlab-Event", "Merge Request Hook")]),
            "merge_request",
            id.to_owned(),
        ),
        "twilio" | "twilio-proxy" => (
            format!("MessageSid={id}&MessageStatus=delivered&From=%2B15005550006&Body=hello+world")
                .into_bytes(),
            pairs(&[FORM]),
            if source == "twilio" { "delivered" } else { "" },
            id.to_owned(),
        ),
        "square" | "square-proxy" => (
            json(&j!({"type": "payment.updated", "event_id": id, "data": {}})),
            pairs(&[JSON]),
            "payment.updated",
            id.to_owned(),
        ),
        "paddle" => (
            json(&j!({
                "event_id": id,
                "event_type": "transaction.completed",
                "notification_id": "ntf_1"
            })),
            pairs(&[JSON]),
            "transaction.completed",
            id.to_owned(),
        ),
        "zoom" => {
            let body = json(&j!({
                "event": "meeting.started",
                "event_ts": ms,
                "payload": {"object": {"uuid": id}}
            }));
            // Zoom sends no id: the event id is a hash of the body.
            let digest = Sha256::digest(&body);
            let id = format!("sha256:{}", hex::encode(&digest[..16]));
            (body, pairs(&[JSON]), "meeting.started", id)
        }
        "discord" => (
            json(&j!({"type": 2, "id": id, "data": {"name": "deploy"}})),
            pairs(&[JSON]),
            "application_command.deploy",
            id.to_owned(),
        ),
        "pagerduty" => (
            json(&j!({"event": {"id": id, "event_type": "incident.triggered"}})),
            pairs(&[JSON]),
            "incident.triggered",
            id.to_owned(),
        ),
        "linear" => (
            json(&j!({
                "type": "Issue",
                "action": "create",
                "webhookTimestamp": ms,
                "data": {"id": "lin-1"}
            })),
            pairs(&[JSON]),
            "Issue.create",
            id.to_owned(),
        ),
        // The signature is written into the body when signing.
        "mailgun" => (Vec::new(), pairs(&[JSON]), "delivered", id.to_owned()),
        "hmac" | "hmac-ts" => (
            json(&j!({"type": "build.finished", "note": id})),
            pairs(&[JSON, ("X-Request-Id", id)]),
            "build.finished",
            id.to_owned(),
        ),
        "none" => (
            json(&j!({"kind": "ping.sent"})),
            pairs(&[JSON, ("X-Request-Id", id)]),
            "ping.sent",
            id.to_owned(),
        ),
        other => panic!("no request for source {other}"),
    };
    let url = match source {
        "twilio" => TWILIO_URL.to_owned(),
        "square" => SQUARE_URL.to_owned(),
        _ => "http://localhost/".to_owned(),
    };
    Unsigned {
        source,
        body,
        headers,
        url,
        at,
        kind: kind.to_owned(),
        id,
    }
}

/// The headers `hookrouter::providers::sign` produces for `u`.
fn library_signature(u: &Unsigned, secret: &str) -> Headers {
    let settings = ProviderSettings {
        secrets: vec![Secret::new(secret)],
        hmac: hmac_options(u.source),
        ..Default::default()
    };
    hookrouter::providers::sign(
        provider_of(u.source),
        &settings,
        &u.body,
        &u.id,
        u.at,
        &u.url,
    )
    .unwrap_or_else(|e| panic!("sign {}: {e}", u.source))
}

/// Discord's headers: Ed25519 over `{timestamp}{body}`, signed with the
/// secret key hookrouter never holds.
fn discord_signature(secret_key_hex: &str, body: &[u8], at: i64) -> Headers {
    let bytes: [u8; 32] = hex::decode(secret_key_hex)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let ts = at.to_string();
    let signature = SigningKey::from_bytes(&bytes).sign(&[ts.as_bytes(), body].concat());
    vec![
        (
            "X-Signature-Ed25519".to_owned(),
            hex::encode(signature.to_bytes()),
        ),
        ("X-Signature-Timestamp".to_owned(), ts),
    ]
}

/// Mailgun's body: the event plus the signed `timestamp`/`token` pair.
fn mailgun_body(key: &str, token: &str, at: i64) -> Vec<u8> {
    let ts = at.to_string();
    let signature = hmac_sha256_hex(key, format!("{ts}{token}").as_bytes());
    json(&serde_json::json!({
        "signature": {"timestamp": ts, "token": token, "signature": signature},
        "event-data": {"event": "delivered", "recipient": "alice@example.com"}
    }))
}

fn sign(u: &Unsigned, secret: &str) -> Req {
    let (signature, body) = match u.source {
        "discord" => (discord_signature(secret, &u.body, u.at), u.body.clone()),
        "mailgun" => (Vec::new(), mailgun_body(secret, &u.id, u.at)),
        "none" => (Vec::new(), u.body.clone()),
        _ => (library_signature(u, secret), u.body.clone()),
    };
    Req {
        source: u.source,
        target: format!("/hooks/{}", u.source),
        headers: [u.headers.clone(), signature].concat(),
        body,
        kind: u.kind.clone(),
        id: u.id.clone(),
    }
}

/// `source`'s request for a fresh id, signed with `key` at `at`.
fn signed_at(source: &'static str, key: Key, at: i64) -> Req {
    let u = unsigned(source, &unique(source), at);
    let secret = if source == "none" {
        String::new()
    } else {
        secret(source, key)
    };
    sign(&u, &secret)
}

fn valid(source: &'static str) -> Req {
    signed_at(source, Key::New, now())
}

// ---- sending and checking ----

fn post(server: &Server, req: &Req) -> Resp {
    server.post(&req.target, &as_refs(&req.headers), &req.body)
}

/// 202 with the expected id, and the rule's log line appears exactly once.
#[track_caller]
fn assert_runs(server: &Server, req: &Req, what: &str) {
    let resp = post(server, req);
    assert_eq!(resp.status, 202, "{what}: {}: {resp:?}", req.source);
    assert_eq!(
        resp.json()["id"],
        req.id.as_str(),
        "{what}: {}: {resp:?}",
        req.source
    );
    let needle = req.needle();
    assert!(
        server.wait_log(&needle, 1, WAIT),
        "{what}: `{needle}` never logged; log:\n{}",
        server.log()
    );
    assert_eq!(
        server.log().matches(&needle).count(),
        1,
        "{what}: `{needle}` logged more than once"
    );
}

/// A bare 401 that says nothing of why.
#[track_caller]
fn assert_refused(resp: &Resp, what: &str) {
    assert_eq!(resp.status, 401, "{what}: {resp:?}");
    assert_eq!(
        resp.json()["error"],
        "signature verification failed",
        "{what}: {resp:?}"
    );
}

fn set(headers: &Headers, name: &str, value: &str) -> Headers {
    let mut out = without(headers, name);
    out.push((name.to_owned(), value.to_owned()));
    out
}

fn without(headers: &Headers, name: &str) -> Headers {
    headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

/// `headers` with `name` sent a second time, same value.
fn twice(headers: &Headers, name: &str) -> Headers {
    let mut out = headers.clone();
    out.push((name.to_owned(), get(headers, name)));
    out
}

fn get(headers: &Headers, name: &str) -> String {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
}

/// One request over a plain TCP connection, for what an HTTP client would
/// not send: a chosen Host header, header bytes that are not UTF-8. Returns
/// the status and body; a dropped connection fails the test.
fn raw_post(
    server: &Server,
    target: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(&server.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut out = format!("POST {target} HTTP/1.1\r\n").into_bytes();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        out.extend_from_slice(format!("Host: {}\r\n", server.addr).as_bytes());
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    stream.write_all(&out).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read answer");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer (connection dropped?): {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn raw_headers(headers: &Headers) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect()
}

// ---- accepted requests ----

#[test]
fn every_provider_accepts_a_signed_request_with_its_type_and_id() {
    let (_dir, server) = start();
    for &source in SIGNED.iter().chain(&["none"]) {
        let req = valid(source);
        assert_runs(&server, &req, "signed request");
        // The provider's event id is the dedup key: the same request again
        // is a duplicate and runs nothing.
        let again = post(&server, &req);
        assert_eq!(again.status, 200, "{source} resent: {again:?}");
        assert_eq!(again.json()["status"], "duplicate", "{source}: {again:?}");
    }
    // GitLab's token and Mailgun's signature do not cover the body.
    for &source in SIGNED
        .iter()
        .filter(|s| !matches!(**s, "gitlab" | "mailgun"))
    {
        let req = valid(source);
        let tampered = req
            .clone()
            .with_body([req.body.clone(), b" ".to_vec()].concat());
        assert_refused(
            &post(&server, &tampered),
            &format!("{source}: tampered body"),
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    for &source in SIGNED.iter().chain(&["none"]) {
        let needle = format!("{source}-event type=");
        assert_eq!(
            server.log().matches(&needle).count(),
            1,
            "{source}: only the first request may run; log:\n{}",
            server.log()
        );
    }
}

#[test]
fn rotation_accepts_the_old_and_the_new_secret_and_nothing_else() {
    let (_dir, server) = start();
    for &source in SIGNED {
        let old = signed_at(source, Key::Old, now());
        assert_runs(&server, &old, "old secret");
        let new = signed_at(source, Key::New, now());
        assert_runs(&server, &new, "new secret");
        let unknown = signed_at(source, Key::Unknown, now());
        assert_refused(
            &post(&server, &unknown),
            &format!("{source}: unknown secret"),
        );
    }
}

#[test]
fn clock_skew_inside_the_window_passes_and_outside_fails() {
    let (_dir, server) = start();
    for &(source, window) in WINDOWS {
        // Just inside, leaving room for the time the request takes.
        let inside = window - if window >= 60 { 5 } else { 2 };
        let outside = window + 30;
        for offset in [-inside, inside] {
            let req = signed_at(source, Key::New, now() + offset);
            assert_runs(&server, &req, &format!("skew {offset:+}s"));
        }
        for offset in [-outside, outside] {
            let req = signed_at(source, Key::Old, now() + offset);
            assert_refused(&post(&server, &req), &format!("{source}: skew {offset:+}s"));
        }
    }
}

// ---- handshakes ----

#[test]
fn slack_url_verification_echoes_the_challenge_only_when_signed() {
    let (_dir, server) = start();
    let challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P";
    let body = json(&serde_json::json!({
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "challenge": challenge,
        "type": "url_verification"
    }));
    let handshake = |key: Key, at: i64| {
        let mut u = unsigned("slack", "unused", at);
        u.body = body.clone();
        sign(&u, &secret("slack", key))
    };
    for key in [Key::Old, Key::New] {
        let resp = post(&server, &handshake(key, now()));
        assert_eq!(resp.status, 200, "{key:?}: {resp:?}");
        assert_eq!(resp.json(), serde_json::json!({ "challenge": challenge }));
        assert!(
            resp.headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/json"),
            "{resp:?}"
        );
    }
    let unsigned_req = handshake(Key::New, now()).with_headers(pairs(&[JSON]));
    assert_refused(&post(&server, &unsigned_req), "unsigned url_verification");
    assert_refused(
        &post(&server, &handshake(Key::Unknown, now())),
        "url_verification, unknown secret",
    );
    assert_refused(
        &post(&server, &handshake(Key::New, now() - 3600)),
        "url_verification, an hour old",
    );
    // A handshake is answered, not routed: the next event is the first run.
    assert_runs(&server, &valid("slack"), "event after handshake");
    assert!(!server.log().contains("slack-event type=[url_verification]"));
}

#[test]
fn zoom_url_validation_answers_with_the_token_hmac_of_the_signing_secret() {
    // The published pair (Zoom docs, elastic/beats tests) checks the helper.
    assert_eq!(
        hmac_sha256_hex("secretValueTest", b"qgg8vlvZRS6UYooatFL8Aw"),
        "70c1f2e2e6ca2d39297490d1f9142c7d701415ea8e6151f6562a08fa657a40ff"
    );
    let (_dir, server) = start();
    let plain = "qgg8vlvZRS6UYooatFL8Aw";
    let handshake = |key: Key| {
        let mut u = unsigned("zoom", "unused", now());
        u.body = json(&serde_json::json!({
            "payload": {"plainToken": plain},
            "event_ts": now() * 1000,
            "event": "endpoint.url_validation"
        }));
        sign(&u, &secret("zoom", key))
    };
    for key in [Key::Old, Key::New] {
        let resp = post(&server, &handshake(key));
        assert_eq!(resp.status, 200, "{key:?}: {resp:?}");
        assert_eq!(
            resp.json(),
            serde_json::json!({
                "plainToken": plain,
                "encryptedToken": hmac_sha256_hex(&secret("zoom", key), plain.as_bytes()),
            }),
            "{key:?}: the token is encrypted with the secret that signed"
        );
    }
    let unsigned_req = handshake(Key::New).with_headers(pairs(&[JSON]));
    assert_refused(&post(&server, &unsigned_req), "unsigned url_validation");
    assert_refused(
        &post(&server, &handshake(Key::Unknown)),
        "url_validation, unknown secret",
    );
    assert_runs(&server, &valid("zoom"), "event after handshake");
    assert!(
        !server
            .log()
            .contains("zoom-event type=[endpoint.url_validation]")
    );
}

#[test]
fn discord_ping_is_answered_only_when_the_signature_verifies() {
    for (secret_key, public) in [
        (DISCORD_OLD, DISCORD_OLD_PUBLIC),
        (DISCORD_NEW, DISCORD_NEW_PUBLIC),
    ] {
        let bytes: [u8; 32] = hex::decode(secret_key).unwrap().try_into().unwrap();
        assert_eq!(
            hex::encode(SigningKey::from_bytes(&bytes).verifying_key().as_bytes()),
            public
        );
    }
    let (_dir, server) = start();
    let ping = |key: Key, at: i64| {
        let mut u = unsigned("discord", "unused", at);
        u.body = br#"{"type":1}"#.to_vec();
        sign(&u, &secret("discord", key))
    };
    for key in [Key::Old, Key::New] {
        let resp = post(&server, &ping(key, now()));
        assert_eq!(resp.status, 200, "{key:?}: {resp:?}");
        assert_eq!(resp.body, r#"{"type":1}"#);
    }
    // Discord probes with bad signatures and expects 401.
    assert_refused(
        &post(&server, &ping(Key::Unknown, now())),
        "PING, other key",
    );
    let good = ping(Key::New, now());
    let mut flipped = get(&good.headers, "X-Signature-Ed25519");
    let first = if flipped.starts_with('0') { "1" } else { "0" };
    flipped.replace_range(..1, first);
    let bad = good
        .clone()
        .with_headers(set(&good.headers, "X-Signature-Ed25519", &flipped));
    assert_refused(&post(&server, &bad), "PING, one signature bit changed");
    let other_ts = set(
        &good.headers,
        "X-Signature-Timestamp",
        &(now() + 1).to_string(),
    );
    assert_refused(
        &post(&server, &good.clone().with_headers(other_ts)),
        "PING, timestamp not the signed one",
    );
    assert_refused(
        &post(&server, &good.clone().with_headers(pairs(&[JSON]))),
        "PING, unsigned",
    );
    assert_refused(&post(&server, &ping(Key::New, now() - 3600)), "PING, stale");
    assert_runs(&server, &valid("discord"), "command after PING");
    assert!(!server.log().contains("discord-event type=[ping]"));
}

// ---- malformed signatures ----

/// The header carrying `source`'s signature, and the text before the
/// signature proper in a valid value.
fn signature_header(source: &str) -> &'static str {
    match source {
        "github" => "X-Hub-Signature-256",
        "standard" => "webhook-signature",
        "stripe" => "Stripe-Signature",
        "slack" => "X-Slack-Signature",
        "shopify" => "X-Shopify-Hmac-Sha256",
        "gitlab" => "X-Gitlab-Token",
        "twilio" => "X-Twilio-Signature",
        "square" => "x-square-hmacsha256-signature",
        "paddle" => "Paddle-Signature",
        "zoom" => "x-zm-signature",
        "discord" => "X-Signature-Ed25519",
        "pagerduty" => "X-PagerDuty-Signature",
        "linear" => "Linear-Signature",
        "hmac" | "hmac-ts" => "X-Signature",
        other => panic!("{other} has no signature header"),
    }
}

/// `value` split into what precedes the signature and the signature.
fn split_signature(source: &str, value: &str) -> (String, String) {
    let cut = match source {
        "stripe" => value.rfind("v1=").map(|i| i + 3),
        "paddle" => value.rfind("h1=").map(|i| i + 3),
        "github" => Some("sha256=".len()),
        "standard" => Some("v1,".len()),
        "slack" | "zoom" => Some("v0=".len()),
        "pagerduty" | "hmac-ts" => Some("v1=".len()),
        "hmac" => Some("sha512=".len()),
        _ => Some(0),
    }
    .unwrap_or_else(|| panic!("{source}: unexpected signature {value}"));
    let (head, sig) = value.split_at(cut);
    (head.to_owned(), sig.to_owned())
}

/// Variants of the valid request `good` whose signature is missing,
/// malformed, ambiguous or wrong. Every one must be answered 401.
fn malformed(good: &Req) -> Vec<(String, Req)> {
    let source = good.source;
    if source == "mailgun" {
        return mailgun_malformed(good);
    }
    let h = &good.headers;
    let mut out: Vec<(String, Req)> = Vec::new();
    let mut headers = |label: &str, headers: Headers| {
        out.push((label.to_owned(), good.clone().with_headers(headers)));
    };

    let name = signature_header(source);
    let value = get(h, name);
    let (head, sig) = split_signature(source, &value);
    let odd = &sig[..sig.len() - 1];
    let junk = "zz".repeat(sig.len() / 2);

    // Every scheme.
    headers("missing", without(h, name));
    headers("empty", set(h, name, ""));
    headers("blank", set(h, name, "   "));
    headers("repeated header", twice(h, name));
    headers("4 KiB of junk", set(h, name, &"A".repeat(4096)));
    headers("one character more", set(h, name, &format!("{value}0")));
    if !matches!(source, "paddle" | "pagerduty") {
        // (Both list several signatures in one header by design.)
        headers(
            "signature twice in one value",
            set(h, name, &format!("{value},{value}")),
        );
    }

    let hex_scheme = !matches!(
        source,
        "standard" | "shopify" | "twilio" | "square" | "hmac" | "gitlab"
    );
    if hex_scheme {
        headers("odd-length hex", set(h, name, &format!("{head}{odd}")));
        headers("not hex", set(h, name, &format!("{head}{junk}")));
        let bytes = hex::decode(&sig).expect("hex");
        headers(
            "base64 instead of hex",
            set(h, name, &format!("{head}{}", BASE64.encode(bytes))),
        );
    } else if source != "gitlab" {
        headers("bad base64", set(h, name, &format!("{head}*{}", &sig[1..])));
        headers("one base64 character", set(h, name, &format!("{head}a")));
        let bytes = BASE64.decode(&sig).expect("base64");
        headers(
            "hex instead of base64",
            set(h, name, &format!("{head}{}", hex::encode(bytes))),
        );
        headers("truncated", set(h, name, &format!("{head}{}", &sig[4..])));
    }

    match source {
        "github" => {
            headers("no prefix", set(h, name, &sig));
            headers("sha1 prefix", set(h, name, &format!("sha1={sig}")));
            headers("upper-case prefix", set(h, name, &format!("SHA256={sig}")));
            let legacy = set(
                &without(h, name),
                "X-Hub-Signature",
                &format!("sha1={}", &sig[..40]),
            );
            headers("legacy SHA-1 header only", legacy);
        }
        "standard" => {
            headers("no version", set(h, name, &sig));
            headers("unknown version", set(h, name, &format!("v2,{sig}")));
            headers("v1a, no public key", set(h, name, &format!("v1a,{sig}")));
            headers("= instead of ,", set(h, name, &format!("v1={sig}")));
            headers("bad base64", set(h, name, "v1,!!!!"));
            headers("repeated id header", twice(h, "webhook-id"));
            headers("repeated timestamp header", twice(h, "webhook-timestamp"));
            headers("no timestamp", without(h, "webhook-timestamp"));
            headers("no id", without(h, "webhook-id"));
            headers("timestamp not a number", set(h, "webhook-timestamp", "abc"));
            headers("timestamp empty", set(h, "webhook-timestamp", ""));
            let ts = get(h, "webhook-timestamp");
            headers(
                "timestamp with a fraction",
                set(h, "webhook-timestamp", &format!("{ts}.0")),
            );
        }
        "stripe" | "paddle" => {
            let (t, v, sep) = if source == "stripe" {
                ("t", "v1", ',')
            } else {
                ("ts", "h1", ';')
            };
            let ts = head
                .strip_prefix(&format!("{t}="))
                .and_then(|rest| rest.strip_suffix(&format!("{sep}{v}=")))
                .unwrap_or_else(|| panic!("{source}: {value}"))
                .to_owned();
            let other_sep = if sep == ',' { ';' } else { ',' };
            headers("no timestamp field", set(h, name, &format!("{v}={sig}")));
            headers("no signature field", set(h, name, &format!("{t}={ts}")));
            headers(
                "unknown signature version",
                set(h, name, &format!("{t}={ts}{sep}v0={sig}")),
            );
            headers(
                "repeated timestamp field",
                set(h, name, &format!("{t}={ts}{sep}{t}={ts}{sep}{v}={sig}")),
            );
            headers(
                "wrong separator",
                set(h, name, &format!("{t}={ts}{other_sep}{v}={sig}")),
            );
            headers(
                "field without =",
                set(h, name, &format!("{t}={ts}{sep}{v}")),
            );
            headers(
                "empty timestamp",
                set(h, name, &format!("{t}={sep}{v}={sig}")),
            );
            headers(
                "timestamp not a number",
                set(h, name, &format!("{t}=abc{sep}{v}={sig}")),
            );
            headers(
                "negative timestamp",
                set(h, name, &format!("{t}=-{ts}{sep}{v}={sig}")),
            );
            let earlier = ts.parse::<i64>().expect("timestamp") - 1;
            headers(
                "another timestamp",
                set(h, name, &format!("{t}={earlier}{sep}{v}={sig}")),
            );
            headers("not fields at all", set(h, name, &sig));
        }
        "slack" | "zoom" | "hmac-ts" => {
            let ts_name = match source {
                "slack" => "X-Slack-Request-Timestamp",
                "zoom" => "x-zm-request-timestamp",
                _ => "X-Timestamp",
            };
            headers("no prefix", set(h, name, &sig));
            headers("wrong prefix", set(h, name, &format!("v9={sig}")));
            headers("repeated timestamp header", twice(h, ts_name));
            headers("no timestamp header", without(h, ts_name));
            headers("empty timestamp", set(h, ts_name, ""));
            headers("timestamp not a number", set(h, ts_name, "abc"));
            headers("negative timestamp", set(h, ts_name, "-1"));
            headers(
                "timestamp in milliseconds",
                set(h, ts_name, &format!("{}000", get(h, ts_name))),
            );
        }
        "discord" => {
            headers("0x prefix", set(h, name, &format!("0x{sig}")));
            headers("half a signature", set(h, name, &sig[..64]));
            headers("all zeros", set(h, name, &"0".repeat(128)));
            headers(
                "repeated timestamp header",
                twice(h, "X-Signature-Timestamp"),
            );
            headers("no timestamp header", without(h, "X-Signature-Timestamp"));
            headers("empty timestamp", set(h, "X-Signature-Timestamp", ""));
            headers(
                "timestamp not a number",
                set(h, "X-Signature-Timestamp", "abc"),
            );
        }
        "pagerduty" => {
            headers("no prefix", set(h, name, &sig));
            headers("unknown version", set(h, name, &format!("v2={sig}")));
            headers(
                "wrong separator",
                set(h, name, &format!("v1={sig};v1={sig}")),
            );
            headers("field without =", set(h, name, "v1"));
        }
        "linear" | "shopify" | "twilio" | "square" => {
            headers("prefixed", set(h, name, &format!("sha256={sig}")));
        }
        "hmac" => {
            headers("no prefix", set(h, name, &sig));
            headers("other prefix", set(h, name, &format!("sha256={sig}")));
        }
        "gitlab" => {
            headers("bearer", set(h, name, &format!("Bearer {sig}")));
            headers("prefix of the token", set(h, name, &sig[..sig.len() - 1]));
            headers("upper case", set(h, name, &sig.to_uppercase()));
        }
        _ => {}
    }
    if source == "square" {
        let legacy = set(&without(h, name), "x-square-signature", &sig);
        headers("legacy SHA-1 header only", legacy);
    }
    out
}

/// Mailgun's signature travels in the body.
fn mailgun_malformed(good: &Req) -> Vec<(String, Req)> {
    let body: serde_json::Value = serde_json::from_slice(&good.body).expect("json");
    let signature = &body["signature"];
    let ts = signature["timestamp"].as_str().expect("timestamp");
    let token = signature["token"].as_str().expect("token");
    let sig = signature["signature"].as_str().expect("signature");
    let with_signature = |ts: &str, token: &str, sig: &str| {
        let mut body = body.clone();
        body["signature"] = serde_json::json!({"timestamp": ts, "token": token, "signature": sig});
        json(&body)
    };
    let form = |fields: &str| {
        let req = good.clone().with_body(fields.as_bytes().to_vec());
        req.clone()
            .with_headers(set(&req.headers, "Content-Type", FORM.1))
    };
    let mut no_signature = body.clone();
    no_signature
        .as_object_mut()
        .expect("object")
        .remove("signature");
    vec![
        (
            "no signature".to_owned(),
            good.clone().with_body(json(&no_signature)),
        ),
        ("empty body".to_owned(), good.clone().with_body(Vec::new())),
        ("not JSON".to_owned(), good.clone().with_body(b"{".to_vec())),
        (
            "empty signature".to_owned(),
            good.clone().with_body(with_signature(ts, token, "")),
        ),
        (
            "odd-length hex".to_owned(),
            good.clone()
                .with_body(with_signature(ts, token, &sig[..sig.len() - 1])),
        ),
        (
            "not hex".to_owned(),
            good.clone()
                .with_body(with_signature(ts, token, &"zz".repeat(32))),
        ),
        (
            "timestamp not a number".to_owned(),
            good.clone().with_body(with_signature("abc", token, sig)),
        ),
        (
            "other token".to_owned(),
            good.clone().with_body(with_signature(ts, "forged", sig)),
        ),
        (
            "form, repeated signature field".to_owned(),
            form(&format!(
                "timestamp={ts}&token={token}&signature={sig}&signature={sig}"
            )),
        ),
        (
            "form, repeated timestamp field".to_owned(),
            form(&format!(
                "timestamp={ts}&timestamp={ts}&token={token}&signature={sig}"
            )),
        ),
    ]
}

#[test]
fn malformed_signatures_are_401_for_every_provider_and_the_server_keeps_serving() {
    let (_dir, server) = start();
    let mut cases = 0;
    for &source in SIGNED {
        let good = signed_at(source, Key::New, now());
        for (label, bad) in malformed(&good) {
            let resp = post(&server, &bad);
            assert_refused(&resp, &format!("{source}: {label}"));
            cases += 1;
        }
        if source != "mailgun" {
            // Bytes that are not UTF-8 (obs-text) in the signature header.
            let name = signature_header(source);
            let others = without(&good.headers, name);
            let mut headers = raw_headers(&others);
            headers.push((name, &b"sha256=\xff\xfe\x80"[..]));
            let (status, body) = raw_post(&server, &good.target, &headers, &good.body);
            assert_eq!(status, 401, "{source}: non-UTF-8 header: {body}");
            cases += 1;
        }
        // None of them was stored: the same event, signed properly now, is
        // new (202, not a duplicate) and runs exactly once.
        let again = sign(&unsigned_like(&good), &secret(source, Key::New));
        assert_eq!(again.id, good.id, "{source}");
        assert_runs(&server, &again, "valid request after malformed ones");
    }
    assert!(cases > 200, "only {cases} malformed cases");
    assert!(
        !server.log().contains("panicked"),
        "the server panicked:\n{}",
        server.log()
    );
}

/// `unsigned(…)` again for `req`'s source and id, keeping the body's id.
fn unsigned_like(req: &Req) -> Unsigned {
    let u = unsigned(req.source, &req.id, now());
    match req.source {
        // The id is a hash of the body, and the body carries the time.
        "zoom" => Unsigned {
            body: req.body.clone(),
            id: req.id.clone(),
            ..u
        },
        _ => u,
    }
}

// ---- Twilio and Square sign the URL ----

#[test]
fn twilio_and_square_sign_the_configured_public_url() {
    let (_dir, server) = start();
    for source in ["twilio", "square"] {
        assert_runs(&server, &valid(source), "signed for the configured url");
        let configured = if source == "twilio" {
            TWILIO_URL
        } else {
            SQUARE_URL
        };
        let others = [
            server.url(&format!("/hooks/{source}")),
            configured.replace("https://", "http://"),
            configured.replace("hooks.example.com", "evil.example.com"),
            format!("{configured}/"),
            configured.replace("?tenant=acme", ""),
            configured.replace("tenant=acme", "tenant=acme&x=1"),
        ];
        for other in others.iter().filter(|o| *o != configured) {
            let mut u = unsigned(source, &unique(source), now());
            u.url.clone_from(other);
            let req = sign(&u, &secret(source, Key::New));
            assert_refused(
                &post(&server, &req),
                &format!("{source} signed for {other}"),
            );
        }
        // With `url:` set, the Host header plays no part.
        let req = valid(source);
        let mut headers = raw_headers(&req.headers);
        headers.push(("Host", &b"evil.example.com"[..]));
        headers.push(("X-Forwarded-Proto", &b"http"[..]));
        let (status, body) = raw_post(&server, &req.target, &headers, &req.body);
        assert_eq!(status, 202, "{source}, other Host: {body}");
    }
}

#[test]
fn without_url_twilio_and_square_sign_host_and_forwarded_proto() {
    let (_dir, server) = start();
    for source in ["twilio-proxy", "square-proxy"] {
        let target = format!("/hooks/{source}?tenant=acme");
        let signed_for = |url: &str| {
            let mut u = unsigned(source, &unique(source), now());
            u.url = url.to_owned();
            let mut req = sign(&u, &secret(source, Key::Old));
            req.target.clone_from(&target);
            req
        };
        let send = |req: &Req, extra: &[(&str, &[u8])]| {
            let mut headers = raw_headers(&req.headers);
            headers.extend_from_slice(extra);
            raw_post(&server, &req.target, &headers, &req.body)
        };
        let public = format!("https://public.example.com{target}");

        // Directly: http, the Host the client used, path and query.
        let direct = signed_for(&format!("http://{}{target}", server.addr));
        let (status, body) = send(&direct, &[]);
        assert_eq!(status, 202, "{source} direct: {body}");

        // Behind a TLS-terminating proxy that forwards Host and the scheme.
        let proxied = signed_for(&public);
        let host: &[(&str, &[u8])] = &[("Host", &b"public.example.com"[..])];
        let https: &[(&str, &[u8])] = &[("X-Forwarded-Proto", &b"https"[..])];
        let (status, body) = send(&proxied, &[host, https].concat());
        assert_eq!(status, 202, "{source} behind a proxy: {body}");
        assert!(
            server.wait_log(&proxied.needle(), 1, WAIT),
            "{}",
            server.log()
        );

        // The scheme not forwarded: the server sees http and refuses.
        let (status, _) = send(&signed_for(&public), host);
        assert_eq!(status, 401, "{source}: X-Forwarded-Proto missing");
        // The Host not forwarded: the internal address is not what was signed.
        let (status, _) = send(&signed_for(&public), https);
        assert_eq!(status, 401, "{source}: Host not forwarded");
        // The query is part of the URL.
        let mut other_query = signed_for(&public);
        other_query.target = format!("/hooks/{source}?tenant=other");
        let (status, _) = send(&other_query, &[host, https].concat());
        assert_eq!(status, 401, "{source}: other query");
    }
}

#[test]
fn twilio_json_posts_bind_the_body_through_body_sha256() {
    let (_dir, server) = start();
    let id = unique("twilio-json");
    let body = json(&serde_json::json!({"CallSid": id, "CallStatus": "completed"}));
    let hash = hex::encode(Sha256::digest(&body));
    let target = format!("/hooks/twilio-proxy?bodySHA256={hash}");
    let mut u = unsigned("twilio-proxy", &id, now());
    u.body = body.clone();
    u.url = format!("http://{}{target}", server.addr);
    u.headers = pairs(&[JSON]);
    let mut req = sign(&u, &secret("twilio-proxy", Key::New));
    req.target = target;
    assert_runs(&server, &req, "JSON post with bodySHA256");

    let forged = json(&serde_json::json!({"CallSid": id, "CallStatus": "forged"}));
    let tampered = req.clone().with_body(forged);
    assert_refused(
        &post(&server, &tampered),
        "body swapped under a valid signature",
    );
    let mut odd = req.clone();
    odd.target = format!("/hooks/twilio-proxy?bodySHA256={}", &hash[1..]);
    assert_refused(&post(&server, &odd), "odd-length bodySHA256");

    // With `url:` set (no query of its own), the sender's query is appended
    // to it: Twilio signed the public URL including `bodySHA256`.
    let id = unique("twilio-json-url");
    let body = json(&serde_json::json!({"CallSid": id, "CallStatus": "completed"}));
    let hash = hex::encode(Sha256::digest(&body));
    let mut u = unsigned("twilio-proxy", &id, now());
    u.body = body.clone();
    u.url = format!("https://hooks.example.com/twilio/voice?bodySHA256={hash}");
    u.headers = pairs(&[JSON]);
    let mut req = sign(&u, &secret("twilio-proxy", Key::New));
    req.target = format!("/hooks/twilio-json?bodySHA256={hash}");
    let resp = post(&server, &req);
    assert_eq!(resp.status, 202, "JSON post to a source with url: {resp:?}");
    let forged = json(&serde_json::json!({"CallSid": id, "CallStatus": "forged"}));
    assert_refused(
        &post(&server, &req.clone().with_body(forged)),
        "body swapped under a valid signature, url: set",
    );
}

// ---- hookrouter sign ----

/// `Name: value` lines as `hookrouter sign` prints them.
fn parse_cli_headers(text: &str) -> Headers {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("not a header line: {line:?}"));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

fn cli_sign(dir: &std::path::Path, u: &Unsigned, secret: &str) -> std::process::Output {
    let body = dir.join(format!("{}.body", u.id));
    std::fs::write(&body, &u.body).expect("body");
    let mut args = vec![
        "sign",
        "--provider",
        provider_of(u.source),
        "--secret",
        secret,
        "--body",
        body.to_str().expect("utf-8 path"),
        "--id",
        u.id.as_str(),
    ];
    if matches!(u.source, "twilio" | "square") {
        args.extend(["--url", u.url.as_str()]);
    }
    run(&args)
}

#[test]
fn cli_sign_prints_headers_the_server_accepts() {
    let (dir, server) = start();
    for source in [
        "github",
        "stripe",
        "standard",
        "slack",
        "shopify",
        "gitlab",
        "twilio",
        "square",
        "paddle",
        "zoom",
        "pagerduty",
        "linear",
    ] {
        for key in [Key::Old, Key::New] {
            let u = unsigned(source, &unique(source), now());
            let out = cli_sign(dir.path(), &u, &secret(source, key));
            assert!(
                out.status.success(),
                "{source}: {}{}",
                stdout(&out),
                stderr(&out)
            );
            let printed = parse_cli_headers(&stdout(&out));
            assert!(!printed.is_empty(), "{source}: nothing printed");
            let req = Req {
                source,
                target: format!("/hooks/{source}"),
                headers: [u.headers.clone(), printed].concat(),
                body: u.body.clone(),
                kind: u.kind.clone(),
                id: u.id.clone(),
            };
            assert_runs(&server, &req, &format!("hookrouter sign, {key:?} secret"));
        }
    }
    // Signed with a secret the source does not have: refused.
    let u = unsigned("github", &unique("github"), now());
    let out = cli_sign(dir.path(), &u, "not-the-configured-secret");
    assert!(out.status.success(), "{}", stderr(&out));
    let req = Req {
        source: "github",
        target: "/hooks/github".to_owned(),
        headers: [u.headers.clone(), parse_cli_headers(&stdout(&out))].concat(),
        body: u.body.clone(),
        kind: u.kind,
        id: u.id,
    };
    assert_refused(&post(&server, &req), "hookrouter sign, unknown secret");
}

#[test]
fn cli_sign_exits_2_for_unknown_or_unsignable_providers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = write(dir.path(), "body.json", r#"{"type":1}"#);
    let body = body.to_str().expect("utf-8 path");
    for (provider, secret, why) in [
        ("gihtub", "s", "unknown provider"),
        ("discord", DISCORD_OLD_PUBLIC, "cannot sign"),
        ("mailgun", "key-mailgun-old", "cannot sign"),
        ("hmac", "s", "options"),
        // Standard Webhooks signs the message id: none given, nothing to sign.
        (
            "standard",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "message id",
        ),
    ] {
        let out = run(&[
            "sign",
            "--provider",
            provider,
            "--secret",
            secret,
            "--body",
            body,
        ]);
        assert_eq!(out.status.code(), Some(2), "{provider}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{provider}: {}", stdout(&out));
        assert!(
            stderr(&out).contains(why),
            "{provider}: expected {why:?} in {}",
            stderr(&out)
        );
    }
    let out = run(&[
        "sign",
        "--provider",
        "github",
        "--secret",
        "s",
        "--body",
        "/nonexistent/body.json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

// ---- Slack interactivity and slash commands ----

/// `form` as Slack sends it: a form body signed with `secret` now.
fn slack_form(form: &[u8], secret: &str) -> Req {
    let u = Unsigned {
        source: "slack",
        body: form.to_vec(),
        headers: pairs(&[FORM]),
        url: String::new(),
        at: now(),
        kind: String::new(),
        id: String::new(),
    };
    sign(&u, secret)
}

fn slack_interactive() -> (TempDir, Server) {
    start_fresh(
        |_| fixture("providers/slack_interactive.yaml"),
        crate::support::ServerOpts::admin,
    )
}

fn stored_events(server: &Server) -> Vec<serde_json::Value> {
    let resp = crate::support::admin_get(server, "/api/events", None);
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn button_form(value: &str, trigger_id: &str) -> Vec<u8> {
    let payload = serde_json::json!({
        "type": "block_actions",
        "trigger_id": trigger_id,
        "user": {"id": "U024BE7LH", "username": "ana"},
        "container": {"type": "message", "message_ts": "1548261231.000200"},
        "actions": [{
            "type": "button",
            "action_id": "approve",
            "value": value,
            "action_ts": "1548426417.840180"
        }]
    });
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
        .into_bytes()
}

const SLASH: &[u8] = b"token=gIkuvaNzQIHg97ATvDxqgjtO&team_id=T0001&channel_id=C2147483705&user_id=U2147483697&user_name=Steve&command=%2Fdeploy&text=api+prod&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2F1234%2F5678&trigger_id=13345224609.738474920.8088930838d88f008e0";

#[test]
fn slack_button_routes_on_block_actions_and_its_value() {
    let (_dir, server) = slack_interactive();
    let key = secret("slack", Key::Old);
    let resp = post(
        &server,
        &slack_form(&button_form("deploy-42", "111.222.aaa"), &key),
    );
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(resp.json()["id"], "111.222.aaa", "{resp:?}");
    assert!(
        server.wait_log("approved [deploy-42] by [U024BE7LH]", 1, WAIT),
        "the button never routed; log:\n{}",
        server.log()
    );
    assert!(server.wait_log("slack-event type=[block_actions] id=[111.222.aaa]", 1, WAIT));
    // Another button value is a block_actions event the rule's match refuses.
    let other = post(
        &server,
        &slack_form(&button_form("cancel-42", "333.444.bbb"), &key),
    );
    assert_eq!(other.status, 202, "{other:?}");
    assert!(server.wait_log("slack-event type=[block_actions] id=[333.444.bbb]", 1, WAIT));
    assert!(
        !server.log().contains("approved [cancel-42]"),
        "{}",
        server.log()
    );
    // A retry of the same click is a duplicate, not a second approval.
    let again = post(
        &server,
        &slack_form(&button_form("deploy-42", "111.222.aaa"), &key),
    );
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(server.log().matches("approved [deploy-42]").count(), 1);
}

#[test]
fn slack_slash_command_routes_on_slash_command_and_its_command() {
    let (_dir, server) = slack_interactive();
    let resp = post(&server, &slack_form(SLASH, &secret("slack", Key::Old)));
    assert_eq!(resp.status, 202, "{resp:?}");
    assert_eq!(
        resp.json()["id"],
        "13345224609.738474920.8088930838d88f008e0"
    );
    assert!(
        server.wait_log("deploy [api prod] from [U2147483697]", 1, WAIT),
        "the command never routed; log:\n{}",
        server.log()
    );
    assert!(
        server.wait_log(
            "slack-event type=[slash_command] id=[13345224609.738474920.8088930838d88f008e0]",
            1,
            WAIT
        ),
        "{}",
        server.log()
    );
}

#[test]
fn slack_forms_with_a_bad_signature_are_401_and_not_stored() {
    let (_dir, server) = slack_interactive();
    let unknown = secret("slack", Key::Unknown);
    for (what, form) in [
        ("button", button_form("deploy-42", "555.666.ccc")),
        ("slash command", SLASH.to_vec()),
        // Verification comes before parsing: a garbled payload is still 401.
        ("garbled payload", b"payload=%7Bnot+json".to_vec()),
    ] {
        assert_refused(&post(&server, &slack_form(&form, &unknown)), what);
        // The same bytes signed, then changed after signing.
        let tampered = slack_form(&form, &secret("slack", Key::Old))
            .with_body([form.as_slice(), b"&x=1"].concat());
        assert_refused(&post(&server, &tampered), &format!("{what}, tampered"));
    }
    assert_eq!(stored_events(&server), Vec::<serde_json::Value>::new());
    assert!(!server.log().contains("slack-event"), "{}", server.log());
}

#[test]
fn slack_payload_that_is_not_json_is_400_after_verification() {
    let (_dir, server) = slack_interactive();
    let resp = post(
        &server,
        &slack_form(b"payload=%7Bnot+json", &secret("slack", Key::Old)),
    );
    assert_eq!(resp.status, 400, "{resp:?}");
    let error = resp.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("`payload` is not JSON"), "{resp:?}");
    assert_eq!(stored_events(&server), Vec::<serde_json::Value>::new());
}
