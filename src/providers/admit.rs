//! Admission: the one place a request becomes a `Verified<Event>`, and the
//! dry run's preview of it.
//!
//! Owns the order of the checks a request goes through once it has been
//! routed to a source: the URL the sender called (which some schemes sign),
//! then the signature (nothing of an unverified request is parsed or
//! stored), then the header values, then the body, then the provider's
//! handshake, then the envelope. Being a child of `providers` is what lets
//! it construct `Verified`; nothing else in the crate can.

use std::time::SystemTime;

use super::{Handshake, Source, Verified, VerifyError, envelope};
use crate::body::{self, BodyError};
use crate::clock;
use crate::event::{Event, RawRequest};

/// A request routed to a source, as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub headers: &'a http::HeaderMap,
    /// The request path, as sent.
    pub path: &'a str,
    /// The query string, as sent.
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub received_at: SystemTime,
}

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
/// A failed verification, a header that is not UTF-8, or a body that does
/// not parse.
pub fn admit(source: &Source, req: &Inbound<'_>) -> Result<Admission, AdmitError> {
    let url = url(source, req);
    let raw = raw(req, &url);
    source.provider.verify(&raw)?;
    Ok(match after_signature(source, req, &raw)? {
        Unverified::Event(e) => Admission::Event(Verified(e)),
        Unverified::Handshake(h) => Admission::Handshake(h),
    })
}

/// What a request is, before (or without) its signature being checked.
#[derive(Debug)]
pub enum Unverified {
    Event(Event),
    Handshake(Handshake),
}

/// What a dry run's request turned out to be.
#[derive(Debug)]
pub struct Preview {
    /// `None` when the signature was not checked.
    pub signature: Option<Result<(), VerifyError>>,
    pub request: Unverified,
}

/// A dry run's admission: the steps of [`admit`], in the same order on the
/// same URL, except that the signature is checked only when `verify` is set
/// and a bad one is reported rather than fatal, so the rest of the request
/// can still be shown. Its event is not `Verified`: nothing can store or
/// route it.
///
/// # Errors
/// A header that is not UTF-8, or a body that does not parse.
pub fn preview(source: &Source, req: &Inbound<'_>, verify: bool) -> Result<Preview, AdmitError> {
    let url = url(source, req);
    let raw = raw(req, &url);
    let signature = verify.then(|| source.provider.verify(&raw));
    let request = after_signature(source, req, &raw)?;
    Ok(Preview { signature, request })
}

/// The steps after the signature, in order.
fn after_signature(
    source: &Source,
    inbound: &Inbound<'_>,
    req: &RawRequest<'_>,
) -> Result<Unverified, AdmitError> {
    if let Some((name, _)) = req
        .headers
        .iter()
        .find(|(_, v)| std::str::from_utf8(v.as_bytes()).is_err())
    {
        return Err(AdmitError::Header(name.as_str().to_owned()));
    }
    let parsed = body::parse(req.header("content-type"), req.body)?;
    let parsed = source.provider.shape_body(req, parsed)?;
    if let Some(h) = source.provider.handshake(req, &parsed) {
        return Ok(Unverified::Handshake(h));
    }
    let query = envelope::query(inbound.query);
    let event = envelope::build(source, req, parsed, query, inbound.received_at);
    Ok(Unverified::Event(event))
}

fn raw<'a>(req: &Inbound<'a>, url: &'a str) -> RawRequest<'a> {
    RawRequest {
        url,
        headers: req.headers,
        body: req.body,
        now: clock::unix_secs(req.received_at),
    }
}

/// The URL the sender called, as far as this process can tell. The source's
/// `url:` stands for scheme, host and path; the query is the sender's own
/// (Twilio adds `bodySHA256=` to it), so it is kept. Without `url:`, the
/// Host header plus the path and query, `X-Forwarded-Proto: https`
/// selecting the scheme behind a TLS-terminating proxy; set the source's
/// `url:` when the proxy also rewrites the host or path.
fn url(source: &Source, req: &Inbound<'_>) -> String {
    if let Some(u) = &source.url {
        return match req.query {
            Some(q) if !u.contains('?') => format!("{u}?{q}"),
            _ => u.clone(),
        };
    }
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = match req
        .headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    match req.query {
        Some(q) => format!("{scheme}://{host}{}?{q}", req.path),
        None => format!("{scheme}://{host}{}", req.path),
    }
}
