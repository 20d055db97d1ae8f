//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, HMAC-SHA256 of
//! `{t}.{body}` keyed by the UTF-8 bytes of the whole secret. A `whsec_`
//! secret is used as written, never base64-decoded (unlike Standard Webhooks).
//! Event type `$.type`, event id `$.id`.
//!
//! Several `v1` values appear while Stripe rolls a secret; any match passes.
//! `v0` (test-mode legacy) is ignored, so a header with only `v0` fails.
//!
//! Window: 300 s by default, in both directions. stripe-python and stripe-go
//! only refuse old timestamps while stripe-dotnet uses the absolute
//! difference; two-sided is the stricter reading and costs nothing, since
//! Stripe signs again with a fresh `t` on every retry.

use std::time::Duration;

use serde_json::Value;

use super::common::{self, FieldScheme, Keys};
use super::{Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

const SCHEME: FieldScheme = FieldScheme {
    header: "Stripe-Signature",
    separator: ',',
    timestamp_key: "t",
    signature_key: "v1",
    joiner: ".",
};

#[derive(Debug)]
struct Stripe {
    keys: Keys,
    tolerance: Duration,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Stripe {
        keys: Keys::utf8("stripe", &settings)?,
        tolerance: common::tolerance(&settings, DEFAULT_TOLERANCE),
    }))
}

impl Provider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        SCHEME.verify(req, &self.keys, self.tolerance)
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/type")
    }

    fn event_id(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/id")
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        SCHEME.sign(&self.keys, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::*;

    const HEADER: &str = "Stripe-Signature";
    const T: &str = "1700000000";
    const WHSEC_BODY: &[u8] = b"{\"id\":\"evt_test_webhook\"}";

    #[test]
    fn basics() {
        check_basics(&build, HEADER);
    }

    #[test]
    fn window_is_two_sided() {
        check_window(&build, 300);
    }

    #[test]
    fn whsec_secret_is_raw_text() {
        let p = make(&build, &["whsec_test_secret"]);
        let signed = sign(p.as_ref(), WHSEC_BODY);
        let mac = common::mac(
            crate::providers::Algorithm::Sha256,
            b"whsec_test_secret",
            &[T.as_bytes(), b".", WHSEC_BODY],
        )
        .expect("mac");
        assert_eq!(
            get(&signed, HEADER),
            format!("t={T},v1={}", hex::encode(mac))
        );
    }

    #[test]
    fn field_rules() {
        let p = make(&build, &[ALICE]);
        let signed = sign(p.as_ref(), BODY);
        let v1 = get(&signed, HEADER)
            .split_once(",v1=")
            .expect("v1")
            .1
            .to_owned();
        let check = |value: &str| verify(p.as_ref(), &pairs(&[(HEADER, value)]), BODY);

        assert_eq!(
            check(&format!("t={T}, v1=bad_signature, v1={v1}, v0=00")),
            Ok(())
        );
        assert_eq!(check(&format!("v1={v1},t={T}")), Ok(()));
        assert_eq!(check(&format!("t={T},v1=zz")), Err(VerifyError::Mismatch));
        assert!(matches!(
            check(&format!("t={T},v0={v1}")),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check(&format!("t=,v1={v1}")),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check(&format!("v1={v1}")),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check(&format!("t={T},t={T},v1={v1}")),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check(&format!("t={T},v1")),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check(&format!("t=1.5,v1={v1}")),
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(
            check(&format!("t=1700000001,v1={v1}")),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn type_and_id() {
        let p = make(&build, &[ALICE]);
        let body = br#"{"id":"evt_1","type":"charge.refunded"}"#;
        assert_eq!(
            event_type(p.as_ref(), &[], body).as_deref(),
            Some("charge.refunded")
        );
        assert_eq!(event_id(p.as_ref(), &[], body).as_deref(), Some("evt_1"));
        assert_eq!(event_id(p.as_ref(), &[], b"[]"), None);
    }
}
