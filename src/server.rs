//! Webhook ingress: HTTP/1.1 on hyper, bounded in every dimension.
//!
//! Owns the webhook listener's limits (open connections, header size and
//! read time, body size and read time), routing a request path to a source,
//! and the answer to every request. A routed request goes through three
//! steps: read the body (`read_body`), admit it (`providers::admit`:
//! signature, header values, body, handshake, envelope), and ingest it
//! (`ingest_event`: route and commit). Each step passes its result on or
//! stops with a `Refusal`; this table is the whole mapping to status codes:
//!
//! | Step      | Outcome                                    | Status     | Also sent           |
//! |-----------|--------------------------------------------|------------|---------------------|
//! | route     | `Refusal::NoSource`: no source at the path | 404        |                     |
//! | read body | `Refusal::NotPost`                         | 405        | `Allow: POST`       |
//! | read body | `Refusal::TooLarge`                        | 413        | `Connection: close` |
//! | read body | `Refusal::Unreadable`                      | 400        |                     |
//! | read body | `Refusal::TooSlow`                         | 408        | `Connection: close` |
//! | admit     | `Refusal::Admit(Verify)`: bad signature    | 401        |                     |
//! | admit     | `Refusal::Admit(Header)`: not UTF-8        | 400        |                     |
//! | admit     | `Refusal::Admit(Body(Malformed))`          | 400        |                     |
//! | admit     | `Refusal::Admit(Body(Unsupported))`        | 415        |                     |
//! | admit     | the provider's handshake, answered         | its own    | its content type    |
//! | ingest    | `Refusal::Storage`: the commit failed      | 503        | `Retry-After: 5`    |
//! | ingest    | a duplicate within the dedup window        | 200        |                     |
//! | ingest    | accepted and stored                        | 202        |                     |
//!
//! Error bodies never carry internals; details go to the log. The accept
//! loop and the JSON replies are `http_util`'s, shared with the admin
//! listener.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::BodyError;
use crate::dispatch::Dispatcher;
use crate::event::Event;
use crate::http_util::{self, Conns, Resp};
use crate::ingest::{self, Ingested};
use crate::metrics::Metrics;
use crate::providers::{Admission, AdmitError, Inbound, Source, Verified, admit};
use crate::rules::RuleSet;
use crate::store::{Store, StoreError};

/// Limits of the ingress listener.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub dedup_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 10 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            dedup_window: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What every request handler shares.
pub struct Ingress {
    pub rules: Arc<ArcSwap<RuleSet>>,
    pub store: Store,
    /// Runs the deliveries of accepted events straight away when it has room.
    pub dispatcher: Arc<Dispatcher>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    /// Told the key of every event committed, for the console's live rows.
    pub committed: tokio::sync::broadcast::Sender<String>,
}

/// Accept connections until `shutdown` fires, then let open connections
/// finish their current request.
pub async fn run(listener: TcpListener, ingress: Arc<Ingress>, shutdown: CancellationToken) {
    let conns = Conns {
        name: "webhooks",
        max_connections: Some(ingress.limits.max_connections),
        header_timeout: ingress.limits.header_timeout,
        max_header_bytes: Some(ingress.limits.max_header_bytes),
    };
    http_util::serve(listener, conns, shutdown, |_| {
        let ingress = ingress.clone();
        move |req| {
            let ingress = ingress.clone();
            async move { handle(req, &ingress).await }
        }
    })
    .await;
}

