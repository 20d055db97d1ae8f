//! Discord interactions: Ed25519 over `{X-Signature-Timestamp}{body}` (plain
//! concatenation), signature hex in `X-Signature-Ed25519`, verified with the
//! application's public key, configured as the secret in hex. Answers PING
//! (`type` 1) with `{"type":1}`.
//!
//! Window: Discord documents none; ±300 s by default, since the timestamp is
//! signed and a five-minute-old interaction token is of little use anyway.
//! Discord also sends deliberately bad signatures and expects a 401.
//!
//! Event type: the interaction type by name, lowercase to match the other
//! providers' dotted types: `ping`, `application_command`,
//! `message_component`, `application_command_autocomplete`, `modal_submit`,
//! or the number as text for a type this list does not know. Application
//! commands and autocompletes add the command name (`$.data.name`), so
//! `event: application_command` matches every command and
//! `application_command.deploy` one of them. Event id `$.id`.
//!
//! Signing needs the private key, which hookrouter never holds.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::common;
use super::{Handshake, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

const SIGNATURE: &str = "X-Signature-Ed25519";
const TIMESTAMP: &str = "X-Signature-Timestamp";

#[derive(Debug)]
struct Discord {
    keys: Vec<VerifyingKey>,
    tolerance: Duration,
}

fn decode_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = hex::decode(text).map_err(|_| "is not a hex public key".to_owned())?;
    common::ed25519_key(&bytes)
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Discord {
        keys: common::decoded_secrets("discord", &settings, decode_key)?,
        tolerance: common::tolerance(&settings, DEFAULT_TOLERANCE),
    }))
}

impl Provider for Discord {
    fn name(&self) -> &'static str {
        "discord"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let signature = common::decode_hex(common::header(req, SIGNATURE)?)?;
        if signature.len() != ed25519_dalek::SIGNATURE_LENGTH {
            return Err(VerifyError::Malformed("signature is not 64 bytes"));
        }
        let ts = common::header(req, TIMESTAMP)?;
        let seconds = common::parse_timestamp(ts)?;
        let message = [ts.as_bytes(), req.body].concat();
        if !common::ed25519_matches(&self.keys, &message, &[signature]) {
            return Err(VerifyError::Mismatch);
        }
        common::check_window(seconds, req.now, self.tolerance)
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        let number = body.get("type")?.as_u64()?;
        let command = || common::json_str(body, "/data/name");
        let with_command = |base: &str| match command() {
            Some(name) => format!("{base}.{name}"),
            None => base.to_owned(),
        };
        Some(match number {
            1 => "ping".to_owned(),
            2 => with_command("application_command"),
            3 => "message_component".to_owned(),
            4 => with_command("application_command_autocomplete"),
            5 => "modal_submit".to_owned(),
            other => other.to_string(),
        })
    }

    fn event_id(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/id")
    }

    fn handshake(&self, _req: &RawRequest<'_>, body: &Value) -> Option<Handshake> {
        if body.get("type").and_then(Value::as_u64) != Some(1) {
            return None;
        }
        Some(Handshake {
            status: 200,
            content_type: "application/json",
            body: br#"{"type":1}"#.to_vec(),
        })
    }
}

