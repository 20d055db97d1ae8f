//! The admin listener: health, readiness, metrics, and the events API.
//!
//! Owns the routes on `--admin` and their access policy: every request
//! first passes `admin_guard` (its `Host` is this listener's, and a
//! state-changing one is not from another site); then `/healthz` and
//! `/readyz` are open (load balancers probe them); `/metrics` and `/api/*`
//! need `Authorization: Bearer <token>` when `--admin-token` is set. The
//! API reads and replays through the store's narrow contract and never shows
//! a secret: configured secrets are redacted from every answer.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin_guard::Guard;
use crate::ingest;
use crate::metrics::Metrics;
use crate::reload::ReloadStatus;
use crate::rules::RuleSet;
use crate::store::{DeliveryRecord, DeliveryState, NewDelivery, Store, StoreError};

/// Everything the admin routes read.
pub struct Admin {
    pub rules: Arc<ArcSwap<RuleSet>>,
    pub store: Store,
    pub token: Option<String>,
    pub metrics: Arc<Metrics>,
    pub reload: Arc<ReloadStatus>,
    /// Which requests are answered at all.
    pub guard: Guard,
}

type Resp = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, msg: &str) -> Resp {
    json_reply(status, &json!({ "error": msg }))
}

/// Serve the admin routes until `shutdown`.
pub async fn run(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "Admin accept failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        let local = stream.local_addr().ok();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(req, &admin, local).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

fn authorized(admin: &Admin, req: &Request<Incoming>) -> bool {
    let Some(token) = &admin.token else {
        return true;
    };
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    crate::envelope::query(req.uri().query())
}

async fn handle(req: Request<Incoming>, admin: &Admin, local: Option<SocketAddr>) -> Resp {
    if let Err(refusal) = admin.guard.check(&req, local) {
        return error(refusal.status(), refusal.message());
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (method.as_str(), path.as_str()) {
        ("GET", "/healthz") => return json_reply(StatusCode::OK, &json!({"status": "ok"})),
        ("GET", "/readyz") => return ready(admin).await,
        _ => {}
    }
    if !authorized(admin, &req) {
        let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    let q = query(&req);
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let result = match (method.as_str(), segments.as_slice()) {
        ("GET", ["metrics"]) => return metrics(admin).await,
        ("GET", ["api", "status"]) => Ok(status(admin)),
        ("GET", ["api", "events"]) => {
            let before = q.get("before").cloned();
            admin
                .store
                .read(move |s| s.list_events(limit, before.as_deref()))
                .await
                .map(|events| json!({ "events": events }))
        }
        ("GET", ["api", "events", key]) => {
            let key = (*key).to_owned();
            match admin.store.read(move |s| s.get_event(&key)).await {
                Ok(Some(detail)) => Ok(json!(detail)),
                Ok(None) => return error(StatusCode::NOT_FOUND, "no such event"),
                Err(e) => Err(e),
            }
        }
        ("GET", ["api", "deliveries"]) => {
            let filter = match q.get("state").map(|s| DeliveryFilter::parse(s)) {
                None => DeliveryFilter::All,
                Some(Ok(f)) => f,
                Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
            };
            admin
                .store
                .read(move |s| list_deliveries(s, filter, limit))
                .await
                .map(|d| json!({ "deliveries": d }))
        }
        ("POST", ["api", "replay", key]) => {
            let set = admin.rules.load_full();
            match replay(
                Some(&set),
                &admin.store,
                key,
                q.get("rule").map(String::as_str),
            )
            .await
            {
                Ok(ids) => {
                    return json_reply(
                        StatusCode::ACCEPTED,
                        &json!({"status": "replayed", "deliveries": ids}),
                    );
                }
                Err(ReplayError::NotFound) => return error(StatusCode::NOT_FOUND, "no such event"),
                Err(ReplayError::Nothing) => {
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "nothing to replay: no delivery of this event (or of that rule) exists under the current rules",
                    );
                }
                Err(ReplayError::Store(e)) => Err(e),
            }
        }
        (_, ["api", ..] | ["metrics"]) => {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        _ => return error(StatusCode::NOT_FOUND, "not found"),
    };
    match result {
        Ok(value) => {
            let set = admin.rules.load();
            let text = set.redact(&value.to_string());
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "Admin API store error.");
            error(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
        }
    }
}

async fn ready(admin: &Admin) -> Resp {
    let set = admin.rules.load();
    let store_ok = admin.store.read(|s| s.queue_depth()).await.is_ok() && admin.store.is_writable();
    let ok = store_ok && !set.sources.is_empty();
    json_reply(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &json!({ "ready": ok, "store": store_ok, "sources": set.sources.len(), "rules": set.rules.len() }),
    )
}

fn status(admin: &Admin) -> serde_json::Value {
    let set = admin.rules.load();
    json!({
        "sources": set.sources.len(),
        "rules": set.rules.len(),
        "reload": admin.reload.snapshot(),
    })
}

async fn metrics(admin: &Admin) -> Resp {
    if let Ok(depth) = admin.store.read(|s| s.queue_depth()).await {
        admin.metrics.set_queue_depth(&depth);
    }
    admin.metrics.set_batches(&admin.store.batch_stats());
    let mut resp = Response::new(Full::new(Bytes::from(admin.metrics.render())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    resp
}

/// Why a replay did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no such event")]
    NotFound,
    #[error("nothing to replay")]
    Nothing,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Create fresh deliveries for an event: one per (rule, action) it had, or,
/// when it had none, the ones the current rules give it. `only_rule`
/// restricts the replay to one rule. Dedup keys are ignored.
///
/// # Errors
/// An unknown event, nothing to replay, or a store failure.
pub async fn replay(
    set: Option<&RuleSet>,
    store: &Store,
    key: &str,
    only_rule: Option<&str>,
) -> Result<Vec<u64>, ReplayError> {
    let owned = key.to_owned();
    let detail = store
        .read(move |s| s.get_event(&owned))
        .await?
        .ok_or(ReplayError::NotFound)?;
    let mut pairs: Vec<(String, u32)> = detail
        .deliveries
        .iter()
        .filter(|d| d.record.on_failure.is_none())
        .map(|d| (d.record.rule.clone(), d.record.action))
        .collect();
    pairs.sort();
    pairs.dedup();
    let mut deliveries: Vec<NewDelivery> = pairs
        .into_iter()
        .filter(|(rule, _)| only_rule.is_none_or(|r| r == rule))
        .filter_map(|(rule, action)| {
            // Under the running rules, only actions that still exist; from
            // the data file alone, what was recorded.
            let kind = match set {
                Some(set) => set
                    .rule(&rule)?
                    .actions
                    .get(action as usize)?
                    .kind
                    .action_type(),
                None => detail
                    .deliveries
                    .iter()
                    .find(|d| d.record.rule == rule && d.record.action == action)
                    .map(|d| d.record.kind)?,
            };
            Some(NewDelivery {
                kind,
                rule,
                action,
                dedup_key: None,
                on_failure: None,
            })
        })
        .collect();
    if let (Some(set), true) = (set, deliveries.is_empty() && detail.deliveries.is_empty()) {
        deliveries = ingest::plan(set, &detail.event, only_rule).0;
        for d in &mut deliveries {
            d.dedup_key = None;
        }
    }
    if deliveries.is_empty() {
        return Err(ReplayError::Nothing);
    }
    Ok(store.replay(key, deliveries).await?)
}

/// Which deliveries to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFilter {
    All,
    State(DeliveryState),
}

impl DeliveryFilter {
    /// `pending`, `leased`, `done` or `dead` (`failed` is read as `dead`).
    ///
    /// # Errors
    /// Any other word, as a message.
    pub fn parse(s: &str) -> Result<DeliveryFilter, String> {
        s.parse::<DeliveryState>()
            .map(DeliveryFilter::State)
            .map_err(|e| e.to_string())
    }
}

/// List deliveries, newest first for final states. Blocking.
///
/// # Errors
/// The store's error.
pub fn list_deliveries(
    store: &Store,
    filter: DeliveryFilter,
    limit: usize,
) -> Result<Vec<DeliveryRecord>, StoreError> {
    match filter {
        DeliveryFilter::All => store.list_deliveries(None, limit),
        DeliveryFilter::State(s) => store.list_deliveries(Some(s), limit),
    }
}
