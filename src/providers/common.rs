//! Building blocks every adapter shares: HMAC over SHA-1/256/512, constant-time
//! comparison, hex/base64 decoding, strict timestamp parsing and the window
//! check, header access that refuses ambiguous input, and the two header
//! layouts several providers have in common (`v0=` + timestamp header, and
//! `key=value` field lists with a signed timestamp).
//!
//! An adapter file owns its provider's header names, signed string and event
//! naming; anything two adapters would otherwise both write lives here, so a
//! fix to comparison or parsing lands everywhere at once.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::{Signature, VerifyingKey};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::{Algorithm, Encoding, Outgoing, ProviderSettings, VerifyError};
use crate::event::RawRequest;

/// Standard alphabet, padding optional when decoding: senders and secret
/// generators disagree on padding, and the bytes are what get compared.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// HMAC keys of one adapter, in configuration order (the first one signs).
///
/// Wrapping the bytes keeps them out of every `Debug` of the adapters.
#[derive(Clone)]
pub(crate) struct Keys(Vec<Vec<u8>>);

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keys([redacted; {}])", self.0.len())
    }
}

impl Keys {
    /// The secrets' UTF-8 bytes, which is how most providers key their HMAC.
    ///
    /// # Errors
    /// No secret, or an empty one: an empty HMAC key verifies whatever an
    /// attacker signs with it.
    pub(crate) fn utf8(kind: &str, settings: &ProviderSettings) -> Result<Self, String> {
        let keys = decoded_secrets(kind, settings, |text| Ok(text.as_bytes().to_vec()))?;
        Ok(Keys(keys))
    }

    pub(crate) fn from_bytes(keys: Vec<Vec<u8>>) -> Self {
        Keys(keys)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key that produced one of `signatures` over `parts`, if any.
    pub(crate) fn matching(
        &self,
        alg: Algorithm,
        parts: &[&[u8]],
        signatures: &[Vec<u8>],
    ) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|key| mac_matches(alg, key, parts, signatures))
            .map(Vec::as_slice)
    }

    /// Whether any key produced any of `signatures` over `parts`.
    ///
    /// # Errors
    /// `Mismatch` when none did.
    pub(crate) fn verify(
        &self,
        alg: Algorithm,
        parts: &[&[u8]],
        signatures: &[Vec<u8>],
    ) -> Result<(), VerifyError> {
        match self.matching(alg, parts, signatures) {
            Some(_) => Ok(()),
            None => Err(VerifyError::Mismatch),
        }
    }

    /// The MAC over `parts` under the first (primary) key.
    ///
    /// # Errors
    /// When no key is configured.
    pub(crate) fn sign(&self, alg: Algorithm, parts: &[&[u8]]) -> Result<Vec<u8>, String> {
        let key = self.primary()?;
        mac(alg, key, parts).ok_or_else(|| "the HMAC key was refused".to_owned())
    }

    /// The first configured key.
    ///
    /// # Errors
    /// When no key is configured.
    pub(crate) fn primary(&self) -> Result<&[u8], String> {
        self.0
            .first()
            .map(Vec::as_slice)
            .ok_or_else(|| "no secret to sign with".to_owned())
    }

    /// Whether `token` equals one of the keys, for schemes that send the
    /// shared secret itself.
    ///
    /// Both sides are hashed first so that neither a common prefix nor a
    /// length difference changes how long the comparison takes, and every key
    /// is compared so the position of the match does not show either.
    pub(crate) fn contains_token(&self, token: &[u8]) -> bool {
        let presented = Sha256::digest(token);
        let found = self.0.iter().fold(subtle::Choice::from(0), |found, key| {
            found | Sha256::digest(key).ct_eq(&presented)
        });
        found.into()
    }
}

/// Turns every configured secret into key material with `decode`, refusing
/// an empty list and empty results. Messages name the secret by position,
/// never by value.
///
/// # Errors
/// A message for the config diagnostic.
pub(crate) fn decoded_secrets<T>(
    kind: &str,
    settings: &ProviderSettings,
    mut decode: impl FnMut(&str) -> Result<T, String>,
) -> Result<Vec<T>, String>
where
    T: AsRef<[u8]>,
{
    if settings.secrets.is_empty() {
        return Err(format!("provider `{kind}` needs a secret"));
    }
    settings
        .secrets
        .iter()
        .enumerate()
        .map(|(index, secret)| {
            let position = index.saturating_add(1);
            if secret.expose().is_empty() {
                return Err(format!("provider `{kind}`: secret #{position} is empty"));
            }
            let key = decode(secret.expose())
                .map_err(|why| format!("provider `{kind}`: secret #{position} {why}"))?;
            if key.as_ref().is_empty() {
                return Err(format!(
                    "provider `{kind}`: secret #{position} decodes to an empty key"
                ));
            }
            Ok(key)
        })
        .collect()
}

