//! Paddle Billing: `Paddle-Signature: ts=<unix>;h1=<hex>[;h1=<hex>…]`,
//! HMAC-SHA256 of `{ts}:{body}` keyed by the whole secret string, its
//! `pdl_ntfset_…` prefix included. Event type `$.event_type`; event id
//! `$.event_id`, else `$.notification_id`.
//!
//! Window: 5 s by default, as in Paddle's SDKs, but in both directions where
//! the SDKs only refuse old timestamps. A timestamp from the future is as
//! unexplained as a stale one, and one window rule for every provider keeps
//! the behaviour predictable; set `tolerance:` to allow more clock skew.

use std::time::Duration;

use serde_json::Value;

use super::common::{self, FieldScheme, Keys};
use super::{Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5);

const SCHEME: FieldScheme = FieldScheme {
    header: "Paddle-Signature",
    separator: ';',
    timestamp_key: "ts",
    signature_key: "h1",
    joiner: ":",
};

#[derive(Debug)]
struct Paddle {
    keys: Keys,
    tolerance: Duration,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Paddle {
        keys: Keys::utf8("paddle", &settings)?,
        tolerance: common::tolerance(&settings, DEFAULT_TOLERANCE),
    }))
}

impl Provider for Paddle {
    fn name(&self) -> &'static str {
        "paddle"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        SCHEME.verify(req, &self.keys, self.tolerance)
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/event_type")
    }

    fn event_id(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/event_id").or_else(|| common::json_str(body, "/notification_id"))
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        SCHEME.sign(&self.keys, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::*;

    const HEADER: &str = "Paddle-Signature";

    #[test]
    fn basics() {
        check_basics(&build, HEADER);
    }

    #[test]
    fn window_is_five_seconds_both_ways() {
        check_window(&build, 5);
    }

    #[test]
    fn sdk_rotation_vector() {
        let secrets = [
            "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_TjIG2BXbm83HPXqNfziwe506sBEdqL/4",
            "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_vB/yIOnTOCWIvpBadM5jzBZPHc7OmdSo",
            "pdl_ntf_01hbpjmytsa32fhr36nqgc3kgb_WvRO0eL4Bj9rgYYIBZY6wZhG4EHy9jzh",
        ];
        let header = "ts=1696195954;h1=dummy;h1=d96299976a6eb066f484d7fde011ac56fc32b38fc9940bc419d6e537fdc6ef02";
        let headers = pairs(&[(HEADER, header)]);
        let all = make(&build, &secrets);
        assert_eq!(
            verify_at(all.as_ref(), &headers, b"hello-world", URL, 1_696_195_954),
            Ok(())
        );
        let first = make(&build, &secrets[..1]);
        assert_eq!(
            verify_at(first.as_ref(), &headers, b"hello-world", URL, 1_696_195_954),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn field_rules() {
        let p = make(&build, &[ALICE]);
        let signed = sign(p.as_ref(), BODY);
        let value = get(&signed, HEADER).to_owned();
        assert!(value.starts_with("ts=1700000000;h1="), "{value}");
        let h1 = value.split_once(";h1=").expect("h1").1;
        let check = |v: &str| verify(p.as_ref(), &pairs(&[(HEADER, v)]), BODY);
        assert_eq!(check(&format!("h1={h1};ts=1700000000")), Ok(()));
        assert!(matches!(
            check(&format!("ts=1700000000,h1={h1}")),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check(&format!("ts=1;ts=1700000000;h1={h1}")),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check("ts=1700000000"),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn type_and_id() {
        let p = make(&build, &[ALICE]);
        let body = br#"{"event_id":"evt_01","event_type":"customer.created"}"#;
        assert_eq!(
            event_type(p.as_ref(), &[], body).as_deref(),
            Some("customer.created")
        );
        assert_eq!(event_id(p.as_ref(), &[], body).as_deref(), Some("evt_01"));
        let legacy = br#"{"notification_id":"ntf_01"}"#;
        assert_eq!(event_id(p.as_ref(), &[], legacy).as_deref(), Some("ntf_01"));
    }
}