#[cfg(test)]
pub(super) fn tests_public_key() -> &'static str {
    tests::PUBLIC_KEY
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;
    use crate::providers::Outgoing;
    use crate::providers::testkit::*;

    /// RFC 8032 section 7.1, test 1.
    const SECRET_KEY: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    pub(super) const PUBLIC_KEY: &str =
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const OTHER_KEY: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    const PING: &[u8] = br#"{"application_id":"1234567890123456789","id":"1234567890123456780","token":"aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4MA","type":1,"version":1}"#;
    const PING_SIG: &str = "47e032f57af81d45d1d0163a363a8d69183c22a531b825da7ad680abfe99514df710ab45b644d755c6de5f778e34107635ddde795e018a0a11834c69f28e7909";

    fn signed(ts: i64, body: &[u8]) -> Vec<(String, String)> {
        let key = SigningKey::from_bytes(
            &hex::decode(SECRET_KEY)
                .expect("hex")
                .try_into()
                .expect("32"),
        );
        let ts = ts.to_string();
        let signature = key.sign(&[ts.as_bytes(), body].concat());
        pairs(&[
            (SIGNATURE, &hex::encode(signature.to_bytes())),
            (TIMESTAMP, &ts),
        ])
    }

    #[test]
    fn ping_vector_and_handshake() {
        let p = make(&build, &[PUBLIC_KEY]);
        let headers = pairs(&[(SIGNATURE, PING_SIG), (TIMESTAMP, "1700000000")]);
        assert_eq!(verify(p.as_ref(), &headers, PING), Ok(()));
        assert_eq!(signed(NOW, PING), headers);
        let reply = handshake(p.as_ref(), &headers, PING).expect("pong");
        assert_eq!(
            (reply.status, reply.content_type),
            (200, "application/json")
        );
        assert_eq!(reply.body, br#"{"type":1}"#);
        assert_eq!(handshake(p.as_ref(), &headers, br#"{"type":2}"#), None);
    }

    #[test]
    fn bad_requests_fail() {
        let p = make(&build, &[PUBLIC_KEY]);
        let good = signed(NOW, PING);
        let mut tampered = PING.to_vec();
        tampered.push(b'\n');
        assert_eq!(
            verify(p.as_ref(), &good, &tampered),
            Err(VerifyError::Mismatch)
        );
        let other = make(&build, &[OTHER_KEY]);
        assert_eq!(
            verify(other.as_ref(), &good, PING),
            Err(VerifyError::Mismatch)
        );
        let rotated = make(&build, &[OTHER_KEY, PUBLIC_KEY]);
        assert_eq!(verify(rotated.as_ref(), &good, PING), Ok(()));
        let moved = with(&good, TIMESTAMP, Some("1700000001"));
        assert_eq!(verify(p.as_ref(), &moved, PING), Err(VerifyError::Mismatch));
        for junk in [
            "example invalid signature",
            "abc",
            &PING_SIG[..64],
            &format!("{PING_SIG}00"),
            "",
        ] {
            let bad = with(&good, SIGNATURE, Some(junk));
            assert!(
                matches!(
                    verify(p.as_ref(), &bad, PING),
                    Err(VerifyError::Malformed(_))
                ),
                "{junk:?}"
            );
        }
        assert_eq!(
            verify(p.as_ref(), &[], PING),
            Err(VerifyError::MissingHeader(SIGNATURE))
        );
        let no_ts = with(&good, TIMESTAMP, None);
        assert_eq!(
            verify(p.as_ref(), &no_ts, PING),
            Err(VerifyError::MissingHeader(TIMESTAMP))
        );
        let bad_ts = with(&good, TIMESTAMP, Some("17e8"));
        assert!(matches!(
            verify(p.as_ref(), &bad_ts, PING),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn window_is_two_sided() {
        let p = make(&build, &[PUBLIC_KEY]);
        for (offset, expected) in [
            (300, Ok(())),
            (-300, Ok(())),
            (301, Err(VerifyError::Expired)),
            (-301, Err(VerifyError::Expired)),
        ] {
            let headers = signed(NOW - offset, PING);
            assert_eq!(verify(p.as_ref(), &headers, PING), expected, "{offset}");
        }
    }

    #[test]
    fn keys_must_decode() {
        for bad in ["", "zz", "d75a98", &format!("{PUBLIC_KEY}00"), "whsec_abc"] {
            assert!(build(settings(&[bad])).is_err(), "{bad:?}");
        }
        assert!(build(settings(&[])).is_err());
    }

    #[test]
    fn cannot_sign() {
        let p = make(&build, &[PUBLIC_KEY]);
        assert!(
            p.sign(&Outgoing {
                url: URL,
                body: PING,
                id: "x",
                now: NOW
            })
            .is_err()
        );
    }

    #[test]
    fn type_names_and_id() {
        let p = make(&build, &[PUBLIC_KEY]);
        let cases: [(&[u8], Option<&str>); 7] = [
            (PING, Some("ping")),
            (
                br#"{"type":2,"data":{"name":"deploy"}}"#,
                Some("application_command.deploy"),
            ),
            (br#"{"type":2}"#, Some("application_command")),
            (
                br#"{"type":3,"data":{"custom_id":"x"}}"#,
                Some("message_component"),
            ),
            (
                br#"{"type":4,"data":{"name":"deploy"}}"#,
                Some("application_command_autocomplete.deploy"),
            ),
            (br#"{"type":9}"#, Some("9")),
            (br#"{"type":"1"}"#, None),
        ];
        for (body, expected) in cases {
            assert_eq!(event_type(p.as_ref(), &[], body).as_deref(), expected);
        }
        assert_eq!(
            event_type(p.as_ref(), &[], br#"{"type":5}"#).as_deref(),
            Some("modal_submit")
        );
        assert_eq!(
            event_id(p.as_ref(), &[], PING).as_deref(),
            Some("1234567890123456780")
        );
    }
}
