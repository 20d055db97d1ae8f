//! Test-only harness for provider adapters: request builders around
//! `RawRequest`/`Outgoing`, fixed secrets and clock, and the checks every
//! signing adapter must pass (round trip, rotation, junk headers, window,
//! timestamp format), so each adapter's tests state only what is particular
//! to it.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use crate::event::RawRequest;
use crate::providers::{Outgoing, Provider, ProviderSettings, Secret, VerifyError};

/// How a test builds the adapter under test from settings.
pub(crate) type Build<'a> = &'a dyn Fn(ProviderSettings) -> Result<Box<dyn Provider>, String>;

pub(crate) const URL: &str = "https://hooks.example.com/in?x=1";
pub(crate) const NOW: i64 = 1_700_000_000;
pub(crate) const BODY: &[u8] = br#"{"type":"demo.created","id":"evt_1","action":"opened"}"#;
/// Secrets that are valid as raw text and as base64 alike, so one set of
/// checks serves every HMAC scheme.
pub(crate) const ALICE: &str = "YWxpY2Utc2VjcmV0";
pub(crate) const BOB: &str = "Ym9iLXNlY3JldCEh";

pub(crate) fn settings(secrets: &[&str]) -> ProviderSettings {
    ProviderSettings {
        secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
        ..ProviderSettings::default()
    }
}

pub(crate) fn make(build: Build<'_>, secrets: &[&str]) -> Box<dyn Provider> {
    build(settings(secrets)).unwrap_or_else(|e| panic!("build: {e}"))
}

pub(crate) fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

pub(crate) fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

pub(crate) fn verify_at(
    p: &dyn Provider,
    headers: &[(String, String)],
    body: &[u8],
    url: &str,
    now: i64,
) -> Result<(), VerifyError> {
    let map = header_map(headers);
    p.verify(&RawRequest {
        url,
        headers: &map,
        body,
        now,
    })
}

pub(crate) fn verify(
    p: &dyn Provider,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), VerifyError> {
    verify_at(p, headers, body, URL, NOW)
}

pub(crate) fn sign_at(p: &dyn Provider, body: &[u8], url: &str, now: i64) -> Vec<(String, String)> {
    p.sign(&Outgoing {
        url,
        body,
        id: "delivery-1",
        now,
    })
    .expect("sign")
}

pub(crate) fn sign(p: &dyn Provider, body: &[u8]) -> Vec<(String, String)> {
    sign_at(p, body, URL, NOW)
}

/// `headers` with `name` (case-insensitive) set to `value`, or removed
/// when `value` is `None`.
pub(crate) fn with(
    headers: &[(String, String)],
    name: &str,
    value: Option<&str>,
) -> Vec<(String, String)> {
    let mut out: Vec<_> = headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
        .cloned()
        .collect();
    if let Some(value) = value {
        out.push((name.to_owned(), value.to_owned()));
    }
    out
}

pub(crate) fn get<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no header {name}"))
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

pub(crate) fn event_type(
    p: &dyn Provider,
    headers: &[(String, String)],
    body: &[u8],
) -> Option<String> {
    let map = header_map(headers);
    p.event_type(
        &RawRequest {
            url: URL,
            headers: &map,
            body,
            now: NOW,
        },
        &json(body),
    )
}

pub(crate) fn event_id(
    p: &dyn Provider,
    headers: &[(String, String)],
    body: &[u8],
) -> Option<String> {
    let map = header_map(headers);
    p.event_id(
        &RawRequest {
            url: URL,
            headers: &map,
            body,
            now: NOW,
        },
        &json(body),
    )
}

pub(crate) fn handshake(
    p: &dyn Provider,
    headers: &[(String, String)],
    body: &[u8],
) -> Option<crate::providers::Handshake> {
    let map = header_map(headers);
    p.handshake(
        &RawRequest {
            url: URL,
            headers: &map,
            body,
            now: NOW,
        },
        &json(body),
    )
}

