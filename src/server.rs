//! Webhook ingress: HTTP/1.1 on hyper, bounded in every dimension.
//!
//! Owns the accept loop, per-connection limits (open connections, header
//! size and read time, body size and read time), routing a request path to a
//! source, and the mapping of every outcome to a status code:
//! 202 accepted, 200 duplicate or handshake, 400 malformed, 401 bad
//! signature, 404 unknown path, 405 not POST, 408 too slow, 413 too large,
//! 415 unsupported body, 503 storage unavailable. Error bodies never carry
//! internals; details go to the log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::BodyError;
use crate::dispatch::Dispatcher;
use crate::envelope;
use crate::event::RawRequest;
use crate::ingest::{self, Ingested};
use crate::metrics::Metrics;
use crate::providers::{Admission, AdmitError, admit};
use crate::rules::{RuleSet, Source};
use crate::store::Store;

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
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: &str) -> Resp {
    reply(status, serde_json::json!({ "error": message }))
}

/// Accept connections until `shutdown` fires, then let open connections
/// finish their current request.
pub async fn run(listener: TcpListener, ingress: Arc<Ingress>, shutdown: CancellationToken) {
    let permits = Arc::new(Semaphore::new(ingress.limits.max_connections));
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => {
                    backoff = Duration::from_millis(5);
                    conn
                }
                Err(e) => {
                    // Running out of file descriptors must not end the server:
                    // wait and try again.
                    tracing::warn!(error = %e, "Accept failed; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ingress = ingress.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, ingress, shutdown).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ingress: Arc<Ingress>,
    shutdown: CancellationToken,
) {
    let limits = ingress.limits.clone();
    let service = service_fn(move |req| {
        let ingress = ingress.clone();
        async move { Ok::<_, Infallible>(handle(req, &ingress).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // `max_buf_size` alone is only checked while the head is incomplete:
        // a head that arrives in one large read would pass it.
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "Connection ended with an error.");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
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
        Some(source) => respond(req, ingress, &set, source).await,
        None => error(StatusCode::NOT_FOUND, "no source at this path"),
    };
    ingress.metrics.record_request(
        source.map_or("", |s| s.name.as_str()),
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

async fn respond(
    req: Request<Incoming>,
    ingress: &Ingress,
    set: &RuleSet,
    source: &Source,
) -> Resp {
    if req.method() != http::Method::POST {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        resp.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return resp;
    }
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ingress.limits.max_body as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let limited = Limited::new(body, ingress.limits.max_body);
    let bytes = match tokio::time::timeout(ingress.limits.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return too_large();
        }
        Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "could not read the body"),
        Err(_) => {
            let mut resp = error(StatusCode::REQUEST_TIMEOUT, "the body was not sent in time");
            resp.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return resp;
        }
    };

    let url = match (&source.url, parts.uri.query()) {
        // The configured URL stands for scheme, host and path; the query is
        // the sender's own (Twilio adds `bodySHA256=` to it), so it is kept.
        (Some(u), Some(q)) if !u.contains('?') => format!("{u}?{q}"),
        (Some(u), _) => u.clone(),
        (None, _) => public_url(&parts),
    };
    let received_at = SystemTime::now();
    let raw = RawRequest {
        url: &url,
        headers: &parts.headers,
        body: &bytes,
        now: i64::try_from(ingest::unix_ms(received_at) / 1000).unwrap_or(i64::MAX),
    };
    let query = envelope::query(parts.uri.query());
    let admission = admit(source, &raw, query, received_at);
    let event = match admission {
        Ok(Admission::Event(e)) => e,
        Ok(Admission::Handshake(h)) => {
            tracing::info!(source = %source.name, "Answered the provider's handshake.");
            let mut resp = Response::new(Full::new(Bytes::from(h.body)));
            *resp.status_mut() = StatusCode::from_u16(h.status).unwrap_or(StatusCode::OK);
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(h.content_type),
            );
            return resp;
        }
        Err(AdmitError::Verify(e)) => {
            tracing::warn!(source = %source.name, reason = %e.reason(), detail = %e, "Signature verification failed.");
            ingress
                .metrics
                .record_verify_failure(&source.name, e.reason());
            return error(StatusCode::UNAUTHORIZED, "signature verification failed");
        }
        Err(AdmitError::Body(BodyError::Unsupported(ct))) => {
            tracing::info!(source = %source.name, content_type = %ct, "Unsupported content type.");
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send application/json or application/x-www-form-urlencoded",
            );
        }
        Err(e @ AdmitError::Header(_)) => {
            tracing::info!(source = %source.name, error = %e, "Header value is not UTF-8.");
            return error(StatusCode::BAD_REQUEST, &e.to_string());
        }
        Err(AdmitError::Body(BodyError::Malformed(why))) => {
            tracing::info!(source = %source.name, error = %why, "Malformed body.");
            return error(StatusCode::BAD_REQUEST, "malformed body");
        }
    };
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
            for rule in &matched {
                ingress.metrics.record_match(rule);
            }
            reply(
                StatusCode::ACCEPTED,
                serde_json::json!({"status": "accepted", "id": id, "key": key, "deliveries": deliveries}),
            )
        }
        Ok(Ingested::Duplicate { id, key }) => {
            tracing::info!(event_id = %id, key = %key, source = %source.name, "Duplicate event ignored.");
            reply(
                StatusCode::OK,
                serde_json::json!({"status": "duplicate", "id": id, "key": key}),
            )
        }
        Err(e) => {
            tracing::error!(event_id = %event_id, source = %source.name, error = %e, "Storing the event failed; answering 503.");
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage unavailable, retry later",
            );
            resp.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
            resp
        }
    }
}

fn too_large() -> Resp {
    let mut resp = error(StatusCode::PAYLOAD_TOO_LARGE, "body too large");
    // The rest of the body is not read, so the connection cannot be reused.
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

/// The URL the sender called, as far as this process can tell: the Host
/// header plus the path and query. `X-Forwarded-Proto: https` selects the
/// scheme behind a TLS-terminating proxy; set the source's `url:` when the
/// proxy also rewrites the host or path.
fn public_url(parts: &http::request::Parts) -> String {
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = match parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    format!("{scheme}://{host}{pq}")
}
