//! Provider adapters: who sent this request, and can we prove it.
//!
//! Owns the `Provider` trait, the registry that maps a `provider:` name to an
//! adapter, the `Verified` proof type, and the signing entry point used by
//! `hookrouter sign` and tests. The shared HMAC/encoding helpers live in
//! `common`, the checks every adapter's tests run in `testkit`. Each adapter
//! lives in its own file; adding a provider means one new file and one line
//! in `REGISTRY`. Around the adapters: `source` (a configured sender),
//! `admit` (the order of the checks, the only maker of `Verified`) and
//! `envelope` (the event built from a verified request).
//!
//! Does not own body parsing, routing or storage: an adapter only verifies,
//! answers handshakes and names the event's type and id.

mod admit;
mod common;
mod discord;
pub mod envelope;
mod generic;
mod github;
mod gitlab;
mod linear;
mod mailgun;
mod none;
mod paddle;
mod pagerduty;
mod shopify;
mod slack;
mod source;
mod square;
mod standard;
mod stripe;
#[cfg(test)]
mod testkit;
mod twilio;
mod zoom;

pub use admit::{Admission, AdmitError, Inbound, Preview, Unverified, admit, preview};
pub use source::{Extractor, Origin, Source};
pub use standard::sign_v1 as standard_signature_v1;

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::body::{Body, BodyError};
use crate::event::RawRequest;

/// A secret as configured. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret's text. Callers must never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Hash function of the generic `hmac` provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

/// Signature encoding of the generic `hmac` provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

/// Options of the generic `hmac` provider.
#[derive(Debug, Clone)]
pub struct HmacOptions {
    /// Header carrying the signature (matched case-insensitively).
    pub header: String,
    pub algorithm: Algorithm,
    pub encoding: Encoding,
    /// Text before the signature in the header, e.g. `sha256=`.
    pub prefix: String,
    /// When set, the signed string is `{timestamp}.{body}` and the timestamp
    /// (unix seconds) must fall within the tolerance.
    pub timestamp_header: Option<String>,
}

/// Everything an adapter may be configured with. Built by `config::compile`.
#[derive(Debug, Clone, Default)]
pub struct ProviderSettings {
    /// One or more secrets; any match passes (rotation). Empty only for `none`.
    pub secrets: Vec<Secret>,
    /// Timestamp window; `None` means the provider's default.
    pub tolerance: Option<Duration>,
    /// Options of the generic `hmac` provider; `None` for every other provider.
    pub hmac: Option<HmacOptions>,
}

/// Why a request failed verification. Logged (never with secrets), counted
/// in metrics by `reason()`, and always answered with a bare 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("malformed signature: {0}")]
    Malformed(&'static str),
    #[error("signature mismatch")]
    Mismatch,
    #[error("timestamp outside the tolerance window")]
    Expired,
}

impl VerifyError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::MissingHeader(_) => "missing_header",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::Mismatch => "mismatch",
            VerifyError::Expired => "expired",
        }
    }
}

/// A reply a provider demands before it sends real events (Slack
/// `url_verification`, Zoom `endpoint.url_validation`, Discord PING).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// One webhook sender's scheme.
pub trait Provider: Send + Sync + fmt::Debug {
    /// The `provider:` name.
    fn name(&self) -> &'static str;

    /// Check the signature over the raw request, in constant time, within the
    /// timestamp window, against every configured secret.
    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError>;

    /// The normalized event type, if the provider defines one.
    fn event_type(&self, _req: &RawRequest<'_>, _body: &Value) -> Option<String> {
        None
    }

    /// The provider's event id, if it defines one.
    fn event_id(&self, _req: &RawRequest<'_>, _body: &Value) -> Option<String> {
        None
    }

    /// Reshape the parsed body before the event is built; only called after
    /// `verify` succeeded. Slack nests JSON inside a form field.
    ///
    /// # Errors
    /// A field the provider defines as structured does not parse.
    fn shape_body(&self, _req: &RawRequest<'_>, body: Body) -> Result<Body, BodyError> {
        Ok(body)
    }

    /// A handshake answer; only called after `verify` succeeded.
    fn handshake(&self, _req: &RawRequest<'_>, _body: &Value) -> Option<Handshake> {
        None
    }

    /// The headers this provider would send with `msg`, signed with the
    /// first configured secret, so that `verify` accepts them.
    ///
    /// # Errors
    /// When the scheme cannot be produced from the configured secret (a
    /// public key only verifies) or does not travel in headers.
    fn sign(&self, _msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        Err(format!("provider `{}` cannot sign requests", self.name()))
    }
}

/// A request to sign, as the provider would send it.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The URL the request goes to; Twilio and Square sign it.
    pub url: &'a str,
    pub body: &'a [u8],
    /// The delivery id, for schemes that sign or send one.
    pub id: &'a str,
    /// Unix seconds to stamp the request with.
    pub now: i64,
}

/// Build the adapter named `kind`.
///
/// # Errors
/// An unknown name, or settings the scheme cannot use (no secret, a secret
/// that does not decode), as a message for a config diagnostic.
pub fn build(kind: &str, settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    match REGISTRY.iter().find(|(name, _)| *name == kind) {
        Some((_, build)) => build(settings),
        None => Err(format!(
            "unknown provider `{kind}` (expected one of: {})",
            KINDS.join(", ")
        )),
    }
}

