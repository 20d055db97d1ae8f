//! Runs every case of the external webhook test vectors
//! (`tests/fixtures/vectors.json`, from the providers' docs and SDK test
//! suites) through the provider adapters: valid cases must verify, invalid
//! ones must fail without being called expired, expired ones must fail with
//! `VerifyError::Expired`. Also checks the handshakes, event types and ids
//! the vectors pin down, and that `sign` output verifies for every valid case
//! a provider can sign.
//!
//! The case count is asserted so that no case can be skipped silently.

use std::collections::BTreeMap;

use hookrouter::event::RawRequest;
use hookrouter::providers::{
    self, Algorithm, Encoding, HmacOptions, Provider, ProviderSettings, Secret, VerifyError,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vectors.json");
const EXPECTED_CASES: usize = 134;
const EXPECTED_BY_OUTCOME: [(&str, usize); 3] = [("valid", 43), ("invalid", 83), ("expired", 8)];

struct Case {
    id: String,
    vector_provider: String,
    kind: &'static str,
    settings: ProviderSettings,
    url: String,
    headers: HeaderMap,
    body: Vec<u8>,
    now: i64,
    expect: String,
}

impl Case {
    fn request(&self) -> RawRequest<'_> {
        RawRequest {
            url: &self.url,
            headers: &self.headers,
            body: &self.body,
            now: self.now,
        }
    }

    fn provider(&self) -> Box<dyn Provider> {
        providers::build(self.kind, self.settings.clone())
            .unwrap_or_else(|e| panic!("{}: build {}: {e}", self.id, self.kind))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The generic `hmac` provider configured as these senders document.
fn generic(header: &str, algorithm: Algorithm, prefix: &str) -> HmacOptions {
    HmacOptions {
        header: header.to_owned(),
        algorithm,
        encoding: Encoding::Hex,
        prefix: prefix.to_owned(),
        timestamp_header: None,
    }
}

fn kind_and_options(provider: &str) -> (&'static str, Option<HmacOptions>) {
    match provider {
        "standard-webhooks" | "svix" => ("standard", None),
        "bitbucket" => (
            "hmac",
            Some(generic("X-Hub-Signature", Algorithm::Sha256, "sha256=")),
        ),
        "intercom" => (
            "hmac",
            Some(generic("X-Hub-Signature", Algorithm::Sha1, "sha1=")),
        ),
        "sentry" => (
            "hmac",
            Some(generic("Sentry-Hook-Signature", Algorithm::Sha256, "")),
        ),
        other => {
            let kind = providers::KINDS
                .iter()
                .find(|kind| **kind == other)
                .unwrap_or_else(|| panic!("vector provider `{other}` has no adapter"));
            (kind, None)
        }
    }
}

fn text<'a>(case: &'a Value, field: &str) -> &'a str {
    case[field]
        .as_str()
        .unwrap_or_else(|| panic!("case field `{field}` is not a string: {case}"))
}

fn load() -> Vec<Case> {
    let raw = std::fs::read_to_string(FIXTURE).expect("read vectors.json");
    let cases: Vec<Value> = serde_json::from_str(&raw).expect("parse vectors.json");
    cases
        .iter()
        .map(|case| {
            let id = text(case, "id").to_owned();
            let vector_provider = text(case, "provider").to_owned();
            let (kind, hmac) = kind_and_options(&vector_provider);
            let secrets = match case.get("secrets").and_then(Value::as_array) {
                Some(list) => list
                    .iter()
                    .map(|s| Secret::new(s.as_str().expect("secret")))
                    .collect(),
                None => vec![Secret::new(text(case, "secret"))],
            };
            let mut headers = HeaderMap::new();
            for (name, value) in case["headers"].as_object().expect("headers") {
                headers.append(
                    HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                    HeaderValue::from_str(value.as_str().expect("header value"))
                        .expect("header value"),
                );
            }
            Case {
                settings: ProviderSettings {
                    secrets,
                    hmac,
                    ..ProviderSettings::default()
                },
                url: text(case, "url").to_owned(),
                headers,
                body: text(case, "body").as_bytes().to_vec(),
                now: case["now"].as_i64().unwrap_or(0),
                expect: text(case, "expect").to_owned(),
                id,
                vector_provider,
                kind,
            }
        })
        .collect()
}

#[test]
fn every_vector_case() {
    let cases = load();
    let mut failures = Vec::new();
    let mut ran: BTreeMap<&str, usize> = BTreeMap::new();

    for case in &cases {
        let result = case.provider().verify(&case.request());
        let passed = match case.expect.as_str() {
            "valid" => result.is_ok(),
            "invalid" => matches!(&result, Err(e) if *e != VerifyError::Expired),
            "expired" => result == Err(VerifyError::Expired),
            other => panic!("{}: unknown expectation `{other}`", case.id),
        };
        println!(
            "{:<8} {:<50} {:<18} expect {:<8} got {:?}",
            if passed { "ok" } else { "FAILED" },
            case.id,
            case.vector_provider,
            case.expect,
            result
        );
        if !passed {
            failures.push(format!(
                "{} ({}): expected {}, got {result:?}",
                case.id, case.kind, case.expect
            ));
        }
        *ran.entry(case.expect.as_str()).or_default() += 1;
    }

    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(cases.len(), EXPECTED_CASES, "number of vector cases run");
    for (outcome, count) in EXPECTED_BY_OUTCOME {
        assert_eq!(
            ran.get(outcome).copied().unwrap_or(0),
            count,
            "{outcome} cases run"
        );
    }
}