/// The configured window, or the provider's default.
pub(crate) fn tolerance(settings: &ProviderSettings, default: Duration) -> Duration {
    settings.tolerance.unwrap_or(default)
}

/// HMAC of the concatenated `parts`. `None` only if the MAC refuses the key,
/// which HMAC never does; it keeps a panic off the request path regardless.
pub(crate) fn mac(alg: Algorithm, key: &[u8], parts: &[&[u8]]) -> Option<Vec<u8>> {
    match alg {
        Algorithm::Sha1 => mac_with::<Hmac<Sha1>>(key, parts),
        Algorithm::Sha256 => mac_with::<Hmac<Sha256>>(key, parts),
        Algorithm::Sha512 => mac_with::<Hmac<Sha512>>(key, parts),
    }
}

fn mac_with<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Option<Vec<u8>> {
    let mut mac = <M as KeyInit>::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac.finalize().into_bytes().to_vec())
}

fn mac_matches(alg: Algorithm, key: &[u8], parts: &[&[u8]], signatures: &[Vec<u8>]) -> bool {
    match alg {
        Algorithm::Sha1 => mac_matches_with::<Hmac<Sha1>>(key, parts, signatures),
        Algorithm::Sha256 => mac_matches_with::<Hmac<Sha256>>(key, parts, signatures),
        Algorithm::Sha512 => mac_matches_with::<Hmac<Sha512>>(key, parts, signatures),
    }
}

/// `verify_slice` does the constant-time comparison and rejects any length
/// other than the full digest, so a truncated signature never passes.
fn mac_matches_with<M: Mac + KeyInit + Clone>(
    key: &[u8],
    parts: &[&[u8]],
    signatures: &[Vec<u8>],
) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    signatures
        .iter()
        .any(|signature| mac.clone().verify_slice(signature).is_ok())
}

/// Constant-time equality of two byte strings of public length.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

pub(crate) fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// A 32-byte Ed25519 public key.
///
/// # Errors
/// Wrong length, or bytes that are not a curve point.
pub(crate) fn ed25519_key(bytes: &[u8]) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| format!("is {} bytes, an Ed25519 public key is 32", bytes.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "is not a valid Ed25519 public key".to_owned())
}

/// Whether any key signed `message` with any of `signatures`.
///
/// Strict verification refuses malleable signatures and small-order keys,
/// which honest signers never produce.
pub(crate) fn ed25519_matches(
    keys: &[VerifyingKey],
    message: &[u8],
    signatures: &[Vec<u8>],
) -> bool {
    signatures.iter().any(|bytes| {
        let Ok(signature) = Signature::from_slice(bytes) else {
            return false;
        };
        keys.iter()
            .any(|key| key.verify_strict(message, &signature).is_ok())
    })
}

/// The single value of a header the scheme needs.
///
/// # Errors
/// `MissingHeader` when absent; `Malformed` when repeated (two values leave
/// it open which one a proxy checked), empty, or not visible ASCII.
pub(crate) fn header<'a>(req: &RawRequest<'a>, name: &'static str) -> Result<&'a str, VerifyError> {
    header_as(req, name, name)
}

/// `header` for a name only known at run time; `label` names it in errors.
///
/// # Errors
/// As `header`.
pub(crate) fn header_as<'a, K: http::header::AsHeaderName>(
    req: &RawRequest<'a>,
    name: K,
    label: &'static str,
) -> Result<&'a str, VerifyError> {
    let mut values = req.headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Err(VerifyError::MissingHeader(label));
    };
    if values.next().is_some() {
        return Err(VerifyError::Malformed("header repeated"));
    }
    let value = value
        .to_str()
        .map_err(|_| VerifyError::Malformed("header is not visible ASCII"))?
        .trim();
    if value.is_empty() {
        return Err(VerifyError::Malformed("header is empty"));
    }
    Ok(value)
}

/// `value` without its scheme prefix (`sha256=`, `v0=`), matched exactly.
///
/// # Errors
/// `Malformed` when the prefix is missing.
pub(crate) fn strip_prefix<'a>(value: &'a str, prefix: &str) -> Result<&'a str, VerifyError> {
    value
        .strip_prefix(prefix)
        .ok_or(VerifyError::Malformed("signature lacks its prefix"))
}

