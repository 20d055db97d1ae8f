//! `hookrouter events`, `deliveries` and `replay`: looking into the store.
//!
//! Owns the client side of the admin API and the fallback to the data file:
//! with `--admin URL` the commands ask the running server; without it they
//! open the redb file directly, which works only while no server holds it
//! (redb allows one process per file), and then replay and list through
//! `ops`, as the admin API does. Output is a table for people, or `--json`
//! for scripts, with the same fields either way.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

use crate::ops::{self, DeliveryFilter};
use crate::store::{DeliveryState, Store};

/// Where the data comes from.
#[derive(Debug, Clone)]
pub enum Target {
    Admin { url: String, token: Option<String> },
    Data(PathBuf),
}

#[derive(Debug, thiserror::Error)]
enum InspectError {
    #[error("{0}")]
    Message(String),
    #[error("the admin API answered {status}: {body}")]
    Status { status: u16, body: String },
}

fn runtime() -> Result<tokio::runtime::Runtime, InspectError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| InspectError::Message(format!("cannot start the runtime: {e}")))
}

fn open(path: &std::path::Path) -> Result<Store, InspectError> {
    if !path.exists() {
        return Err(InspectError::Message(format!(
            "no data file at {} (pass --data PATH, or --admin URL for a running server)",
            path.display()
        )));
    }
    Store::open(path).map_err(|e| {
        InspectError::Message(format!(
            "cannot open {}: {e}; if a server is running on it, pass --admin URL instead",
            path.display()
        ))
    })
}

async fn call(method: &str, url: &str, token: Option<&str>) -> Result<Value, InspectError> {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|e| InspectError::Message(e.to_string()))?;
    let mut req = client.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| InspectError::Message(format!("cannot reach {url}: {e}")))?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(InspectError::Status { status, body });
    }
    serde_json::from_str(&body)
        .map_err(|e| InspectError::Message(format!("bad answer from {url}: {e}")))
}

fn base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.starts_with("http://") || url.starts_with("https://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

fn finish(result: Result<String, InspectError>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `hookrouter events [KEY]`.
pub fn events(target: &Target, key: Option<&str>, limit: usize, json: bool) -> ExitCode {
    finish(events_inner(target, key, limit, json))
}

fn events_inner(
    target: &Target,
    key: Option<&str>,
    limit: usize,
    json: bool,
) -> Result<String, InspectError> {
    let rt = runtime()?;
    let value = match (target, key) {
        (Target::Admin { url, token }, Some(k)) => rt.block_on(call(
            "GET",
            &format!("{}/api/events/{k}", base(url)),
            token.as_deref(),
        ))?,
        (Target::Admin { url, token }, None) => rt.block_on(call(
            "GET",
            &format!("{}/api/events?limit={limit}", base(url)),
            token.as_deref(),
        ))?,
        (Target::Data(path), Some(k)) => {
            let store = open(path)?;
            match store
                .get_event(k)
                .map_err(|e| InspectError::Message(e.to_string()))?
            {
                Some(d) => serde_json::to_value(d).unwrap_or_default(),
                None => return Err(InspectError::Message(format!("no event {k}"))),
            }
        }
        (Target::Data(path), None) => {
            let store = open(path)?;
            let events = store
                .list_events(limit, None)
                .map_err(|e| InspectError::Message(e.to_string()))?;
            serde_json::json!({ "events": events })
        }
    };
    if json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ));
    }
    Ok(match key {
        Some(_) => event_detail_table(&value),
        None => events_table(&value),
    })
}

fn s(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<String>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                let w = widths.get(i).copied().unwrap_or_default();
                let _ = write!(out, "{c:<w$}  ");
            }
        }
        out.push('\n');
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect(), &mut out);
    for r in rows {
        line(r.clone(), &mut out);
    }
    out
}

fn events_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    let d = &e["deliveries"];
                    vec![
                        s(e, "key"),
                        s(e, "received_at"),
                        s(e, "source"),
                        s(e, "type"),
                        s(e, "event_id"),
                        format!(
                            "{} done, {} pending, {} dead",
                            d["done"],
                            d["pending"].as_u64().unwrap_or(0) + d["leased"].as_u64().unwrap_or(0),
                            d["dead"]
                        ),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        return "no events\n".to_owned();
    }
    table(
        &[
            "KEY",
            "RECEIVED",
            "SOURCE",
            "TYPE",
            "EVENT ID",
            "DELIVERIES",
        ],
        &rows,
    )
}

fn event_detail_table(v: &Value) -> String {
    let e = &v["event"];
    let mut out = format!(
        "event {} (id {}, type {:?}, source {}, received {})\n\n",
        s(v, "key"),
        s(e, "id"),
        s(e, "type"),
        s(e, "source"),
        s(e, "received_at")
    );
    let deliveries = v["deliveries"].as_array().cloned().unwrap_or_default();
    if deliveries.is_empty() {
        out.push_str("no deliveries (the event matched no rule)\n");
        return out;
    }
    out.push_str(&deliveries_table(&deliveries));
    for d in &deliveries {
        let attempts = d["history"].as_array().cloned().unwrap_or_default();
        if attempts.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\ndelivery {} attempts:", s(d, "id"));
        for (i, a) in attempts.iter().enumerate() {
            let at = a["at_ms"].as_u64().map_or_else(String::new, fmt_ms);
            let _ = writeln!(
                out,
                "  {}. {} {} status={} {}ms {}",
                i + 1,
                at,
                s(a, "outcome"),
                s(a, "status"),
                s(a, "duration_ms"),
                s(a, "detail").lines().next().unwrap_or("")
            );
        }
    }
    out
}

