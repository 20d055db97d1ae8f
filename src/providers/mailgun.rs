//! Mailgun: the signature travels in the body, as `signature.{timestamp,
//! token, signature}` of the JSON payload or as the `timestamp`, `token` and
//! `signature` fields of a legacy form post. It is hex HMAC-SHA256 of
//! `{timestamp}{token}` keyed by the webhook signing key. Event type
//! `$.event-data.event`.
//!
//! The signature does not cover the event data, so a captured triple could
//! carry forged data. Two things limit that: a ±300 s window by default, and
//! the token as the event id, so dedup refuses a second use of a token,
//! which is the token cache Mailgun's documentation asks receivers to keep.
//!
//! Signing is not offered: the signature would have to be written into the
//! body, and `sign` only produces headers.

use std::time::Duration;

use serde_json::Value;

use super::common::{self, Keys};
use super::{Algorithm, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Mailgun {
    keys: Keys,
    tolerance: Duration,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Mailgun {
        keys: Keys::utf8("mailgun", &settings)?,
        tolerance: common::tolerance(&settings, DEFAULT_TOLERANCE),
    }))
}

/// The signed triple as sent.
struct Triple {
    timestamp: String,
    token: String,
    signature: String,
}

/// From the JSON `signature` object, else from form fields. Mailgun sends the
/// timestamp as a string; a number is accepted as the same digits.
fn triple(body: &[u8]) -> Option<Triple> {
    if let Ok(json) = serde_json::from_slice::<Value>(body) {
        let signature = json.get("signature")?;
        let text = |name: &str| {
            signature
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let timestamp = match signature.get("timestamp")? {
            Value::Number(number) => number.as_u64()?.to_string(),
            other => other.as_str()?.to_owned(),
        };
        return Some(Triple {
            timestamp,
            token: text("token")?,
            signature: text("signature")?,
        });
    }
    let (mut timestamp, mut token, mut signature) = (None, None, None);
    for (name, value) in form_urlencoded::parse(body) {
        let slot = match name.as_ref() {
            "timestamp" => &mut timestamp,
            "token" => &mut token,
            "signature" => &mut signature,
            _ => continue,
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(value.into_owned());
    }
    Some(Triple {
        timestamp: timestamp?,
        token: token?,
        signature: signature?,
    })
}

impl Provider for Mailgun {
    fn name(&self) -> &'static str {
        "mailgun"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let triple = triple(req.body).ok_or(VerifyError::Malformed("body carries no signature"))?;
        let seconds = common::parse_timestamp(&triple.timestamp)?;
        let signature = common::decode_hex(&triple.signature)?;
        self.keys.verify(
            Algorithm::Sha256,
            &[triple.timestamp.as_bytes(), triple.token.as_bytes()],
            &[signature],
        )?;
        common::check_window(seconds, req.now, self.tolerance)
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/event-data/event")
    }

    fn event_id(&self, req: &RawRequest<'_>, _body: &Value) -> Option<String> {
        triple(req.body).map(|triple| triple.token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::Outgoing;
    use crate::providers::testkit::*;

    const KEY: &str = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0";
    const TS: i64 = 1_403_645_220;
    const TOKEN: &str = "5egbgr1vjgqxtrnp65xfznchgdccwh5d6i09vijqi3whgowmn6";
    const SIG: &str = "9cfc5c41582e51246e73c88d34db3af0a3a2692a76fbab81492842f000256d33";

    fn json(ts: &str, token: &str, sig: &str) -> Vec<u8> {
        format!(
            r#"{{"signature":{{"timestamp":"{ts}","token":"{token}","signature":"{sig}"}},"event-data":{{"event":"delivered","id":"CPgf"}}}}"#
        )
        .into_bytes()
    }

    fn check(body: &[u8], now: i64) -> Result<(), VerifyError> {
        let p = make(&build, &["other-key", KEY]);
        verify_at(p.as_ref(), &[], body, URL, now)
    }

    #[test]
    fn php_vector_json_and_form() {
        assert_eq!(check(&json("1403645220", TOKEN, SIG), TS), Ok(()));
        let form = format!("timestamp=1403645220&token={TOKEN}&signature={SIG}&event=delivered");
        assert_eq!(check(form.as_bytes(), TS), Ok(()));
        let numeric = String::from_utf8(json("1403645220", TOKEN, SIG))
            .expect("utf8")
            .replace(r#""timestamp":"1403645220""#, r#""timestamp":1403645220"#);
        assert_eq!(check(numeric.as_bytes(), TS), Ok(()));
    }

    #[test]
    fn tampering_fails() {
        assert_eq!(
            check(&json("1403645221", TOKEN, SIG), TS),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check(&json("1403645220", "owyldpe6", SIG), TS),
            Err(VerifyError::Mismatch)
        );
        let only_other = make(&build, &["other-key"]);
        assert_eq!(
            verify_at(
                only_other.as_ref(),
                &[],
                &json("1403645220", TOKEN, SIG),
                URL,
                TS
            ),
            Err(VerifyError::Mismatch)
        );
        for body in [
            &br#"{"event-data":{"event":"delivered"}}"#[..],
            br#"{"signature":{"timestamp":"1","token":"t"}}"#,
            b"timestamp=1&token=t",
            b"timestamp=1&timestamp=2&token=t&signature=00",
            b"",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(check(body, TS), Err(VerifyError::Malformed(_))),
                "{body:?}"
            );
        }
        assert!(matches!(
            check(&json("-1", TOKEN, SIG), TS),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check(&json("1403645220", TOKEN, "xyz"), TS),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn window_is_two_sided() {
        let body = json("1403645220", TOKEN, SIG);
        assert_eq!(check(&body, TS + 300), Ok(()));
        assert_eq!(check(&body, TS - 300), Ok(()));
        assert_eq!(check(&body, TS + 301), Err(VerifyError::Expired));
        assert_eq!(check(&body, TS - 301), Err(VerifyError::Expired));
    }

    #[test]
    fn type_id_and_no_signing() {
        let p = make(&build, &[KEY]);
        let body = json("1403645220", TOKEN, SIG);
        assert_eq!(
            event_type(p.as_ref(), &[], &body).as_deref(),
            Some("delivered")
        );
        assert_eq!(event_id(p.as_ref(), &[], &body).as_deref(), Some(TOKEN));
        assert!(
            p.sign(&Outgoing {
                url: URL,
                body: &body,
                id: "x",
                now: TS
            })
            .is_err()
        );
    }
}
