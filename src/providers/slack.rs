//! Slack: `X-Slack-Signature: v0=<hex>` and `X-Slack-Request-Timestamp`,
//! HMAC-SHA256 of `v0:{ts}:{body}` keyed by the signing secret's text (it
//! looks like hex but is not decoded). Window ±300 s by default, as Slack
//! documents.
//!
//! Event type: `$.event.type` for Events API callbacks, else `$.type`; event
//! id `$.event_id`. Answers the `url_verification` handshake by echoing the
//! challenge as JSON, which Slack accepts alongside plain text.

use std::time::Duration;

use serde_json::Value;

use super::common::{self, Keys, V0Scheme};
use super::{Handshake, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

const SCHEME: V0Scheme = V0Scheme {
    signature: "X-Slack-Signature",
    timestamp: "X-Slack-Request-Timestamp",
};

#[derive(Debug)]
struct Slack {
    keys: Keys,
    tolerance: Duration,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Slack {
        keys: Keys::utf8("slack", &settings)?,
        tolerance: common::tolerance(&settings, DEFAULT_TOLERANCE),
    }))
}

impl Provider for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        SCHEME.verify(req, &self.keys, self.tolerance)
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/event/type").or_else(|| common::json_str(body, "/type"))
    }

    fn event_id(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/event_id")
    }

    fn handshake(&self, _req: &RawRequest<'_>, body: &Value) -> Option<Handshake> {
        if body.get("type").and_then(Value::as_str) != Some("url_verification") {
            return None;
        }
        let challenge = body.get("challenge").and_then(Value::as_str)?;
        Some(Handshake {
            status: 200,
            content_type: "application/json",
            body: serde_json::json!({ "challenge": challenge })
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
    fn docs_vector_and_prefix() {
        let p = make(&build, &["8f742231b10e8888abcd99yyyzzz85a5"]);
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let sig = "a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        let headers = pairs(&[
            (SCHEME.timestamp, "1531420618"),
            (SCHEME.signature, &format!("v0={sig}")),
        ]);
        assert_eq!(
            verify_at(p.as_ref(), &headers, body, URL, 1_531_420_618),
            Ok(())
        );
        let bare = with(&headers, SCHEME.signature, Some(sig));
        assert_eq!(
            verify_at(p.as_ref(), &bare, body, URL, 1_531_420_618),
            Err(VerifyError::Malformed("signature lacks its prefix"))
        );
    }

    #[test]
    fn url_verification_handshake() {
        let p = make(&build, &[ALICE]);
        let body = br#"{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
        let reply = handshake(p.as_ref(), &[], body).expect("handshake");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.content_type, "application/json");
        let json: Value = serde_json::from_slice(&reply.body).expect("json");
        assert_eq!(
            json["challenge"],
            "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
        );
        assert_eq!(
            handshake(p.as_ref(), &[], br#"{"type":"url_verification"}"#),
            None
        );
        assert_eq!(
            handshake(p.as_ref(), &[], br#"{"type":"event_callback"}"#),
            None
        );
    }

    #[test]
    fn type_and_id() {
        let p = make(&build, &[ALICE]);
        let callback =
            br#"{"type":"event_callback","event_id":"Ev123","event":{"type":"app_mention"}}"#;
        assert_eq!(
            event_type(p.as_ref(), &[], callback).as_deref(),
            Some("app_mention")
        );
        assert_eq!(
            event_id(p.as_ref(), &[], callback).as_deref(),
            Some("Ev123")
        );
        let other = br#"{"type":"block_actions"}"#;
        assert_eq!(
            event_type(p.as_ref(), &[], other).as_deref(),
            Some("block_actions")
        );
        assert_eq!(event_id(p.as_ref(), &[], other), None);
    }
}
