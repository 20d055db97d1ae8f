//! Two tiny HTTP servers for hookrouter's benchmarks.
//!
//! `limit --listen ADDR [--secret S]` is the bare limit of the ingest
//! benchmark: it reads the body, verifies GitHub's `X-Hub-Signature-256`
//! (HMAC-SHA256), parses the JSON, checks `$.ref == refs/heads/main` and
//! answers 202. It stores nothing and runs nothing, so it is an upper bound
//! for any server that does the same verification on the same stack (tokio,
//! hyper 1, hmac, sha2, serde_json).
//!
//! `limit --durable FILE --listen ADDR` is the durable limit: the same, and
//! before answering 202 it appends the body to FILE and waits for the
//! `fdatasync` that covers it. One writer thread group-commits: it takes
//! every body queued while the previous sync ran, writes them in one go,
//! syncs once and answers them all. No index, no dedup, no second write:
//! the floor for any durable acknowledgement on the same disk.
//!
//! `limit --sink --listen ADDR` is a keep-alive receiver for delivery
//! benchmarks: it answers 200 to every request and counts the POSTs;
//! `GET /count` returns the count as text.

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

type Resp = Response<Full<Bytes>>;

struct Config {
    sink: bool,
    secret: Vec<u8>,
    count: AtomicU64,
    /// To the group-committing writer, in `--durable` mode.
    durable: Option<mpsc::UnboundedSender<(Bytes, oneshot::Sender<bool>)>>,
}

/// The append file starts over past this size, so a long run does not fill
/// the disk; it keeps growing between, as a log does (each sync then also
/// records the new length, as it would for any appending store).
const ROTATE_BYTES: u64 = 64 << 20;

/// Appends bodies to `file`, one `fdatasync` per batch of whatever queued
/// up while the last one ran; answers each body once its sync is done.
fn writer(
    mut file: std::fs::File,
    mut rx: mpsc::UnboundedReceiver<(Bytes, oneshot::Sender<bool>)>,
) {
    use std::io::Seek as _;
    let mut batch = Vec::new();
    let mut buf = Vec::new();
    let mut written = 0u64;
    while let Some(first) = rx.blocking_recv() {
        if written > ROTATE_BYTES {
            let _ = file.set_len(0).and_then(|()| file.rewind());
            written = 0;
        }
        batch.push(first);
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        buf.clear();
        for (body, _) in &batch {
            buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buf.extend_from_slice(body);
        }
        let ok = file.write_all(&buf).and_then(|()| file.sync_data()).is_ok();
        written += buf.len() as u64;
        for (_, reply) in batch.drain(..) {
            let _ = reply.send(ok);
        }
    }
}

fn respond(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn limit(req: Request<Incoming>, cfg: &Config) -> Resp {
    if req.method() != Method::POST {
        return respond(StatusCode::METHOD_NOT_ALLOWED, r#"{"error":"use POST"}"#);
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return respond(StatusCode::BAD_REQUEST, r#"{"error":"body"}"#);
    };
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-github-event").is_none() || header("x-github-delivery").is_none() {
        return respond(StatusCode::BAD_REQUEST, r#"{"error":"headers"}"#);
    }
    let Some(sig) = header("x-hub-signature-256")
        .and_then(|v| v.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
    else {
        return respond(StatusCode::UNAUTHORIZED, r#"{"error":"signature"}"#);
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&cfg.secret) else {
        return respond(StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"key"}"#);
    };
    mac.update(&body);
    if mac.verify_slice(&sig).is_err() {
        return respond(StatusCode::UNAUTHORIZED, r#"{"error":"signature"}"#);
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return respond(StatusCode::BAD_REQUEST, r#"{"error":"json"}"#);
    };
    if value.get("ref").and_then(|r| r.as_str()) == Some("refs/heads/main") {
        if let Some(tx) = &cfg.durable {
            let (reply, synced) = oneshot::channel();
            if tx.send((body, reply)).is_err() || synced.await != Ok(true) {
                return respond(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"write"}"#);
            }
        }
        respond(StatusCode::ACCEPTED, r#"{"status":"accepted"}"#)
    } else {
        respond(StatusCode::OK, r#"{"status":"no match"}"#)
    }
}

async fn sink(req: Request<Incoming>, cfg: &Config) -> Resp {
    if req.method() == Method::GET && req.uri().path() == "/count" {
        let n = cfg.count.load(Ordering::Acquire);
        return Response::new(Full::new(Bytes::from(n.to_string())));
    }
    // Read the whole body so the connection can be reused.
    let _ = req.into_body().collect().await;
    cfg.count.fetch_add(1, Ordering::AcqRel);
    respond(StatusCode::OK, r#"{"ok":true}"#)
}

fn usage() -> ! {
    eprintln!(
        "usage: limit --listen ADDR [--secret SECRET] [--durable FILE] | limit --sink --listen ADDR"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut listen = String::from("127.0.0.1:9100");
    let mut secret = String::from("perfsecret");
    let mut sink_mode = false;
    let mut durable_file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--secret" => secret = args.next().unwrap_or_else(|| usage()),
            "--durable" => durable_file = Some(args.next().unwrap_or_else(|| usage())),
            "--sink" => sink_mode = true,
            _ => usage(),
        }
    }
    let durable = durable_file.map(|path| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| {
                eprintln!("cannot open {path}: {e}");
                std::process::exit(2)
            });
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || writer(file, rx));
        tx
    });
    let cfg = Arc::new(Config {
        sink: sink_mode,
        secret: secret.into_bytes(),
        count: AtomicU64::new(0),
        durable,
    });
    let listener = match TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            std::process::exit(2)
        }
    };
    eprintln!(
        "{} listening on {listen}",
        if cfg.sink {
            "sink"
        } else if cfg.durable.is_some() {
            "durable limit"
        } else {
            "limit"
        }
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let cfg = cfg.clone();
                async move {
                    Ok::<_, Infallible>(if cfg.sink {
                        sink(req, &cfg).await
                    } else {
                        limit(req, &cfg).await
                    })
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
