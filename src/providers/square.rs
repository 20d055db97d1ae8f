//! Square: `x-square-hmacsha256-signature`, base64 HMAC-SHA256 of the
//! notification URL followed by the raw body, keyed by the subscription's
//! signature key. Event type `$.type`, event id `$.event_id`.
//!
//! The URL must be the one registered with Square, byte for byte; it arrives
//! as `RawRequest::url`, which the caller fills from the source's `url:`
//! setting. The legacy SHA-1 `x-square-signature` is not accepted.

use serde_json::Value;

use super::common::{self, Keys};
use super::{Algorithm, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const SIGNATURE: &str = "x-square-hmacsha256-signature";

#[derive(Debug)]
struct Square {
    keys: Keys,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Square {
        keys: Keys::utf8("square", &settings)?,
    }))
}

impl Provider for Square {
    fn name(&self) -> &'static str {
        "square"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let signature = common::decode_base64(common::header(req, SIGNATURE)?)?;
        self.keys.verify(
            Algorithm::Sha256,
            &[req.url.as_bytes(), req.body],
            &[signature],
        )
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/type")
    }

    fn event_id(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/event_id")
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        let mac = self
            .keys
            .sign(Algorithm::Sha256, &[msg.url.as_bytes(), msg.body])?;
        Ok(common::headers([(SIGNATURE, common::encode_base64(&mac))]))
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
    fn sdk_vector_and_url_binding() {
        let p = make(&build, &["signature-key"]);
        let headers = pairs(&[(SIGNATURE, "Cxt7+aTi4rKgcA0bC4g9EHdVtLSDWdqccmL5MvihU4U=")]);
        let body = br#"{"data":{"type":"webhooks","id":">id<"}}"#;
        let url = "https://webhook.site/webhooks";
        assert_eq!(verify_at(p.as_ref(), &headers, body, url, 0), Ok(()));
        for other in [
            "https://webhook.site/webhooks/",
            "http://webhook.site/webhooks",
            "",
        ] {
            assert_eq!(
                verify_at(p.as_ref(), &headers, body, other, 0),
                Err(VerifyError::Mismatch),
                "{other:?}"
            );
        }
    }

    #[test]
    fn type_and_id() {
        let p = make(&build, &[ALICE]);
        let body = br#"{"type":"payment.updated","event_id":"ac3ac95b"}"#;
        assert_eq!(
            event_type(p.as_ref(), &[], body).as_deref(),
            Some("payment.updated")
        );
        assert_eq!(event_id(p.as_ref(), &[], body).as_deref(), Some("ac3ac95b"));
    }
}