/// # Errors
/// `Malformed` for anything but an even number of hex digits.
pub(crate) fn decode_hex(text: &str) -> Result<Vec<u8>, VerifyError> {
    hex::decode(text).map_err(|_| VerifyError::Malformed("signature is not hex"))
}

/// # Errors
/// `Malformed` for anything but standard-alphabet base64.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, VerifyError> {
    BASE64
        .decode(text)
        .map_err(|_| VerifyError::Malformed("signature is not base64"))
}

/// Secret text as base64, for schemes whose keys are encoded.
///
/// # Errors
/// A message fragment for `decoded_secrets`.
pub(crate) fn decode_base64_secret(text: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(text)
        .map_err(|_| "is not valid base64".to_owned())
}

/// # Errors
/// As `decode_hex` / `decode_base64`.
pub(crate) fn decode(encoding: Encoding, text: &str) -> Result<Vec<u8>, VerifyError> {
    match encoding {
        Encoding::Hex => decode_hex(text),
        Encoding::Base64 => decode_base64(text),
    }
}

pub(crate) fn encode(encoding: Encoding, bytes: &[u8]) -> String {
    match encoding {
        Encoding::Hex => hex::encode(bytes),
        Encoding::Base64 => encode_base64(bytes),
    }
}

pub(crate) fn encode_base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// A timestamp as sent: ASCII digits only. Signs, spaces, fractions and
/// exponents are refused, so the value checked is the text that was signed.
///
/// # Errors
/// `Malformed` otherwise, or when it does not fit an `i64`.
pub(crate) fn parse_timestamp(text: &str) -> Result<i64, VerifyError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::Malformed("timestamp is not a decimal integer"));
    }
    text.parse()
        .map_err(|_| VerifyError::Malformed("timestamp out of range"))
}

/// Both directions, inclusive: a timestamp exactly `tolerance` away passes,
/// as in the reference libraries. The future side matters as much as the past:
/// a signer with a skewed clock or a pre-signed request is no fresher for it.
///
/// # Errors
/// `Expired` outside the window.
pub(crate) fn check_window(ts: i64, now: i64, tolerance: Duration) -> Result<(), VerifyError> {
    check_window_ms(ts.saturating_mul(1000), now.saturating_mul(1000), tolerance)
}

/// `check_window` for millisecond timestamps. Saturating arithmetic keeps an
/// absurd timestamp an expired one rather than an overflow.
///
/// # Errors
/// `Expired` outside the window.
pub(crate) fn check_window_ms(
    ts_ms: i64,
    now_ms: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let allowed = u64::try_from(tolerance.as_millis()).unwrap_or(u64::MAX);
    if ts_ms.abs_diff(now_ms) > allowed {
        return Err(VerifyError::Expired);
    }
    Ok(())
}

/// A string at a JSON pointer of the body.
pub(crate) fn json_str(body: &Value, pointer: &str) -> Option<String> {
    body.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// `key=value` items of a signature header, split on `separator`, each on
/// its first `=` only (base64 values end in `=`). Blank items are skipped.
///
/// # Errors
/// `Malformed` for an item without `=`.
pub(crate) fn parse_fields(value: &str, separator: char) -> Result<Vec<(&str, &str)>, VerifyError> {
    value
        .split(separator)
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.split_once('=')
                .map(|(key, value)| (key.trim(), value.trim()))
                .ok_or(VerifyError::Malformed("header field without `=`"))
        })
        .collect()
}

/// The one value of `key`.
///
/// # Errors
/// `Malformed` when absent or repeated: two timestamps leave it open which
/// one the signature covers.
pub(crate) fn single_field<'a>(
    fields: &[(&str, &'a str)],
    key: &str,
) -> Result<&'a str, VerifyError> {
    let mut values = fields.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v);
    let value = values
        .next()
        .ok_or(VerifyError::Malformed("header lacks a required field"))?;
    if values.next().is_some() {
        return Err(VerifyError::Malformed("header field repeated"));
    }
    Ok(value)
}

/// Every hex signature under `key`; undecodable ones are skipped because a
/// sender may list placeholders or other schemes beside the real one.
///
/// # Errors
/// `Malformed` when `key` does not occur at all.
pub(crate) fn hex_fields(fields: &[(&str, &str)], key: &str) -> Result<Vec<Vec<u8>>, VerifyError> {
    let mut present = false;
    let signatures = fields
        .iter()
        .filter(|(k, _)| *k == key)
        .inspect(|_| present = true)
        .filter_map(|(_, v)| hex::decode(v).ok())
        .collect();
    if !present {
        return Err(VerifyError::Malformed(
            "no signature of the supported version",
        ));
    }
    Ok(signatures)
}