/// The headers provider `kind` would send for `body`: signature, timestamp
/// and delivery-id headers as the scheme defines them. `id` and `now` fill
/// the delivery id and timestamp; `url` is the target, for schemes that sign
/// it.
///
/// # Errors
/// As `build`, or when the scheme cannot sign (see `Provider::sign`).
pub fn sign(
    kind: &str,
    settings: &ProviderSettings,
    body: &[u8],
    id: &str,
    now: i64,
    url: &str,
) -> Result<Vec<(String, String)>, String> {
    build(kind, settings.clone())?.sign(&Outgoing { url, body, id, now })
}

type Builder = fn(ProviderSettings) -> Result<Box<dyn Provider>, String>;

/// Every adapter by its `provider:` name.
const REGISTRY: &[(&str, Builder)] = &[
    ("discord", discord::build),
    ("github", github::build),
    ("gitlab", gitlab::build),
    ("hmac", generic::build),
    ("linear", linear::build),
    ("mailgun", mailgun::build),
    ("none", none::build),
    ("paddle", paddle::build),
    ("pagerduty", pagerduty::build),
    ("shopify", shopify::build),
    ("slack", slack::build),
    ("square", square::build),
    ("standard", standard::build),
    ("stripe", stripe::build),
    ("twilio", twilio::build),
    ("zoom", zoom::build),
];

/// Every provider name `build` accepts, for diagnostics and the schema.
pub const KINDS: &[&str] = &registry_names::<{ REGISTRY.len() }>();

/// Derives `KINDS` from `REGISTRY` at compile time so the two cannot drift.
#[allow(clippy::indexing_slicing)] // const evaluation over a fixed table: an error here fails the build, not a request
const fn registry_names<const N: usize>() -> [&'static str; N] {
    let mut names = [""; N];
    let mut i = 0;
    while i < N {
        names[i] = REGISTRY[i].0;
        i += 1;
    }
    names
}

/// Proof that a value came from a request whose signature verified.
///
/// The field is private to this module, so only the ingest path here can
/// create one: rules, store and actions cannot be handed an unverified body.
#[derive(Debug, Clone)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_registry() {
        assert_eq!(KINDS.len(), REGISTRY.len());
        for kind in KINDS {
            assert_eq!(
                KINDS.iter().filter(|k| *k == kind).count(),
                1,
                "{kind} twice"
            );
        }
        assert!(KINDS.contains(&"standard") && KINDS.contains(&"hmac"));
    }

    #[test]
    fn unknown_kind_is_refused_by_name() {
        let err = build("gihtub", ProviderSettings::default()).expect_err("unknown");
        assert!(err.contains("gihtub") && err.contains("github"), "{err}");
    }

    #[test]
    fn names_match_registry_keys() {
        for kind in KINDS {
            let mut settings = testkit::settings(&[testkit::ALICE]);
            if *kind == "hmac" {
                settings.hmac = Some(generic::tests_options());
            }
            if *kind == "discord" {
                settings = testkit::settings(&[discord::tests_public_key()]);
            }
            let provider = build(kind, settings).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(provider.name(), *kind);
        }
    }

    #[test]
    fn missing_secret_is_refused() {
        for kind in KINDS.iter().filter(|k| **k != "none") {
            let mut settings = ProviderSettings::default();
            if *kind == "hmac" {
                settings.hmac = Some(generic::tests_options());
            }
            let err = build(kind, settings).expect_err(kind);
            assert!(
                err.contains(kind) && err.contains("secret"),
                "{kind}: {err}"
            );
        }
    }

    #[test]
    fn sign_round_trips_for_every_signing_kind() {
        let body = br#"{"type":"x","action":"y"}"#;
        for kind in KINDS {
            let mut settings = testkit::settings(&[testkit::ALICE]);
            match *kind {
                "hmac" => settings.hmac = Some(generic::tests_options()),
                "discord" => settings = testkit::settings(&[discord::tests_public_key()]),
                _ => {}
            }
            let url = "https://hooks.example.com/in?a=1";
            let signed = match sign(kind, &settings, body, "id-1", 1_700_000_000, url) {
                Ok(headers) => headers,
                Err(e) => {
                    assert!(matches!(*kind, "discord" | "mailgun"), "{kind}: {e}");
                    continue;
                }
            };
            let provider = build(kind, settings).expect("build");
            let verified = testkit::verify_at(provider.as_ref(), &signed, body, url, 1_700_000_000);
            assert_eq!(verified, Ok(()), "{kind}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug() {
        for kind in KINDS {
            let mut settings = testkit::settings(&["c3VwZXItc2VjcmV0LXZhbHVl"]);
            match *kind {
                "hmac" => settings.hmac = Some(generic::tests_options()),
                "discord" => continue,
                _ => {}
            }
            let provider = build(kind, settings).expect("build");
            let shown = format!("{provider:?}");
            assert!(
                !shown.contains("c3VwZXItc2VjcmV0LXZhbHVl"),
                "{kind}: {shown}"
            );
            assert!(!shown.contains("super-secret-value"), "{kind}: {shown}");
            assert!(!shown.contains("115, 117, 112"), "{kind}: {shown}");
        }
    }
}
