//! PagerDuty (v3 webhooks): `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>…]`,
//! HMAC-SHA256 of the raw body keyed by the secret's text (it looks like
//! base64 but is not decoded). Event type `$.event.event_type`, event id
//! `$.event.id`.
//!
//! PagerDuty lists one signature per active secret while one is rotated; any
//! `v1` match passes and other versions are ignored. Nothing time-based is
//! signed, so there is no window.

use serde_json::Value;

use super::common::{self, Keys};
use super::{Algorithm, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const SIGNATURE: &str = "X-PagerDuty-Signature";
const VERSION: &str = "v1";

#[derive(Debug)]
struct PagerDuty {
    keys: Keys,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(PagerDuty {
        keys: Keys::utf8("pagerduty", &settings)?,
    }))
}

impl Provider for PagerDuty {
    fn name(&self) -> &'static str {
        "pagerduty"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let fields = common::parse_fields(common::header(req, SIGNATURE)?, ',')?;
        let signatures = common::hex_fields(&fields, VERSION)?;
        self.keys
            .verify(Algorithm::Sha256, &[req.body], &signatures)
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/event/event_type")
    }

    fn event_id(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/event/id")
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        let mac = self.keys.sign(Algorithm::Sha256, &[msg.body])?;
        Ok(common::headers([(
            SIGNATURE,
            format!("{VERSION}={}", hex::encode(mac)),
        )]))
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
    fn signature_list() {
        let p = make(&build, &[ALICE]);
        let good = get(&sign(p.as_ref(), BODY), SIGNATURE).to_owned();
        let check = |v: &str| verify(p.as_ref(), &pairs(&[(SIGNATURE, v)]), BODY);
        assert_eq!(check(&format!("v1=00ff, {good}")), Ok(()));
        assert_eq!(check(&format!("{good},v2=abcd")), Ok(()));
        assert!(matches!(
            check(&good.replace("v1=", "v2=")),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check(&format!("{good},garbage")),
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(check("v1=abc"), Err(VerifyError::Mismatch));
    }

    #[test]
    fn type_and_id() {
        let p = make(&build, &[ALICE]);
        let body = br#"{"event":{"id":"01BWDWL3","event_type":"incident.priority_updated"}}"#;
        assert_eq!(
            event_type(p.as_ref(), &[], body).as_deref(),
            Some("incident.priority_updated")
        );
        assert_eq!(event_id(p.as_ref(), &[], body).as_deref(), Some("01BWDWL3"));
    }
}
