//! Admission: the one place a request becomes a `Verified<Event>`.
//!
//! Owns the order of the checks a request goes through once it has been
//! routed to a source: signature first (nothing of an unverified request is
//! parsed or stored), then the body, then the provider's handshake, then the
//! envelope. Being a child of `providers` is what lets it construct
//! `Verified`; nothing else in the crate can.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::{Handshake, Verified, VerifyError};
use crate::body::{self, BodyError};
use crate::envelope;
use crate::event::{Event, RawRequest};
use crate::rules::Source;

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
    let parsed = body::parse(req.header("content-type"), req.body)?;
    if let Some(h) = source.provider.handshake(req, &parsed) {
        return Ok(Admission::Handshake(h));
    }
    let event = envelope::build(source, req, parsed, query, received_at);
    Ok(Admission::Event(Verified(event)))
}