fn case<'a>(cases: &'a [Case], id: &str) -> &'a Case {
    cases
        .iter()
        .find(|case| case.id == id)
        .unwrap_or_else(|| panic!("no vector case {id}"))
}

#[test]
fn handshakes() {
    let cases = load();

    let zoom = case(&cases, "zoom-url-validation-event");
    let reply = zoom
        .provider()
        .handshake(&zoom.request(), &zoom.json())
        .unwrap_or_else(|| panic!("{}: no handshake", zoom.id));
    assert_eq!(
        (reply.status, reply.content_type),
        (200, "application/json"),
        "{}",
        zoom.id
    );
    let json: Value = serde_json::from_slice(&reply.body).expect("handshake json");
    assert_eq!(json["plainToken"], "qgg8vlvZRS6UYooatFL8Aw", "{}", zoom.id);
    assert_eq!(
        json["encryptedToken"], "70c1f2e2e6ca2d39297490d1f9142c7d701415ea8e6151f6562a08fa657a40ff",
        "{}",
        zoom.id
    );

    let discord = case(&cases, "discord-ping");
    let reply = discord
        .provider()
        .handshake(&discord.request(), &discord.json())
        .unwrap_or_else(|| panic!("{}: no handshake", discord.id));
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (200, &br#"{"type":1}"#[..]),
        "{}",
        discord.id
    );
}

#[test]
fn event_types_and_ids() {
    let cases = load();
    let expected: [(&str, Option<&str>, Option<&str>); 15] = [
        (
            "github-docs-hello-world",
            Some("ping"),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ),
        (
            "standardwebhooks-sign-vector",
            None,
            Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ),
        (
            "svix-branded-headers",
            None,
            Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ),
        (
            "stripe-dotnet-event-fixture",
            Some("customer.created"),
            Some("evt_123"),
        ),
        ("shopify-app-valid-new-secret", Some("orders/create"), None),
        ("gitlab-token-match", Some("push"), None),
        ("twilio-form-params", None, Some("CA1234567890ABCDE")),
        (
            "square-test-notification",
            Some("webhooks.test_notification"),
            Some("ac3ac95b-f97d-458c-a6e6-18981597e05f"),
        ),
        (
            "pagerduty-go-valid",
            Some("incident.priority_updated"),
            Some("01BWDWL3NYY7LUFPZCC28QUCMK"),
        ),
        (
            "paddle-standard-payload",
            Some("customer.created"),
            Some("evt_01hs0tqfme2xwb2hvwv87p8y3w"),
        ),
        ("zoom-meeting-started", Some("meeting.started"), None),
        ("discord-ping", Some("ping"), Some("1234567890123456780")),
        (
            "linear-comment-create",
            Some("Comment.create"),
            Some("234d1a4e-b617-4388-90fe-adc3633d6b72"),
        ),
        (
            "mailgun-php-good",
            Some("delivered"),
            Some("5egbgr1vjgqxtrnp65xfznchgdccwh5d6i09vijqi3whgowmn6"),
        ),
        ("bitbucket-repo-push", None, None),
    ];
    for (id, kind, event_id) in expected {
        let case = case(&cases, id);
        let provider = case.provider();
        let (req, body) = (case.request(), case.json());
        assert_eq!(
            provider.event_type(&req, &body).as_deref(),
            kind,
            "{id}: event type"
        );
        assert_eq!(
            provider.event_id(&req, &body).as_deref(),
            event_id,
            "{id}: event id"
        );
    }
}

/// `sign` with the case's settings, URL and time produces headers its own
/// provider accepts, for every valid case whose scheme can sign.
#[test]
fn sign_round_trips_on_vector_inputs() {
    let cases = load();
    let mut signed = 0;
    for case in cases.iter().filter(|case| case.expect == "valid") {
        let now = if case.now == 0 {
            1_700_000_000
        } else {
            case.now
        };
        let headers = match providers::sign(
            case.kind,
            &case.settings,
            &case.body,
            "sign-test-id",
            now,
            &case.url,
        ) {
            Ok(headers) => headers,
            Err(e) => {
                assert!(
                    matches!(case.kind, "discord" | "mailgun") || case.id.contains("v1a"),
                    "{}: cannot sign: {e}",
                    case.id
                );
                continue;
            }
        };
        let mut map = HeaderMap::new();
        for (name, value) in &headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("signed header name"),
                HeaderValue::from_str(value).expect("signed header value"),
            );
        }
        let req = RawRequest {
            url: &case.url,
            headers: &map,
            body: &case.body,
            now,
        };
        // Linear judges the body's own signed timestamp, not the signing time.
        let req = match case.kind {
            "linear" => RawRequest {
                now: case.now,
                ..req
            },
            _ => req,
        };
        assert_eq!(
            case.provider().verify(&req),
            Ok(()),
            "{}: sign → verify",
            case.id
        );
        signed += 1;
    }
    assert!(signed >= 35, "only {signed} valid cases were signed");
}