/// Headers as `sign` returns them.
pub(crate) fn headers<const N: usize>(pairs: [(&str, String); N]) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// The Slack/Zoom layout: a `v0=<hex>` signature header and a separate
/// unix-seconds timestamp header, HMAC-SHA256 over `v0:{ts}:{body}`.
#[derive(Debug)]
pub(crate) struct V0Scheme {
    pub(crate) signature: &'static str,
    pub(crate) timestamp: &'static str,
}

impl V0Scheme {
    const PREFIX: &'static str = "v0=";

    /// The key that signed the request, for handshakes keyed by it.
    pub(crate) fn matching_key<'k>(
        &self,
        req: &RawRequest<'_>,
        keys: &'k Keys,
    ) -> Option<&'k [u8]> {
        let (ts, signature) = self.parse(req).ok()?;
        keys.matching(Algorithm::Sha256, &Self::parts(ts, req.body), &[signature])
    }

    /// # Errors
    /// Any `VerifyError`; `Expired` only for an authentic signature.
    pub(crate) fn verify(
        &self,
        req: &RawRequest<'_>,
        keys: &Keys,
        tolerance: Duration,
    ) -> Result<(), VerifyError> {
        let (ts, signature) = self.parse(req)?;
        let seconds = parse_timestamp(ts)?;
        keys.verify(Algorithm::Sha256, &Self::parts(ts, req.body), &[signature])?;
        check_window(seconds, req.now, tolerance)
    }

    /// # Errors
    /// When no key is configured.
    pub(crate) fn sign(
        &self,
        keys: &Keys,
        msg: &Outgoing<'_>,
    ) -> Result<Vec<(String, String)>, String> {
        let ts = msg.now.to_string();
        let mac = keys.sign(Algorithm::Sha256, &Self::parts(&ts, msg.body))?;
        Ok(headers([
            (
                self.signature,
                format!("{}{}", Self::PREFIX, hex::encode(mac)),
            ),
            (self.timestamp, ts),
        ]))
    }

    fn parse<'a>(&self, req: &RawRequest<'a>) -> Result<(&'a str, Vec<u8>), VerifyError> {
        let signature = decode_hex(strip_prefix(header(req, self.signature)?, Self::PREFIX)?)?;
        let ts = header(req, self.timestamp)?;
        Ok((ts, signature))
    }

    fn parts<'a>(ts: &'a str, body: &'a [u8]) -> [&'a [u8]; 4] {
        [b"v0:", ts.as_bytes(), b":", body]
    }
}

/// The Stripe/Paddle layout: one header of `key=value` fields holding a
/// timestamp and one or more hex HMAC-SHA256 signatures over
/// `{ts}{joiner}{body}`; other fields (older schemes) are ignored.
#[derive(Debug)]
pub(crate) struct FieldScheme {
    pub(crate) header: &'static str,
    pub(crate) separator: char,
    pub(crate) timestamp_key: &'static str,
    pub(crate) signature_key: &'static str,
    pub(crate) joiner: &'static str,
}

impl FieldScheme {
    /// # Errors
    /// Any `VerifyError`; `Expired` only for an authentic signature.
    pub(crate) fn verify(
        &self,
        req: &RawRequest<'_>,
        keys: &Keys,
        tolerance: Duration,
    ) -> Result<(), VerifyError> {
        let fields = parse_fields(header(req, self.header)?, self.separator)?;
        let ts = single_field(&fields, self.timestamp_key)?;
        let seconds = parse_timestamp(ts)?;
        let signatures = hex_fields(&fields, self.signature_key)?;
        keys.verify(
            Algorithm::Sha256,
            &[ts.as_bytes(), self.joiner.as_bytes(), req.body],
            &signatures,
        )?;
        check_window(seconds, req.now, tolerance)
    }