fn fmt_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(crate::clock::from_unix_ms(ms)).to_string()
}

fn deliveries_table(list: &[Value]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            vec![
                s(d, "id"),
                s(d, "state"),
                s(d, "rule"),
                format!(
                    "{} ({})",
                    d["action"].as_u64().map_or(0, |a| a + 1),
                    s(d, "kind")
                ),
                s(d, "attempts"),
                d["due_at_ms"].as_u64().map_or_else(String::new, fmt_ms),
                s(d, "event_key"),
                s(d, "last_error")
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no deliveries\n".to_owned();
    }
    table(
        &[
            "ID",
            "STATE",
            "RULE",
            "ACTION",
            "ATTEMPTS",
            "DUE",
            "EVENT",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// `hookrouter deliveries [--state S]` (`--failed` is `--state dead`).
pub fn deliveries(
    target: &Target,
    failed: bool,
    state: Option<&str>,
    limit: usize,
    json: bool,
) -> ExitCode {
    let filter = if failed {
        DeliveryFilter::State(DeliveryState::Dead)
    } else {
        match state.map(DeliveryFilter::parse) {
            None => DeliveryFilter::All,
            Some(Ok(f)) => f,
            Some(Err(e)) => return super::usage_error(&e),
        }
    };
    finish(deliveries_inner(target, filter, limit, json))
}

fn filter_word(f: DeliveryFilter) -> Option<String> {
    match f {
        DeliveryFilter::All => None,
        DeliveryFilter::State(s) => Some(s.as_str().to_owned()),
    }
}

fn deliveries_inner(
    target: &Target,
    filter: DeliveryFilter,
    limit: usize,
    json: bool,
) -> Result<String, InspectError> {
    let value = match target {
        Target::Admin { url, token } => {
            let mut u = format!("{}/api/deliveries?limit={limit}", base(url));
            if let Some(w) = filter_word(filter) {
                let _ = write!(u, "&state={w}");
            }
            runtime()?.block_on(call("GET", &u, token.as_deref()))?
        }
        Target::Data(path) => {
            let store = open(path)?;
            let list = ops::list_deliveries(&store, filter, limit)
                .map_err(|e| InspectError::Message(e.to_string()))?;
            serde_json::json!({ "deliveries": list })
        }
    };
    if json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ));
    }
    Ok(deliveries_table(
        value
            .get("deliveries")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice),
    ))
}

/// `hookrouter cancel KEY [--rule NAME]`.
pub fn cancel(target: &Target, key: &str, rule: Option<&str>, json: bool) -> ExitCode {
    finish(cancel_inner(target, key, rule, json))
}

fn cancel_inner(
    target: &Target,
    key: &str,
    rule: Option<&str>,
    json: bool,
) -> Result<String, InspectError> {
    let value = event_op(target, "cancel", key, rule, |rt, store| {
        rt.block_on(ops::cancel(store, key, rule))
            .map_err(|e| InspectError::Message(e.to_string()))
    })?;
    if json {
        return Ok(format!("{value}\n"));
    }
    let n = value.get("cancelled").and_then(Value::as_u64).unwrap_or(0);
    let m = value.get("stopping").and_then(Value::as_u64).unwrap_or(0);
    Ok(format!(
        "cancelled {n} deliveries of event {key}; {m} running, being stopped\n"
    ))
}

/// Run an operation on one event (`replay`, `cancel`): a POST to
/// `/api/OP/KEY[?rule=R]` on a running server, or `local` on the data file.
fn event_op(
    target: &Target,
    op: &str,
    key: &str,
    rule: Option<&str>,
    local: impl FnOnce(&tokio::runtime::Runtime, &Store) -> Result<Value, InspectError>,
) -> Result<Value, InspectError> {
    let rt = runtime()?;
    match target {
        Target::Admin { url, token } => {
            let mut u = format!("{}/api/{op}/{key}", base(url));
            if let Some(r) = rule {
                let _ = write!(
                    u,
                    "?rule={}",
                    form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
                );
            }
            rt.block_on(call("POST", &u, token.as_deref()))
        }
        Target::Data(path) => {
            let store = open(path)?;
            let value = local(&rt, &store);
            let _ = rt.block_on(store.close());
            value
        }
    }
}

/// `hookrouter replay KEY [--rule NAME]`.
pub fn replay(target: &Target, key: &str, rule: Option<&str>, json: bool) -> ExitCode {
    finish(replay_inner(target, key, rule, json))
}

fn replay_inner(
    target: &Target,
    key: &str,
    rule: Option<&str>,
    json: bool,
) -> Result<String, InspectError> {
    let value = event_op(target, "replay", key, rule, |rt, store| {
        let ids = rt
            .block_on(ops::replay(None, store, key, rule))
            .map_err(|e| InspectError::Message(e.to_string()))?;
        Ok(serde_json::json!({ "status": "replayed", "deliveries": ids }))
    })?;
    if json {
        return Ok(format!("{value}\n"));
    }
    let n = value
        .get("deliveries")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let when = match target {
        Target::Admin { .. } => "they run now",
        Target::Data(_) => "they run when the server next starts",
    };
    Ok(format!(
        "replayed event {key}: {n} new deliveries; {when}\n"
    ))
}
