//! HTTP plumbing shared by the webhook listener (`server`) and the admin
//! listener (`admin`).
//!
//! Owns the accept loop (connection limit, retry after a failed accept,
//! tracking every connection so shutdown waits for the requests in flight),
//! the per-connection hyper setup (header read timeout and size), and the
//! JSON replies both listeners answer with. What a request means is the
//! caller's: each connection gets a handler from the caller's `connect`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every answer is a whole body in memory.
pub type Resp = Response<Full<Bytes>>;

/// What an answer's body may be: a whole [`Resp`] body, or one that is
/// written as it goes (the console's server-sent events).
pub trait AnswerBody: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + 'static {}

impl<B> AnswerBody for B where
    B: hyper::body::Body<Data = Bytes, Error = Infallible> + Send + 'static
{
}

/// A JSON answer.
pub fn json(status: StatusCode, body: &serde_json::Value) -> Resp {
    json_text(status, body.to_string())
}

/// A JSON answer already written out (after redaction, say).
pub fn json_text(status: StatusCode, text: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// `{"error": message}`. The message is for the client: never internals.
pub fn error(status: StatusCode, message: &str) -> Resp {
    json(status, &serde_json::json!({ "error": message }))
}

/// The query string as a map; a repeated key keeps its last value.
pub fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// How a listener treats its connections.
#[derive(Debug, Clone)]
pub struct Conns {
    /// Named in log lines.
    pub name: &'static str,
    /// Most connections open at once; further clients wait to be accepted.
    /// `None`: no limit.
    pub max_connections: Option<usize>,
    /// How long a client may take to send the request line and headers.
    pub header_timeout: Duration,
    /// Largest request head; `None` keeps hyper's default.
    pub max_header_bytes: Option<usize>,
}

/// Accept connections until `shutdown` fires, answering each request with
/// the handler `connect` makes for its connection; then let open
/// connections finish their current request.
pub async fn serve<C, H, F, B>(
    listener: TcpListener,
    conns: Conns,
    shutdown: CancellationToken,
    connect: C,
) where
    C: Fn(&TcpStream) -> H,
    H: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: AnswerBody,
{
    let permits = conns.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = match &permits {
            Some(permits) => tokio::select! {
                () = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => break,
                },
            },
            None => None,
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(conn) => {
                    backoff = Duration::from_millis(5);
                    conn
                }
                Err(e) => {
                    // Running out of file descriptors must not end the
                    // listener: wait and try again.
                    tracing::warn!(listener = conns.name, error = %e, "Accept failed; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = connect(&stream);
        let conns = conns.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, &conns, handler, shutdown).await;
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn serve_connection<H, F, B>(
    stream: TcpStream,
    peer: SocketAddr,
    conns: &Conns,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: AnswerBody,
{
    let service = service_fn(move |req| {
        let answer = handler(req);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(conns.header_timeout);
    if let Some(bytes) = conns.max_header_bytes {
        // `max_buf_size` alone is only checked while the head is incomplete:
        // a head that arrives in one large read would pass it.
        builder.max_header_size(bytes).max_buf_size(bytes.max(8192));
    }
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(listener = conns.name, %peer, error = %e, "Connection ended with an error.");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