    /// # Errors
    /// When no key is configured.
    pub(crate) fn sign(
        &self,
        keys: &Keys,
        msg: &Outgoing<'_>,
    ) -> Result<Vec<(String, String)>, String> {
        let ts = msg.now.to_string();
        let mac = keys.sign(
            Algorithm::Sha256,
            &[ts.as_bytes(), self.joiner.as_bytes(), msg.body],
        )?;
        let value = format!(
            "{}={ts}{}{}={}",
            self.timestamp_key,
            self.separator,
            self.signature_key,
            hex::encode(mac)
        );
        Ok(headers([(self.header, value)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_inclusive_and_two_sided() {
        let five = Duration::from_secs(300);
        assert_eq!(check_window(1000, 1300, five), Ok(()));
        assert_eq!(check_window(1000, 700, five), Ok(()));
        assert_eq!(check_window(1000, 1301, five), Err(VerifyError::Expired));
        assert_eq!(check_window(1000, 699, five), Err(VerifyError::Expired));
        assert_eq!(check_window(i64::MAX, 0, five), Err(VerifyError::Expired));
        assert_eq!(check_window(0, i64::MIN, five), Err(VerifyError::Expired));
        assert_eq!(
            check_window_ms(1_000_500, 1_000, Duration::from_secs(1000)),
            Ok(())
        );
    }

    #[test]
    fn timestamps_are_plain_digits() {
        assert_eq!(parse_timestamp("1614265330"), Ok(1_614_265_330));
        for bad in [
            "",
            " 1",
            "1 ",
            "+1",
            "-1",
            "1.0",
            "0x10",
            "1e3",
            "99999999999999999999",
        ] {
            assert!(parse_timestamp(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fields_split_on_first_equals() {
        let fields = parse_fields("t=1, v1=aa==,v1=bb ,", ',').expect("fields");
        assert_eq!(fields, vec![("t", "1"), ("v1", "aa=="), ("v1", "bb")]);
        assert!(parse_fields("t=1,junk", ',').is_err());
        assert_eq!(single_field(&fields, "t"), Ok("1"));
        assert!(single_field(&fields, "v1").is_err());
        assert!(single_field(&fields, "ts").is_err());
        // `aa==` is no hex: skipped, not fatal.
        assert_eq!(hex_fields(&fields, "v1"), Ok(vec![vec![0xbb]]));
        assert!(hex_fields(&fields, "v9").is_err());
    }

    #[test]
    fn macs_match_known_values() {
        // RFC 4231 test case 2 and RFC 2202 test case 2.
        let sha256 = mac(
            Algorithm::Sha256,
            b"Jefe",
            &[b"what do ya want ", b"for nothing?"],
        )
        .expect("mac");
        assert_eq!(
            hex::encode(sha256),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let sha1 = mac(Algorithm::Sha1, b"Jefe", &[b"what do ya want for nothing?"]).expect("mac");
        assert_eq!(
            hex::encode(sha1),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        let sha512 = mac(
            Algorithm::Sha512,
            b"Jefe",
            &[b"what do ya want for nothing?"],
        )
        .expect("mac");
        assert!(hex::encode(sha512).starts_with("164b7a7bfcf819e2e395fbe73b56e0a387bd6422"));
    }

    #[test]
    fn keys_verify_any_and_refuse_truncation() {
        let keys = Keys::from_bytes(vec![b"one".to_vec(), b"two".to_vec()]);
        let good = mac(Algorithm::Sha256, b"two", &[b"body"]).expect("mac");
        assert_eq!(
            keys.verify(
                Algorithm::Sha256,
                &[b"body"],
                &[b"x".to_vec(), good.clone()]
            ),
            Ok(())
        );
        assert_eq!(
            keys.matching(Algorithm::Sha256, &[b"body"], std::slice::from_ref(&good)),
            Some(&b"two"[..])
        );
        let truncated = good.get(..16).expect("prefix").to_vec();
        assert_eq!(
            keys.verify(Algorithm::Sha256, &[b"body"], &[truncated]),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            keys.verify(Algorithm::Sha256, &[b"body"], &[]),
            Err(VerifyError::Mismatch)
        );
        assert!(!format!("{keys:?}").contains("one"));
    }

    #[test]
    fn tokens_compare_whole() {
        let keys = Keys::from_bytes(vec![b"my-gitlab-secret-token".to_vec()]);
        assert!(keys.contains_token(b"my-gitlab-secret-token"));
        assert!(!keys.contains_token(b"my-gitlab"));
        assert!(!keys.contains_token(b"my-gitlab-secret-token-and-more"));
        assert!(!keys.contains_token(b""));
    }

    #[test]
    fn base64_accepts_missing_padding_only() {
        assert_eq!(decode_base64("aGk="), Ok(b"hi".to_vec()));
        assert_eq!(decode_base64("aGk"), Ok(b"hi".to_vec()));
        assert!(decode_base64("aG-k").is_err());
        assert!(decode_base64("a").is_err());
    }

    #[test]
    fn empty_secrets_are_refused() {
        let none = ProviderSettings::default();
        assert!(Keys::utf8("x", &none).is_err());
        let empty = crate::providers::testkit::settings(&["ok", ""]);
        let err = Keys::utf8("x", &empty).expect_err("empty secret");
        assert!(err.contains("#2"), "{err}");
    }
}
