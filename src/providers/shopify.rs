//! Shopify: `X-Shopify-Hmac-Sha256`, base64 HMAC-SHA256 of the raw body keyed
//! by the app's client secret. Event type `X-Shopify-Topic`
//! (`orders/create`), event id `X-Shopify-Webhook-Id`.
//!
//! Nothing time-based is signed, so there is no window; rotation is the
//! verifier trying the new secret and the old one, as shopify_app does.

use serde_json::Value;

use super::common::{self, Keys};
use super::{Algorithm, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const SIGNATURE: &str = "X-Shopify-Hmac-Sha256";
const TOPIC: &str = "X-Shopify-Topic";
const WEBHOOK_ID: &str = "X-Shopify-Webhook-Id";

#[derive(Debug)]
struct Shopify {
    keys: Keys,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Shopify {
        keys: Keys::utf8("shopify", &settings)?,
    }))
}

impl Provider for Shopify {
    fn name(&self) -> &'static str {
        "shopify"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let signature = common::decode_base64(common::header(req, SIGNATURE)?)?;
        self.keys
            .verify(Algorithm::Sha256, &[req.body], &[signature])
    }

    fn event_type(&self, req: &RawRequest<'_>, _body: &Value) -> Option<String> {
        req.header(TOPIC).map(str::to_owned)
    }

    fn event_id(&self, req: &RawRequest<'_>, _body: &Value) -> Option<String> {
        req.header(WEBHOOK_ID).map(str::to_owned)
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        let mac = self.keys.sign(Algorithm::Sha256, &[msg.body])?;
        Ok(common::headers([
            (SIGNATURE, common::encode_base64(&mac)),
            (WEBHOOK_ID, msg.id.to_owned()),
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
    fn shopify_app_vectors() {
        let p = make(&build, &["secret", "old_secret"]);
        for sig in [
            "yCGX/RrK4fcuNtr3ztk5tQGsOBjcAzHpGLdMUrbV8yI=",
            "XqRcjrSv57VACn6apEO9znyu/wkN1VC7QxdSPwK3Hzs=",
        ] {
            assert_eq!(
                verify(p.as_ref(), &pairs(&[(SIGNATURE, sig)]), b"foo=anything"),
                Ok(())
            );
        }
        let hex = pairs(&[(
            SIGNATURE,
            "c82197fd1acae1f72e36daf7ced939b501ac3818dc0331e918b74c52b6d5f322",
        )]);
        assert!(verify(p.as_ref(), &hex, b"foo=anything").is_err());
        let junk = pairs(&[(SIGNATURE, "invalid_hmac")]);
        assert_eq!(
            verify(p.as_ref(), &junk, b"foo=anything"),
            Err(VerifyError::Malformed("signature is not base64"))
        );
    }

    #[test]
    fn type_and_id() {
        let p = make(&build, &[ALICE]);
        let headers = pairs(&[(TOPIC, "orders/create"), (WEBHOOK_ID, "b54557e4")]);
        assert_eq!(
            event_type(p.as_ref(), &headers, b"{}").as_deref(),
            Some("orders/create")
        );
        assert_eq!(
            event_id(p.as_ref(), &headers, b"{}").as_deref(),
            Some("b54557e4")
        );
        assert_eq!(event_id(p.as_ref(), &[], b"{}"), None);
    }
}
