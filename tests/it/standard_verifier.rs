//! A downstream Standard Webhooks verifier, written from the specification
//! alone (it shares no code with hookrouter's signer), to check what the
//! `http` action's `sign:` option sends.
//!
//! The scheme: the secret is `whsec_` + base64 of the key; the signed content
//! is `{webhook-id}.{webhook-timestamp}.{body}`; `webhook-signature` is a
//! space-separated list of `version,signature` entries, of which any `v1`
//! entry equal to base64(HMAC-SHA256(key, content)) passes; the timestamp
//! (unix seconds) must lie within five minutes of now, either way.

#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// How far the timestamp may be from now, in seconds, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// Why a request was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    MissingHeader(&'static str),
    BadSecret,
    BadTimestamp,
    /// The timestamp is outside the tolerance; the signature was not checked.
    Expired,
    NoMatchingSignature,
}

/// Verify a request given its headers (names matched case-insensitively),
/// raw body, the configured secret and the current unix time.
///
/// # Errors
/// Why the request does not verify.
pub fn verify(
    secret: &str,
    headers: &[(String, String)],
    body: &[u8],
    now: i64,
) -> Result<(), Rejection> {
    let header = |name: &'static str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .ok_or(Rejection::MissingHeader(name))
    };
    let id = header("webhook-id")?;
    let ts_text = header("webhook-timestamp")?;
    let signatures = header("webhook-signature")?;
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| Rejection::BadSecret)?;
    let ts: i64 = ts_text
        .trim()
        .parse()
        .map_err(|_| Rejection::BadTimestamp)?;
    if (now - ts).abs() > TOLERANCE_SECS {
        return Err(Rejection::Expired);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| Rejection::BadSecret)?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(ts_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    let matched = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .any(|sig| constant_time_eq(&sig, &expected));
    if matched {
        Ok(())
    } else {
        Err(Rejection::NoMatchingSignature)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
