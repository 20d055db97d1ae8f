//! The admin listener: health, readiness, metrics, and the events API.
//!
//! Owns the routes on `--admin` and their access policy: every request
//! first passes `admin_guard` (its `Host` is this listener's, and a
//! state-changing one is not from another site); then `/healthz` and
//! `/readyz` are open (load balancers probe them); `/metrics` and `/api/*`
//! need `Authorization: Bearer <token>` when `--admin-token` is set. The
//! API reads through the store's narrow contract, replays and lists
//! deliveries through `ops` (as the command line does), and never shows a
//! secret: configured secrets are redacted from every answer. Paths under
//! `/ui` go to the `console` after the same guard.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin_guard::Guard;
use crate::console::{self, Console};
use crate::http_util::{self, Conns, Resp, error};
use crate::metrics::Metrics;
use crate::ops::{self, DeliveryFilter, ReplayError};
use crate::reload::ReloadStatus;
use crate::rules::RuleSet;
use crate::store::Store;

/// Everything the admin routes read.
pub struct Admin {
    pub rules: Arc<ArcSwap<RuleSet>>,
    pub store: Store,
    pub token: Option<String>,
    pub metrics: Arc<Metrics>,
    pub reload: Arc<ReloadStatus>,
    /// Which requests are answered at all.
    pub guard: Guard,
    /// The web console under `/ui/`; `None` with `--no-console`.
    pub console: Option<Arc<Console>>,
}

/// Serve the admin routes until `shutdown`.
pub async fn run(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let conns = Conns {
        name: "admin",
        max_connections: None,
        header_timeout: std::time::Duration::from_secs(10),
        max_header_bytes: None,
    };
    http_util::serve(listener, conns, shutdown, |stream| {
        // The address this connection reached is one the Host check accepts.
        let local = stream.local_addr().ok();
        let admin = admin.clone();
        move |req| {
            let admin = admin.clone();
            async move {
                match &admin.console {
                    // Its pages answer in HTML, behind the same guard.
                    Some(console) if console::owns(req.uri().path()) => {
                        let verdict = admin.guard.check(&req, local);
                        console.handle(req, verdict).await
                    }
                    _ => handle(req, &admin, local).await.map(BodyExt::boxed),
                }
            }
        }
    })
    .await;
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

async fn handle(req: Request<Incoming>, admin: &Admin, local: Option<SocketAddr>) -> Resp {
    if let Err(refusal) = admin.guard.check(&req, local) {
        return error(refusal.status(), refusal.message());
    }
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (method.as_str(), path.as_str()) {
        ("GET", "/healthz") => return http_util::json(StatusCode::OK, &json!({"status": "ok"})),
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
    let q = http_util::query(req.uri());
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
                .read(move |s| ops::list_deliveries(s, filter, limit))
                .await
                .map(|d| json!({ "deliveries": d }))
        }
        ("POST", ["api", "replay", key]) => {
            let set = admin.rules.load_full();
            match ops::replay(
                Some(&set),
                &admin.store,
                key,
                q.get("rule").map(String::as_str),
            )
            .await
            {
                Ok(ids) => {
                    return http_util::json(
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
        ("POST", ["api", "cancel", key]) => {
            match ops::cancel(&admin.store, key, q.get("rule").map(String::as_str)).await {
                Ok(value) => return http_util::json(StatusCode::OK, &value),
                Err(ops::CancelError::NotFound) => {
                    return error(StatusCode::NOT_FOUND, "no such event");
                }
                Err(ops::CancelError::Store(e)) => Err(e),
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
            http_util::json_text(StatusCode::OK, set.redact(&value.to_string()))
        }
        Err(e) => {
            tracing::error!(error = %e, "Admin API store error.");
            error(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
        }
    }
}

async fn ready(admin: &Admin) -> Resp {
    let set = admin.rules.load();
    // A real read, so a database that came back is noticed here without a
    // webhook having to fail first.
    let store_ok = admin.store.read(|s| s.queue_depth()).await.is_ok() && admin.store.is_writable();
    let ok = store_ok && !set.sources.is_empty();
    let reason = match (ok, store_ok) {
        (true, _) => None,
        (false, false) => Some("store unreachable"),
        (false, true) => Some("no source loaded"),
    };
    let mut body = json!({
        "ready": ok,
        "store": store_ok,
        "store_url": admin.store.describe(),
        "sources": set.sources.len(),
        "rules": set.rules.len(),
        "rules_digest": set.digest(),
    });
    if let (Some(reason), Some(map)) = (reason, body.as_object_mut()) {
        map.insert("reason".to_owned(), json!(reason));
    }
    http_util::json(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &body,
    )
}

fn status(admin: &Admin) -> serde_json::Value {
    let set = admin.rules.load();
    json!({
        "sources": set.sources.len(),
        "rules": set.rules.len(),
        "rules_digest": set.digest(),
        "store": {
            "engine": admin.store.engine(),
            "url": admin.store.describe(),
            "writable": admin.store.is_writable(),
        },
        "reload": admin.reload.snapshot(),
    })
}

async fn metrics(admin: &Admin) -> Resp {
    if let Ok(depth) = admin.store.read(|s| s.queue_depth()).await {
        admin.metrics.set_queue_depth(&depth);
    }
    admin.metrics.set_batches(&admin.store.batch_stats());
    admin.metrics.set_store(
        admin.store.engine(),
        admin.store.commit_latency(),
        admin.store.pool_status(),
    );
    let mut resp = Response::new(Full::new(Bytes::from(admin.metrics.render())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    resp
}
