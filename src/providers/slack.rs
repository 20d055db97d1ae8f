//! Slack: `X-Slack-Signature: v0=<hex>` and `X-Slack-Request-Timestamp`,
//! HMAC-SHA256 of `v0:{ts}:{body}` keyed by the signing secret's text (it
//! looks like hex but is not decoded). Window ±300 s by default, as Slack
//! documents.
//!
//! Event type: `$.event.type` for Events API callbacks, else `$.type`; event
//! id `$.event_id`. Answers the `url_verification` handshake by echoing the
//! challenge as JSON, which Slack accepts alongside plain text.
//!
//! Interactivity (buttons, modals, shortcuts) arrives as a form whose
//! `payload` field holds JSON: it is parsed into `body.payload` (after the
//! signature, which covers the raw form), its type is `$.payload.type` and
//! its id `$.payload.trigger_id`, else `{user.id}:{actions[0].action_ts}`.
//! A slash command is a form with `command`: type `slash_command`, id
//! `$.trigger_id`. Without any of these ids the envelope falls back to a hash
//! of the body, which Slack's retries repeat byte for byte.

use std::time::Duration;

use serde_json::Value;

use super::common::{self, Keys, V0Scheme};
use super::{Handshake, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::body::{Body, BodyError};
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

    fn shape_body(&self, req: &RawRequest<'_>, body: Body) -> Result<Body, BodyError> {
        if !is_form(req) || !body.get("payload").is_some_and(Value::is_string) {
            return Ok(body);
        }
        let mut value = body.into_value();
        if let Some(field) = value.get_mut("payload") {
            let parsed = field
                .as_str()
                .map(serde_json::from_str::<Value>)
                .transpose()
                .map_err(|e| {
                    BodyError::Malformed(format!("form field `payload` is not JSON: {e}"))
                })?;
            if let Some(parsed) = parsed {
                *field = parsed;
            }
        }
        Ok(Body::from_value(value))
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/event/type")
            .or_else(|| common::json_str(body, "/payload/type"))
            .or_else(|| common::json_str(body, "/type"))
            .or_else(|| {
                body.get("command")
                    .is_some_and(Value::is_string)
                    .then(|| "slash_command".to_owned())
            })
    }

    fn event_id(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        if let Some(payload) = body.get("payload").filter(|p| p.is_object()) {
            return common::json_str(payload, "/trigger_id").or_else(|| {
                let user = common::json_str(payload, "/user/id")?;
                let at = common::json_str(payload, "/actions/0/action_ts")?;
                Some(format!("{user}:{at}"))
            });
        }
        if body.get("command").is_some_and(Value::is_string) {
            return common::json_str(body, "/trigger_id");
        }
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

/// Slack posts interactivity and slash commands as forms; a JSON body's
/// `payload` is left as sent.
fn is_form(req: &RawRequest<'_>) -> bool {
    req.header("content-type").is_some_and(|ct| {
        ct.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    })
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

#[cfg(test)]
mod forms {
    use super::*;
    use crate::providers::testkit::*;

    /// The body `admit` would build from `form`, with its type and id.
    fn shaped(
        content_type: &str,
        form: &[u8],
    ) -> Result<(Value, Option<String>, Option<String>), BodyError> {
        let p = make(&build, &[ALICE]);
        let map = header_map(&pairs(&[("Content-Type", content_type)]));
        let req = RawRequest {
            url: URL,
            headers: &map,
            body: form,
            now: NOW,
        };
        let parsed = crate::body::parse(Some(content_type), form)?;
        let body = p.shape_body(&req, parsed)?.into_value();
        let kind = p.event_type(&req, &body);
        let id = p.event_id(&req, &body);
        Ok((body, kind, id))
    }

    fn form(payload: &str) -> Vec<u8> {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", payload)
            .finish()
            .into_bytes()
    }

    const FORM: &str = "application/x-www-form-urlencoded; charset=utf-8";

    #[test]
    fn payload_becomes_json_with_its_type_and_trigger_id() {
        let payload = r#"{"type":"block_actions","trigger_id":"13345224609.738474920.8088930838d88f008e0","user":{"id":"U1"},"actions":[{"action_id":"approve","value":"deploy-42","action_ts":"1548426417.840180"}]}"#;
        let (body, kind, id) = shaped(FORM, &form(payload)).expect("parses");
        assert_eq!(body["payload"]["actions"][0]["value"], "deploy-42");
        assert_eq!(kind.as_deref(), Some("block_actions"));
        assert_eq!(
            id.as_deref(),
            Some("13345224609.738474920.8088930838d88f008e0")
        );
    }

    #[test]
    fn payload_without_trigger_id_uses_user_and_action_time() {
        let payload = r#"{"type":"block_actions","user":{"id":"U1"},"actions":[{"action_ts":"1548426417.840180"}]}"#;
        let (_, kind, id) = shaped(FORM, &form(payload)).expect("parses");
        assert_eq!(kind.as_deref(), Some("block_actions"));
        assert_eq!(id.as_deref(), Some("U1:1548426417.840180"));
        let (_, kind, id) = shaped(FORM, &form(r#"{"type":"view_closed"}"#)).expect("parses");
        assert_eq!(kind.as_deref(), Some("view_closed"));
        assert_eq!(id, None);
    }

    #[test]
    fn payload_that_is_not_json_is_malformed() {
        match shaped(FORM, &form("{not json")) {
            Err(BodyError::Malformed(why)) => assert!(why.contains("`payload`"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn json_bodies_keep_a_payload_string() {
        let (body, kind, _) = shaped(
            "application/json",
            br#"{"type":"event_callback","payload":"{\"type\":\"x\"}"}"#,
        )
        .expect("parses");
        assert_eq!(body["payload"], r#"{"type":"x"}"#);
        assert_eq!(kind.as_deref(), Some("event_callback"));
    }

    #[test]
    fn slash_command_type_and_id() {
        let body = b"command=%2Fdeploy&text=api+prod&user_id=U1&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let (body, kind, id) = shaped(FORM, body).expect("parses");
        assert_eq!(body["command"], "/deploy");
        assert_eq!(kind.as_deref(), Some("slash_command"));
        assert_eq!(
            id.as_deref(),
            Some("398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
        );
    }
}
