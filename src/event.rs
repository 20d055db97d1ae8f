//! The event envelope: what a verified request becomes before routing.
//!
//! Owns `RawRequest` (the bytes as they arrived, before anyone trusts them) and
//! `Event` (the normalized envelope that rules, templates and the store see).
//! It does not own verification: `providers::Verified` is the wrapper that
//! proves an `Event` came from a request whose signature checked out.

use std::collections::BTreeMap;

use crate::body::Body;
use serde::{Deserialize, Serialize};

/// A request as it arrived, before its signature is checked.
///
/// The body is kept as raw bytes: signatures are computed over the exact bytes
/// the sender produced, never over a re-serialisation.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    /// The public URL the sender called, scheme, host, path and query included.
    /// Twilio and Square sign it; it comes from the source's `url:` or from
    /// the Host header plus the request path.
    pub url: &'a str,
    pub headers: &'a http::HeaderMap,
    pub body: &'a [u8],
    /// Unix time in seconds at which the request is judged (timestamp windows).
    pub now: i64,
}

impl<'a> RawRequest<'a> {
    /// The first value of a header as UTF-8, if present and valid.
    /// (Admission refuses a verified request with a header that is not
    /// UTF-8, so past verification, `None` means absent.)
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
    }
}

/// The normalized event envelope, as stored and as seen by templates
/// (`event.*`, `body`, `headers`, `query`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// The provider's event id, or the documented fallback (a hash of the body).
    pub id: String,
    /// The normalized event type matched by `event:` globs; empty when the
    /// provider gives none.
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub provider: String,
    /// RFC 3339, UTC.
    pub received_at: String,
    /// Header names lowercased; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub query: BTreeMap<String, String>,
    pub body: Body,
}