/// Why a request was not accepted. Each has one status code: the table in
/// the module header.
#[derive(Debug)]
enum Refusal {
    NoSource,
    NotPost,
    TooLarge,
    Unreadable,
    TooSlow,
    Admit(AdmitError),
    Storage { event_id: String, error: StoreError },
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::NoSource => StatusCode::NOT_FOUND,
            Refusal::NotPost => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Unreadable
            | Refusal::Admit(AdmitError::Header(_) | AdmitError::Body(BodyError::Malformed(_))) => {
                StatusCode::BAD_REQUEST
            }
            Refusal::TooSlow => StatusCode::REQUEST_TIMEOUT,
            Refusal::Admit(AdmitError::Verify(_)) => StatusCode::UNAUTHORIZED,
            Refusal::Admit(AdmitError::Body(BodyError::Unsupported(_))) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Refusal::Storage { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What the client is told: a fixed message, never internals (the
    /// header error names only the header).
    fn message(&self) -> String {
        match self {
            Refusal::NoSource => "no source at this path".to_owned(),
            Refusal::NotPost => "use POST".to_owned(),
            Refusal::TooLarge => "body too large".to_owned(),
            Refusal::Unreadable => "could not read the body".to_owned(),
            Refusal::TooSlow => "the body was not sent in time".to_owned(),
            Refusal::Admit(AdmitError::Verify(_)) => "signature verification failed".to_owned(),
            Refusal::Admit(AdmitError::Body(BodyError::Unsupported(_))) => {
                "send application/json or application/x-www-form-urlencoded".to_owned()
            }
            Refusal::Admit(e @ AdmitError::Header(_)) => e.to_string(),
            Refusal::Admit(AdmitError::Body(BodyError::Malformed(why))) => {
                format!("malformed body: {why}")
            }
            Refusal::Storage { .. } => "storage unavailable, retry later".to_owned(),
        }
    }

    fn reply(&self) -> Resp {
        let mut resp = http_util::error(self.status(), &self.message());
        let extra = match self {
            Refusal::NotPost => Some((http::header::ALLOW, "POST")),
            // The rest of the body is not read, so the connection cannot be
            // reused.
            Refusal::TooLarge | Refusal::TooSlow => Some((http::header::CONNECTION, "close")),
            Refusal::Storage { .. } => Some((http::header::RETRY_AFTER, "5")),
            _ => None,
        };
        if let Some((name, value)) = extra {
            resp.headers_mut()
                .insert(name, http::HeaderValue::from_static(value));
        }
        resp
    }

    /// The log line (and metric) for a refusal the operator may care about.
    fn record(&self, source: &Source, metrics: &Metrics) {
        match self {
            Refusal::Admit(AdmitError::Verify(e)) => {
                tracing::warn!(source = %source.name, reason = %e.reason(), detail = %e, "Signature verification failed.");
                metrics.record_verify_failure(&source.name, e.reason());
            }
            Refusal::Admit(AdmitError::Body(BodyError::Unsupported(ct))) => {
                tracing::info!(source = %source.name, content_type = %ct, "Unsupported content type.");
            }
            Refusal::Admit(e @ AdmitError::Header(_)) => {
                tracing::info!(source = %source.name, error = %e, "Header value is not UTF-8.");
            }
            Refusal::Admit(AdmitError::Body(BodyError::Malformed(why))) => {
                tracing::info!(source = %source.name, error = %why, "Malformed body.");
            }
            Refusal::Storage { event_id, error } => {
                tracing::error!(event_id = %event_id, source = %source.name, error = %error, "Storing the event failed; answering 503.");
            }
            Refusal::NoSource
            | Refusal::NotPost
            | Refusal::TooLarge
            | Refusal::Unreadable
            | Refusal::TooSlow => {}
        }
    }
}

async fn handle(req: Request<Incoming>, ingress: &Ingress) -> Resp {
    let started = std::time::Instant::now();
    // In-flight requests finish on the rule set they started with, whatever
    // a reload swaps in meanwhile.
    let set = ingress.rules.load_full();
    let source = set.source_for_path(req.uri().path());
    let resp = match source {
        Some(source) => match respond(req, ingress, &set, source).await {
            Ok(resp) => resp,
            Err(refusal) => {
                refusal.record(source, &ingress.metrics);
                refusal.reply()
            }
        },
        None => Refusal::NoSource.reply(),
    };
    ingress.metrics.record_request(
        source.map_or("", |s| s.name.as_str()),
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// The three steps, for a request routed to `source`.
async fn respond(
    req: Request<Incoming>,
    ingress: &Ingress,
    set: &RuleSet,
    source: &Source,
) -> Result<Resp, Refusal> {
    if req.method() != http::Method::POST {
        return Err(Refusal::NotPost);
    }
    let (parts, bytes) = read_body(req, &ingress.limits).await?;
    let inbound = Inbound {
        headers: &parts.headers,
        path: parts.uri.path(),
        query: parts.uri.query(),
        body: &bytes,
        received_at: SystemTime::now(),
    };
    let event = match admit(source, &inbound).map_err(Refusal::Admit)? {
        Admission::Event(e) => e,
        Admission::Handshake(h) => {
            tracing::info!(source = %source.name, "Answered the provider's handshake.");
            let mut resp = Response::new(Full::new(Bytes::from(h.body)));
            *resp.status_mut() = StatusCode::from_u16(h.status).unwrap_or(StatusCode::OK);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(h.content_type),
            );
            return Ok(resp);
        }
    };
    ingest_event(ingress, set, source, event).await
}

/// Step one: the whole body, within the size and time limits.
async fn read_body(
    req: Request<Incoming>,
    limits: &Limits,
) -> Result<(http::request::Parts, Bytes), Refusal> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return Err(Refusal::TooLarge);
    }
    let (parts, body) = req.into_parts();
    let limited = Limited::new(body, limits.max_body);
    match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok((parts, collected.to_bytes())),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Refusal::TooLarge)
        }
        Ok(Err(_)) => Err(Refusal::Unreadable),
        Err(_) => Err(Refusal::TooSlow),
    }
}

/// Step three: route and commit, then answer 202 or 200 and hand the
/// deliveries to the dispatcher.
async fn ingest_event(
    ingress: &Ingress,
    set: &RuleSet,
    source: &Source,
    event: Verified<Event>,
) -> Result<Resp, Refusal> {
    let event_id = event.id.clone();
    let stored = ingest::ingest(
        set,
        &ingress.store,
        &ingress.dispatcher,
        event,
        ingress.limits.dedup_window,
    )
    .await;
    match stored {
        Ok(Ingested::Accepted {
            id,
            key,
            matched,
            deliveries,
            run,
        }) => {
            // No rule matched: no `rules` field, rather than an empty one.
            let rules = (!matched.is_empty()).then(|| matched.join(","));
            tracing::info!(event_id = %id, key = %key, source = %source.name, rules = rules.as_deref().map(tracing::field::display), deliveries, "Event accepted.");
            if let Some(run) = run {
                run.start();
            }
            // No console watching is no error.
            let _ = ingress.committed.send(key.clone());
            for rule in &matched {
                ingress.metrics.record_match(rule);
            }
            Ok(http_util::json(
                StatusCode::ACCEPTED,
                &serde_json::json!({"status": "accepted", "id": id, "key": key, "deliveries": deliveries}),
            ))
        }
        Ok(Ingested::Duplicate { id, key }) => {
            tracing::info!(event_id = %id, key = %key, source = %source.name, "Duplicate event ignored.");
            Ok(http_util::json(
                StatusCode::OK,
                &serde_json::json!({"status": "duplicate", "id": id, "key": key}),
            ))
        }
        Err(error) => Err(Refusal::Storage { event_id, error }),
    }
}
