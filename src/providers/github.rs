//! GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw body
//! keyed by the secret's UTF-8 bytes. Event type is `X-GitHub-Event`, refined
//! by `$.action`; event id is the `X-GitHub-Delivery` GUID.
//!
//! Only the SHA-256 header is accepted: GitHub still sends the legacy SHA-1
//! `X-Hub-Signature`, and accepting it would let the weaker MAC stand in for
//! the stronger one. Nothing time-based is signed, so there is no window;
//! replays are caught by dedup on the delivery id.

use serde_json::Value;

use super::common::{self, Keys};
use super::{Algorithm, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const SIGNATURE: &str = "X-Hub-Signature-256";
const EVENT: &str = "X-GitHub-Event";
const DELIVERY: &str = "X-GitHub-Delivery";
const PREFIX: &str = "sha256=";

#[derive(Debug)]
struct GitHub {
    keys: Keys,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(GitHub {
        keys: Keys::utf8("github", &settings)?,
    }))
}

impl Provider for GitHub {
    fn name(&self) -> &'static str {
        "github"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let value = common::header(req, SIGNATURE)?;
        let signature = common::decode_hex(common::strip_prefix(value, PREFIX)?)?;
        self.keys
            .verify(Algorithm::Sha256, &[req.body], &[signature])
    }

    fn event_type(&self, req: &RawRequest<'_>, body: &Value) -> Option<String> {
        let event = req.header(EVENT)?;
        Some(match body.get("action").and_then(Value::as_str) {
            Some(action) => format!("{event}.{action}"),
            None => event.to_owned(),
        })
    }

    fn event_id(&self, req: &RawRequest<'_>, _body: &Value) -> Option<String> {
        req.header(DELIVERY).map(str::to_owned)
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        let mac = self.keys.sign(Algorithm::Sha256, &[msg.body])?;
        Ok(common::headers([
            (SIGNATURE, format!("{PREFIX}{}", hex::encode(mac))),
            (DELIVERY, msg.id.to_owned()),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::*;

    #[test]
    fn basics() {
        check_basics(&build, SIGNATURE);
    }

    #[test]
    fn docs_vector() {
        let p = make(&build, &["It's a Secret to Everybody"]);
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let headers = pairs(&[(SIGNATURE, sig)]);
        assert_eq!(verify(p.as_ref(), &headers, b"Hello, World!"), Ok(()));
        assert_eq!(get(&sign(p.as_ref(), b"Hello, World!"), SIGNATURE), sig);
        let upper = pairs(&[(SIGNATURE, &sig.to_uppercase().replace("SHA256=", "sha256="))]);
        assert_eq!(verify(p.as_ref(), &upper, b"Hello, World!"), Ok(()));
    }

    #[test]
    fn requires_prefix_and_sha256_header() {
        let p = make(&build, &["It's a Secret to Everybody"]);
        let hex = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            verify(p.as_ref(), &pairs(&[(SIGNATURE, hex)]), b"Hello, World!"),
            Err(VerifyError::Malformed("signature lacks its prefix"))
        );
        let legacy = pairs(&[(
            "X-Hub-Signature",
            "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59",
        )]);
        assert_eq!(
            verify(p.as_ref(), &legacy, b"Hello, World!"),
            Err(VerifyError::MissingHeader(SIGNATURE))
        );
        let odd = pairs(&[(SIGNATURE, "sha256=757")]);
        assert!(matches!(
            verify(p.as_ref(), &odd, b"x"),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn type_and_id() {
        let p = make(&build, &[ALICE]);
        let headers = pairs(&[(EVENT, "pull_request"), (DELIVERY, "72d3162e")]);
        assert_eq!(
            event_type(p.as_ref(), &headers, br#"{"action":"opened"}"#).as_deref(),
            Some("pull_request.opened")
        );
        assert_eq!(
            event_type(p.as_ref(), &headers, br#"{"action":7}"#).as_deref(),
            Some("pull_request")
        );
        assert_eq!(
            event_type(p.as_ref(), &headers, b"not json").as_deref(),
            Some("pull_request")
        );
        assert_eq!(event_type(p.as_ref(), &[], br#"{"action":"opened"}"#), None);
        assert_eq!(
            event_id(p.as_ref(), &headers, b"{}").as_deref(),
            Some("72d3162e")
        );
        assert_eq!(get(&sign(p.as_ref(), BODY), DELIVERY), "delivery-1");
    }
}
