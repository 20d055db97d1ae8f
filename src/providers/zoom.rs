//! Zoom: `x-zm-signature: v0=<hex>` and `x-zm-request-timestamp` (seconds),
//! HMAC-SHA256 of `v0:{ts}:{body}` keyed by the webhook secret token. Event
//! type `$.event`. Answers `endpoint.url_validation` with
//! `{plainToken, encryptedToken = hex(HMAC-SHA256(secret, plainToken))}`.
//!
//! Window: Zoom documents none; ±300 s by default, like Slack's identical
//! layout.
//!
//! Event id: none. Zoom sends no delivery id, and payload ids name the
//! meeting or user, which many distinct events share (`meeting.started` and
//! `meeting.ended` carry the same meeting uuid), so deduplicating on them
//! would drop real events. Without an id, dedup falls back to a hash of the
//! body, which is stable across Zoom's retries and unique per event because
//! the body carries `event_ts` in milliseconds.

use std::time::Duration;

use serde_json::Value;

use super::common::{self, Keys, V0Scheme};
use super::{Algorithm, Handshake, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

const SCHEME: V0Scheme = V0Scheme {
    signature: "x-zm-signature",
    timestamp: "x-zm-request-timestamp",
};

#[derive(Debug)]
struct Zoom {
    keys: Keys,
    tolerance: Duration,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Zoom {
        keys: Keys::utf8("zoom", &settings)?,
        tolerance: common::tolerance(&settings, DEFAULT_TOLERANCE),
    }))
}

impl Provider for Zoom {
    fn name(&self) -> &'static str {
        "zoom"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        SCHEME.verify(req, &self.keys, self.tolerance)
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/event")
    }

    /// Zoom expects the token encrypted with its current secret, which is the
    /// one that signed this request; the first secret is the fallback when
    /// none did (handshakes normally follow a successful `verify`).
    fn handshake(&self, req: &RawRequest<'_>, body: &Value) -> Option<Handshake> {
        if body.get("event").and_then(Value::as_str) != Some("endpoint.url_validation") {
            return None;
        }
        let plain = body
            .pointer("/payload/plainToken")
            .and_then(Value::as_str)?;
        let key = match SCHEME.matching_key(req, &self.keys) {
            Some(key) => key,
            None => self.keys.primary().ok()?,
        };
        let encrypted = common::mac(Algorithm::Sha256, key, &[plain.as_bytes()])?;
        Some(Handshake {
            status: 200,
            content_type: "application/json",
            body: serde_json::json!({
                "plainToken": plain,
                "encryptedToken": hex::encode(encrypted),
            })
            .to_string()
            .into_bytes(),
        })
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        SCHEME.sign(&self.keys, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::*;

    const VALIDATION: &[u8] = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    const ENCRYPTED: &str = "70c1f2e2e6ca2d39297490d1f9142c7d701415ea8e6151f6562a08fa657a40ff";

    #[test]
    fn basics() {
        check_basics(&build, SCHEME.signature);
        check_timestamp_header(&build, SCHEME.timestamp);
    }

    #[test]
    fn window_is_two_sided() {
        check_window(&build, 300);
    }

    #[test]
    fn url_validation_handshake() {
        let p = make(&build, &["secretValueTest"]);
        let headers = pairs(&[
            (SCHEME.timestamp, "1654503850"),
            (
                SCHEME.signature,
                "v0=f5919686e6aa295e87e8213e7bb6ba5a58d875168327422f06f14af15a0a2022",
            ),
        ]);
        assert_eq!(
            verify_at(p.as_ref(), &headers, VALIDATION, URL, 1_654_503_850),
            Ok(())
        );
        let reply = handshake(p.as_ref(), &headers, VALIDATION).expect("handshake");
        assert_eq!(
            (reply.status, reply.content_type),
            (200, "application/json")
        );
        let json: Value = serde_json::from_slice(&reply.body).expect("json");
        assert_eq!(json["plainToken"], "qgg8vlvZRS6UYooatFL8Aw");
        assert_eq!(json["encryptedToken"], ENCRYPTED);
    }

    #[test]
    fn handshake_uses_the_secret_that_signed() {
        let rotated = make(&build, &["old-secret", "secretValueTest"]);
        let signer = make(&build, &["secretValueTest"]);
        let headers = sign(signer.as_ref(), VALIDATION);
        let reply = handshake(rotated.as_ref(), &headers, VALIDATION).expect("handshake");
        let json: Value = serde_json::from_slice(&reply.body).expect("json");
        assert_eq!(json["encryptedToken"], ENCRYPTED);
        let unsigned = handshake(signer.as_ref(), &[], VALIDATION).expect("fallback");
        let json: Value = serde_json::from_slice(&unsigned.body).expect("json");
        assert_eq!(json["encryptedToken"], ENCRYPTED);
        assert_eq!(
            handshake(
                signer.as_ref(),
                &[],
                br#"{"event":"endpoint.url_validation"}"#
            ),
            None
        );
        assert_eq!(
            handshake(signer.as_ref(), &[], br#"{"event":"meeting.started"}"#),
            None
        );
    }

    #[test]
    fn type_and_no_id() {
        let p = make(&build, &[ALICE]);
        let body = br#"{"event":"meeting.started","event_ts":1,"payload":{"object":{"uuid":"u"}}}"#;
        assert_eq!(
            event_type(p.as_ref(), &[], body).as_deref(),
            Some("meeting.started")
        );
        assert_eq!(event_id(p.as_ref(), &[], body), None);
    }
}
