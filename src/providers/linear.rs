//! Linear: `Linear-Signature`, bare hex HMAC-SHA256 of the raw body. Event
//! type `$.type` + `.` + `$.action` (`Comment.create`), event id the
//! `Linear-Delivery` header.
//!
//! Timestamps are milliseconds. The one to trust is the body's
//! `webhookTimestamp`: it is covered by the signature. The `Linear-Timestamp`
//! header is not, so it is only a fallback for bodies without the field, and
//! a request with neither is refused rather than let through unwindowed.
//! Window ±60 s by default, as in Linear's SDK.

use std::time::Duration;

use serde_json::Value;

use super::common::{self, Keys};
use super::{Algorithm, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(60);

const SIGNATURE: &str = "Linear-Signature";
const TIMESTAMP: &str = "Linear-Timestamp";
const DELIVERY: &str = "Linear-Delivery";

#[derive(Debug)]
struct Linear {
    keys: Keys,
    tolerance: Duration,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Linear {
        keys: Keys::utf8("linear", &settings)?,
        tolerance: common::tolerance(&settings, DEFAULT_TOLERANCE),
    }))
}

impl Linear {
    /// Read only after the signature checked out, so the body is authentic.
    fn timestamp_ms(req: &RawRequest<'_>) -> Result<i64, VerifyError> {
        let signed = serde_json::from_slice::<Value>(req.body)
            .ok()
            .and_then(|body| body.get("webhookTimestamp").and_then(Value::as_i64));
        match signed {
            Some(ms) => Ok(ms),
            None => common::parse_timestamp(common::header(req, TIMESTAMP)?),
        }
    }
}

impl Provider for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let signature = common::decode_hex(common::header(req, SIGNATURE)?)?;
        self.keys
            .verify(Algorithm::Sha256, &[req.body], &[signature])?;
        let ts_ms = Self::timestamp_ms(req)?;
        common::check_window_ms(ts_ms, req.now.saturating_mul(1000), self.tolerance)
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        let kind = common::json_str(body, "/type")?;
        Some(match common::json_str(body, "/action") {
            Some(action) => format!("{kind}.{action}"),
            None => kind,
        })
    }

    fn event_id(&self, req: &RawRequest<'_>, _body: &Value) -> Option<String> {
        req.header(DELIVERY).map(str::to_owned)
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        let mac = self.keys.sign(Algorithm::Sha256, &[msg.body])?;
        Ok(common::headers([
            (SIGNATURE, hex::encode(mac)),
            (TIMESTAMP, msg.now.saturating_mul(1000).to_string()),
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
        check_timestamp_header(&build, TIMESTAMP);
    }

    #[test]
    fn window_is_sixty_seconds_both_ways() {
        check_window(&build, 60);
    }

    #[test]
    fn body_timestamp_wins_over_header() {
        let p = make(&build, &[ALICE]);
        let body = br#"{"type":"Issue","action":"update","webhookTimestamp":1700000000123}"#;
        let signed = sign_at(p.as_ref(), body, URL, 1_600_000_000);
        // The header says 2020, the signed body says 2023: the body decides.
        assert_eq!(
            verify_at(p.as_ref(), &signed, body, URL, 1_700_000_060),
            Ok(())
        );
        assert_eq!(
            verify_at(p.as_ref(), &signed, body, URL, 1_700_000_061),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            verify_at(
                p.as_ref(),
                &with(&signed, TIMESTAMP, None),
                body,
                URL,
                1_700_000_000
            ),
            Ok(())
        );
        // Millisecond precision: 60.123 s after the body timestamp is outside.
        let edge = br#"{"webhookTimestamp":1699999939877}"#;
        let signed = sign(p.as_ref(), edge);
        assert_eq!(
            verify_at(p.as_ref(), &signed, edge, URL, 1_700_000_000),
            Err(VerifyError::Expired)
        );
    }

    #[test]
    fn prefixed_signature_is_refused() {
        let p = make(&build, &[ALICE]);
        let signed = sign(p.as_ref(), BODY);
        let prefixed = format!("sha256={}", get(&signed, SIGNATURE));
        assert!(matches!(
            verify(p.as_ref(), &with(&signed, SIGNATURE, Some(&prefixed)), BODY),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn type_and_id() {
        let p = make(&build, &[ALICE]);
        let headers = pairs(&[(DELIVERY, "234d1a4e")]);
        let body = br#"{"type":"Comment","action":"create"}"#;
        assert_eq!(
            event_type(p.as_ref(), &headers, body).as_deref(),
            Some("Comment.create")
        );
        assert_eq!(
            event_type(p.as_ref(), &headers, br#"{"type":"Comment"}"#).as_deref(),
            Some("Comment")
        );
        assert_eq!(
            event_id(p.as_ref(), &headers, body).as_deref(),
            Some("234d1a4e")
        );
    }
}
