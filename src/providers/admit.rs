//! Admission: the one place a request becomes a `Verified<Event>`.
//!
//! Owns the order of the checks a request goes through once it has been
//! routed to a source: signature first (nothing of an unverified request is
//! parsed or stored), then the header values, then the body, then the
//! provider's handshake, then the envelope. Being a child of `providers` is what lets it construct
//! `Verified`; nothing else in the crate can.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::Source;
use super::envelope;
use super::{Handshake, Verified, VerifyError};
use crate::body::{self, BodyError};
use crate::event::{Event, RawRequest};

/// What a request that passed verification turned out to be.
#[derive(Debug)]
pub enum Admission {
    Event(Verified<Event>),
    /// The provider demands this answer; nothing is stored or routed.
    Handshake(Handshake),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// Answered with 401.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// Answered with 400 or 415.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// A header value that is not UTF-8; answered with 400. Checked after the
    /// signature (a garbled signature header is a bad signature), so that an
    /// unsigned header such as the delivery id or the event type is never
    /// read as absent and quietly replaced by a fallback.
    #[error("header {0} is not valid UTF-8")]
    Header(String),
}

/// Verify `req` for `source` and build its event.
///
/// # Errors
/// A failed verification, or a body that does not parse.
pub fn admit(
    source: &Source,
    req: &RawRequest<'_>,
    query: BTreeMap<String, String>,
    received_at: SystemTime,
) -> Result<Admission, AdmitError> {
    source.provider.verify(req)?;
    if let Some((name, _)) = req
        .headers
        .iter()
        .find(|(_, v)| std::str::from_utf8(v.as_bytes()).is_err())
    {
        return Err(AdmitError::Header(name.as_str().to_owned()));
    }
    let parsed = body::parse(req.header("content-type"), req.body)?;
    if let Some(h) = source.provider.handshake(req, &parsed) {
        return Ok(Admission::Handshake(h));
    }
    let event = envelope::build(source, req, parsed, query, received_at);
    Ok(Admission::Event(Verified(event)))
}