/// Signed by the first secret verifies; a changed body, another secret, a
/// missing, repeated or garbled signature header fail; with two secrets
/// configured the second one still verifies (rotation).
pub(crate) fn check_basics(build: Build<'_>, signature_header: &str) {
    let alice = make(build, &[ALICE]);
    let kind = alice.name();
    let bob = make(build, &[BOB]);
    let rotated = make(build, &[BOB, ALICE]);
    let signed = sign(alice.as_ref(), BODY);

    assert_eq!(
        verify(alice.as_ref(), &signed, BODY),
        Ok(()),
        "{kind}: round trip"
    );
    assert_eq!(
        verify(rotated.as_ref(), &signed, BODY),
        Ok(()),
        "{kind}: rotation"
    );
    assert_eq!(
        verify(bob.as_ref(), &signed, BODY),
        Err(VerifyError::Mismatch),
        "{kind}: wrong secret"
    );
    let mut tampered = BODY.to_vec();
    tampered.push(b' ');
    assert_eq!(
        verify(alice.as_ref(), &signed, &tampered),
        Err(VerifyError::Mismatch),
        "{kind}: tampered body"
    );
    assert!(
        matches!(
            verify(alice.as_ref(), &with(&signed, signature_header, None), BODY),
            Err(VerifyError::MissingHeader(_))
        ),
        "{kind}: missing signature"
    );
    let junk = [
        "",
        " ",
        "=",
        ",",
        ";",
        "v1=",
        "v1,",
        "sha256=",
        "sha256=zz",
        "sha256=abc",
        "v0=a",
        "t=1,v1=xyz",
        "ts=1;h1=zz",
        "%%%",
        "====",
    ];
    for junk in junk {
        let bad = with(&signed, signature_header, Some(junk));
        assert!(
            verify(alice.as_ref(), &bad, BODY).is_err(),
            "{kind}: junk {junk:?}"
        );
    }
    let mut twice = signed.clone();
    twice.push((
        signature_header.to_owned(),
        get(&signed, signature_header).to_owned(),
    ));
    assert_eq!(
        verify(alice.as_ref(), &twice, BODY),
        Err(VerifyError::Malformed("header repeated")),
        "{kind}: repeated header"
    );
}

/// Exactly `window` seconds away in either direction passes, one second
/// more is `Expired`, and a configured tolerance replaces the default.
pub(crate) fn check_window(build: Build<'_>, window: i64) {
    let p = make(build, &[ALICE]);
    let kind = p.name();
    let signed = sign(p.as_ref(), BODY);
    let at = |offset: i64| verify_at(p.as_ref(), &signed, BODY, URL, NOW + offset);
    assert_eq!(at(window), Ok(()), "{kind}: just inside, past");
    assert_eq!(at(-window), Ok(()), "{kind}: just inside, future");
    assert_eq!(
        at(window + 1),
        Err(VerifyError::Expired),
        "{kind}: just outside, past"
    );
    assert_eq!(
        at(-window - 1),
        Err(VerifyError::Expired),
        "{kind}: just outside, future"
    );

    let mut wide = settings(&[ALICE]);
    wide.tolerance = Some(std::time::Duration::from_secs(3600));
    let wide = build(wide).expect("build");
    let now = NOW + 3600;
    assert_eq!(
        verify_at(wide.as_ref(), &signed, BODY, URL, now),
        Ok(()),
        "{kind}: wider"
    );
    assert_eq!(
        verify_at(wide.as_ref(), &signed, BODY, URL, now + 1),
        Err(VerifyError::Expired),
        "{kind}: wider, outside"
    );
}

/// A separate timestamp header refuses anything but digits.
pub(crate) fn check_timestamp_header(build: Build<'_>, timestamp_header: &str) {
    let p = make(build, &[ALICE]);
    let kind = p.name();
    let signed = sign(p.as_ref(), BODY);
    for junk in [
        "abc",
        "-1",
        "+1700000000",
        "1700000000.0",
        "1e9",
        "99999999999999999999",
    ] {
        let bad = with(&signed, timestamp_header, Some(junk));
        assert!(
            matches!(
                verify(p.as_ref(), &bad, BODY),
                Err(VerifyError::Malformed(_))
            ),
            "{kind}: timestamp {junk:?}"
        );
    }
    assert!(
        matches!(
            verify(p.as_ref(), &with(&signed, timestamp_header, None), BODY),
            Err(VerifyError::MissingHeader(_))
        ),
        "{kind}: missing timestamp"
    );
}
