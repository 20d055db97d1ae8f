//! Standard Webhooks (and Svix, which it grew from): `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` headers, falling back to the
//! `svix-` names header by header as the Svix SDKs do. The signed content is
//! `{id}.{timestamp}.{body}`. Event type `$.type`, event id the message id.
//!
//! Secrets: `whsec_` + base64 (the prefix is optional) is an HMAC-SHA256 key,
//! base64-decoded, never used as text; `whpk_` + base64 is an Ed25519 public
//! key for `v1a` signatures. `whsk_` private keys are refused: a receiver
//! only needs the public half. The signature header is a space-separated
//! list of `version,base64`; any `v1` (HMAC) or `v1a` (Ed25519) match
//! passes and unknown versions are skipped, which is how senders rotate.
//!
//! Window: ±300 s by default, as the specification requires.

use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use super::common::{self, Keys};
use super::{Algorithm, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

const ID: [&str; 2] = ["webhook-id", "svix-id"];
const TIMESTAMP: [&str; 2] = ["webhook-timestamp", "svix-timestamp"];
const SIGNATURE: [&str; 2] = ["webhook-signature", "svix-signature"];

const SYMMETRIC_PREFIX: &str = "whsec_";
const PUBLIC_PREFIX: &str = "whpk_";
const PRIVATE_PREFIX: &str = "whsk_";

#[derive(Debug)]
struct Standard {
    hmac: Keys,
    public: Vec<VerifyingKey>,
    tolerance: Duration,
}

enum Key {
    Hmac(Vec<u8>),
    Public(VerifyingKey),
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        match self {
            Key::Hmac(bytes) => bytes,
            Key::Public(key) => key.as_ref(),
        }
    }
}

fn decode_secret(text: &str) -> Result<Key, String> {
    if text.starts_with(PRIVATE_PREFIX) {
        return Err("is a `whsk_` private key; configure the `whpk_` public key".to_owned());
    }
    if let Some(public) = text.strip_prefix(PUBLIC_PREFIX) {
        let bytes = common::decode_base64_secret(public)?;
        return common::ed25519_key(&bytes).map(Key::Public);
    }
    let encoded = text.strip_prefix(SYMMETRIC_PREFIX).unwrap_or(text);
    common::decode_base64_secret(encoded).map(Key::Hmac)
}

/// The `v1,<base64>` signature of a Standard Webhooks message, for senders:
/// HMAC-SHA256 of `{id}.{timestamp}.{body}` under the decoded `whsec_` key.
/// Used by `sign` here and by outgoing `http` actions with `sign:`.
pub fn sign_v1(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = common::mac(
        Algorithm::Sha256,
        key,
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body],
    )
    .unwrap_or_default();
    format!("v1,{}", common::encode_base64(&mac))
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    let mut hmac = Vec::new();
    let mut public = Vec::new();
    for key in common::decoded_secrets("standard", &settings, decode_secret)? {
        match key {
            Key::Hmac(bytes) => hmac.push(bytes),
            Key::Public(key) => public.push(key),
        }
    }
    Ok(Box::new(Standard {
        hmac: Keys::from_bytes(hmac),
        public,
        tolerance: common::tolerance(&settings, DEFAULT_TOLERANCE),
    }))
}

