//! Building the event envelope from a request and its parsed body.
//!
//! Owns the envelope's fields: the event type and id (a source's
//! `event_type:`/`event_id:` override first, then the provider's own, then
//! the fallbacks), lowercase headers with secret-bearing ones redacted, the
//! query string, and the receive time. It does not verify anything: only
//! admission calls it, after the signature step (`admit` on the server,
//! `preview` in a dry run, which shows what would be routed).

use std::collections::BTreeMap;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::Source;
use crate::body::Body;
use crate::event::{Event, RawRequest};

/// Headers whose values are credentials; stored and shown as `[redacted]`.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-gitlab-token",
];

/// The id used when neither the source nor the provider names one: a hash of
/// the body, so a sender's retry of the same payload is recognised as a
/// duplicate.
pub fn fallback_id(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    // A SHA-256 digest always has 32 bytes; `get` keeps the no-panic lint.
    format!(
        "sha256:{}",
        hex::encode(digest.get(..16).unwrap_or_default())
    )
}

/// Build the envelope.
pub fn build(
    source: &Source,
    req: &RawRequest<'_>,
    body: Body,
    query: BTreeMap<String, String>,
    received_at: SystemTime,
) -> Event {
    let kind = source
        .event_type
        .as_ref()
        .and_then(|x| x.extract(req.headers, &body))
        .or_else(|| source.provider.event_type(req, &body))
        .unwrap_or_default();
    let id = source
        .event_id
        .as_ref()
        .and_then(|x| x.extract(req.headers, &body))
        .or_else(|| source.provider.event_id(req, &body))
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| fallback_id(req.body));
    Event {
        id,
        kind,
        source: source.name.clone(),
        provider: source.provider.name().to_owned(),
        received_at: humantime::format_rfc3339_millis(received_at).to_string(),
        headers: headers(req.headers),
        query,
        body,
    }
}

/// Lowercase names; repeated headers joined with ", "; credentials redacted.
pub fn headers(map: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in map {
        let name = name.as_str();
        let text = if SECRET_HEADERS.contains(&name) {
            "[redacted]".to_owned()
        } else {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        };
        out.entry(name.to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&text);
            })
            .or_insert(text);
    }
    out
}

/// The query string as a map; a repeated key keeps its last value.
pub fn query(q: Option<&str>) -> BTreeMap<String, String> {
    q.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}