/// The `webhook-` header, else its `svix-` twin.
fn header<'a>(req: &RawRequest<'a>, names: [&'static str; 2]) -> Result<&'a str, VerifyError> {
    let [standard, svix] = names;
    match common::header(req, standard) {
        Err(VerifyError::MissingHeader(_)) => match common::header(req, svix) {
            Err(VerifyError::MissingHeader(_)) => Err(VerifyError::MissingHeader(standard)),
            other => other,
        },
        other => other,
    }
}

/// The signatures of the versions this adapter checks.
#[derive(Default)]
struct Signatures {
    /// HMAC-SHA256.
    v1: Vec<Vec<u8>>,
    /// Ed25519.
    v1a: Vec<Vec<u8>>,
}

/// Entries that do not parse are skipped like unknown versions: one bad
/// entry must not hide a good one beside it.
fn signatures(value: &str) -> Result<Signatures, VerifyError> {
    let mut found = Signatures::default();
    for entry in value.split(' ').filter(|entry| !entry.is_empty()) {
        let Some((version, encoded)) = entry.split_once(',') else {
            continue;
        };
        let list = match version {
            "v1" => &mut found.v1,
            "v1a" => &mut found.v1a,
            _ => continue,
        };
        if let Ok(bytes) = common::decode_base64(encoded) {
            list.push(bytes);
        }
    }
    if found.v1.is_empty() && found.v1a.is_empty() {
        return Err(VerifyError::Malformed("no v1 or v1a signature"));
    }
    Ok(found)
}

impl Provider for Standard {
    fn name(&self) -> &'static str {
        "standard"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let id = header(req, ID)?;
        let ts = header(req, TIMESTAMP)?;
        let seconds = common::parse_timestamp(ts)?;
        let Signatures { v1, v1a } = signatures(header(req, SIGNATURE)?)?;
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", req.body];
        let hmac_ok = !v1.is_empty() && self.hmac.verify(Algorithm::Sha256, &parts, &v1).is_ok();
        let ed_ok = !hmac_ok
            && !v1a.is_empty()
            && !self.public.is_empty()
            && common::ed25519_matches(&self.public, &parts.concat(), &v1a);
        if !(hmac_ok || ed_ok) {
            return Err(VerifyError::Mismatch);
        }
        common::check_window(seconds, req.now, self.tolerance)
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/type")
    }

    fn event_id(&self, req: &RawRequest<'_>, _body: &Value) -> Option<String> {
        header(req, ID).ok().map(str::to_owned)
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        if self.hmac.is_empty() {
            return Err(
                "provider `standard` signs with a `whsec_` secret; only public keys are configured"
                    .to_owned(),
            );
        }
        // The id is part of the signed content and travels in `webhook-id`,
        // which `verify` requires: without one the headers would not verify.
        if msg.id.is_empty() {
            return Err(
                "provider `standard` signs the message id; give one (e.g. `--id msg_1`)".to_owned(),
            );
        }
        let ts = msg.now.to_string();
        let mac = self.hmac.sign(
            Algorithm::Sha256,
            &[msg.id.as_bytes(), b".", ts.as_bytes(), b".", msg.body],
        )?;
        let [id, timestamp, signature] = [ID[0], TIMESTAMP[0], SIGNATURE[0]];
        Ok(common::headers([
            (id, msg.id.to_owned()),
            (timestamp, ts),
            (signature, format!("v1,{}", common::encode_base64(&mac))),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;
    use crate::providers::testkit::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: &str = "1614265330";
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    const PAYLOAD: &[u8] = br#"{"test": 2432232314}"#;
    /// RFC 8032 section 7.1, test 1.
    const RFC_SECRET_KEY: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC_PUBLIC_KEY: &str = "whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    fn spec_headers() -> Vec<(String, String)> {
        pairs(&[
            ("webhook-id", MSG_ID),
            ("webhook-timestamp", TS),
            ("webhook-signature", SIG),
        ])
    }

    fn at_spec_time(
        p: &dyn Provider,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(), VerifyError> {
        verify_at(p, headers, body, URL, 1_614_265_330)
    }

    #[test]
    fn basics() {
        check_basics(&build, "webhook-signature");
        check_timestamp_header(&build, "webhook-timestamp");
    }

    #[test]
    fn window_is_two_sided() {
        check_window(&build, 300);
    }

    #[test]
    fn spec_vector_with_and_without_prefix() {
        for secret in [SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
            let p = make(&build, &[secret]);
            assert_eq!(
                at_spec_time(p.as_ref(), &spec_headers(), PAYLOAD),
                Ok(()),
                "{secret}"
            );
            let signed = p
                .sign(&Outgoing {
                    url: URL,
                    body: PAYLOAD,
                    id: MSG_ID,
                    now: 1_614_265_330,
                })
                .expect("sign");
            assert_eq!(signed, spec_headers(), "{secret}");
        }
    }

    #[test]
    fn svix_names_and_fallback() {
        let p = make(&build, &[SECRET]);
        let svix: Vec<_> = spec_headers()
            .into_iter()
            .map(|(n, v)| (n.replace("webhook-", "svix-"), v))
            .collect();
        assert_eq!(at_spec_time(p.as_ref(), &svix, PAYLOAD), Ok(()));
        let headers = header_map(&svix);
        let req = RawRequest {
            url: URL,
            headers: &headers,
            body: PAYLOAD,
            now: 0,
        };
        assert_eq!(p.event_id(&req, &Value::Null).as_deref(), Some(MSG_ID));
        assert_eq!(
            at_spec_time(p.as_ref(), &with(&svix, "svix-id", None), PAYLOAD),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn signature_list_rules() {
        let p = make(&build, &[SECRET]);
        let check = |value: &str| {
            at_spec_time(
                p.as_ref(),
                &with(&spec_headers(), "webhook-signature", Some(value)),
                PAYLOAD,
            )
        };
        let other = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=";
        assert_eq!(check(&format!("{other} v2,abc {SIG} junk v1,!!")), Ok(()));
        assert_eq!(check(other), Err(VerifyError::Mismatch));
        assert_eq!(check("v1,"), Err(VerifyError::Mismatch));
        assert!(matches!(
            check("v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            check("invalid_signature"),
            Err(VerifyError::Malformed(_))
        ));
    }

    #[test]
    fn signing_needs_a_message_id() {
        let p = make(&build, &[SECRET]);
        let err = p
            .sign(&Outgoing {
                url: URL,
                body: PAYLOAD,
                id: "",
                now: NOW,
            })
            .expect_err("an empty id cannot verify");
        assert!(err.contains("message id"), "{err}");
    }

    #[test]
    fn secrets_are_decoded_not_used_as_text() {
        let raw = make(&build, &[SECRET]);
        let as_text = crate::providers::common::mac(
            Algorithm::Sha256,
            SECRET.as_bytes(),
            &[MSG_ID.as_bytes(), b".", TS.as_bytes(), b".", PAYLOAD],
        )
        .expect("mac");
        let forged = format!("v1,{}", common::encode_base64(&as_text));
        let headers = with(&spec_headers(), "webhook-signature", Some(&forged));
        assert_eq!(
            at_spec_time(raw.as_ref(), &headers, PAYLOAD),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn bad_secrets_are_refused() {
        for bad in [
            "whsec_",
            "whsec_not base64!",
            "",
            "whsk_AAAA",
            "whpk_AAAA",
            "whpk_%%",
        ] {
            let err = build(settings(&[bad])).expect_err(bad);
            assert!(
                err.contains("standard") && err.contains("#1"),
                "{bad}: {err}"
            );
            assert!(
                bad.len() < 6 || !err.contains(bad),
                "{err} leaks the secret"
            );
        }
    }

    #[test]
    fn ed25519_v1a() {
        let p = make(&build, &[RFC_PUBLIC_KEY]);
        let key = SigningKey::from_bytes(
            &hex::decode(RFC_SECRET_KEY)
                .expect("hex")
                .try_into()
                .expect("32 bytes"),
        );
        let message = [MSG_ID.as_bytes(), b".", TS.as_bytes(), b".", PAYLOAD].concat();
        let signature = format!(
            "v1a,{}",
            common::encode_base64(&key.sign(&message).to_bytes())
        );
        let headers = with(&spec_headers(), "webhook-signature", Some(&signature));
        assert_eq!(at_spec_time(p.as_ref(), &headers, PAYLOAD), Ok(()));
        assert_eq!(
            at_spec_time(p.as_ref(), &headers, b"{}"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_at(p.as_ref(), &headers, PAYLOAD, URL, 1_614_265_331 + 300),
            Err(VerifyError::Expired)
        );
        // v1 entries need a symmetric key; only a public key is configured.
        assert_eq!(
            at_spec_time(p.as_ref(), &spec_headers(), PAYLOAD),
            Err(VerifyError::Mismatch)
        );
        assert!(
            p.sign(&Outgoing {
                url: URL,
                body: PAYLOAD,
                id: MSG_ID,
                now: 0
            })
            .is_err()
        );
        let mixed = make(&build, &[SECRET, RFC_PUBLIC_KEY]);
        assert_eq!(at_spec_time(mixed.as_ref(), &headers, PAYLOAD), Ok(()));
        assert_eq!(
            at_spec_time(mixed.as_ref(), &spec_headers(), PAYLOAD),
            Ok(())
        );
        let truncated = signature.get(..40).expect("prefix");
        let short = with(&spec_headers(), "webhook-signature", Some(truncated));
        assert_eq!(
            at_spec_time(p.as_ref(), &short, PAYLOAD),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn type_and_id() {
        let p = make(&build, &[SECRET]);
        let body = br#"{"type":"invoice.paid"}"#;
        assert_eq!(
            event_type(p.as_ref(), &spec_headers(), body).as_deref(),
            Some("invoice.paid")
        );
        assert_eq!(
            event_id(p.as_ref(), &spec_headers(), body).as_deref(),
            Some(MSG_ID)
        );
    }
}
