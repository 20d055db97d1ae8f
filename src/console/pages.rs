//! The console's pages and form actions: what each reads and the view model
//! its template gets.
//!
//! Reads go through `Store::read` on a blocking thread and the same store
//! functions the admin API calls; replay and cancel go through `ops`, as the
//! API and the command line do. View models hold plain text only (times
//! already written out, states in words), which the templates escape; every
//! string in them passes `redact` before rendering, and header values that
//! are credentials are never shown at all.

use std::collections::{BTreeMap, BTreeSet};

use http::StatusCode;
use serde::Serialize;

use super::{Answer, Console, Form, View, auth, json_answer, redirect, whole};
use crate::clock;
use crate::dryrun;
use crate::ops::{self, ReplayError};
use crate::rules::{ActionList, EventPattern, RuleSet, SourceSel};
use crate::store::{
    Attempt, AttemptOutcome, DeliveryDetail, DeliveryRecord, DeliveryState, EventDetail,
    EventSummary, Store, StoreError,
};

/// Rows on one Events page.
const PAGE: usize = 50;
/// Events read per store call while filtering.
const BATCH: usize = 200;
/// Most events one Events page looks through for matches; past it, the
/// page ends with an "older" link that carries on from there.
const SCAN: usize = 5000;
/// The body shown on the event page is cut here (the raw download is whole).
pub const BODY_SHOWN: usize = 256 * 1024;
/// Attempt output shown in a table cell.
const EXCERPT: usize = 1000;
/// Deliveries per table on the Deliveries page.
const DELIVERIES: usize = 100;
/// Most (event, rule) pairs one bulk replay replays.
pub const BULK: usize = 100;

/// Replace every configured secret in every string of `value`.
pub fn redact(set: &RuleSet, value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => {
            let r = set.redact(s);
            if r != *s {
                *s = r;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| redact(set, v)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| redact(set, v)),
        _ => {}
    }
}

fn to_json(v: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// A state as the console says it.
pub fn state_word(s: DeliveryState) -> &'static str {
    match s {
        DeliveryState::Done => "delivered",
        DeliveryState::Leased => "running",
        other => other.as_str(),
    }
}

fn time_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(clock::from_unix_ms(ms)).to_string()
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text.get(..end).unwrap_or(""), true)
}

fn excerpt(text: &str) -> String {
    match cut(text, EXCERPT) {
        (t, false) => t.to_owned(),
        (t, true) => format!("{t}…"),
    }
}

/// Header (and query parameter) names whose values are credentials or
/// signatures: never shown, whatever the store kept.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "authorization",
        "cookie",
        "token",
        "secret",
        "signature",
        "password",
        "api-key",
        "apikey",
        "api_key",
    ]
    .iter()
    .any(|w| n.contains(w))
}

fn pairs(map: &BTreeMap<String, String>) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| {
            let v = if secret_name(k) {
                "[redacted]".to_owned()
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

fn event_href(key: &str) -> String {
    format!("/ui/events/{}", encode(key))
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `path?k=v&…` with the non-empty values of `params`.
fn with_query(path: &str, params: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in params {
        if !v.is_empty() {
            q.append_pair(k, v);
            any = true;
        }
    }
    if any {
        format!("{path}?{}", q.finish())
    } else {
        path.to_owned()
    }
}

/// A count of deliveries in one state, for a row's states cell.
#[derive(Debug, Serialize)]
pub struct StateCount {
    pub word: &'static str,
    pub count: u32,
}

/// One line of the Events table (and of the live stream).
#[derive(Debug, Serialize)]
pub struct Row {
    pub key: String,
    pub href: String,
    pub received_at: String,
    pub source: String,
    pub kind: String,
    pub event_id: String,
    pub rules: Vec<String>,
    pub states: Vec<StateCount>,
}

impl Row {
    pub fn of_detail(d: &EventDetail) -> Row {
        let mut rules: Vec<String> = Vec::new();
        let mut counts: BTreeMap<usize, u32> = BTreeMap::new();
        for del in &d.deliveries {
            if !rules.contains(&del.record.rule) {
                rules.push(del.record.rule.clone());
            }
            let i = DeliveryState::ALL
                .iter()
                .position(|s| *s == del.record.state)
                .unwrap_or(0);
            *counts.entry(i).or_default() += 1;
        }
        let states = counts
            .into_iter()
            .filter_map(|(i, count)| {
                DeliveryState::ALL.get(i).map(|s| StateCount {
                    word: state_word(*s),
                    count,
                })
            })
            .collect();
        Row {
            key: d.key.clone(),
            href: event_href(&d.key),
            received_at: d.event.received_at.clone(),
            source: d.event.source.clone(),
            kind: d.event.kind.clone(),
            event_id: d.event.id.clone(),
            rules,
            states,
        }
    }
}

/// The Events page's filters, as given.
#[derive(Debug, Default, Serialize)]
struct EventFilters {
    source: String,
    #[serde(rename = "type")]
    kind: String,
    state: String,
    since: String,
}

/// A choice in a state filter.
#[derive(Debug, Serialize)]
struct StateOption {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

fn state_options(current: Option<DeliveryState>) -> Vec<StateOption> {
    DeliveryState::ALL
        .iter()
        .map(|s| StateOption {
            value: s.as_str(),
            label: state_word(*s),
            selected: current == Some(*s),
        })
        .collect()
}

/// `since`: unix seconds or an RFC 3339 time (seconds and zone optional,
/// read as UTC), as unix ms.
fn parse_since(s: &str) -> Option<u64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok().map(|secs| secs.saturating_mul(1000));
    }
    let padded = if s.len() == 16 {
        format!("{s}:00")
    } else {
        s.to_owned()
    };
    humantime::parse_rfc3339_weak(&padded)
        .ok()
        .map(clock::unix_ms)
}

struct Scan {
    rows: Vec<Row>,
    older: Option<String>,
}

/// Events newest first from `before`, keeping those `keep` accepts, until a
/// page is full, the events run out, one older than `since_ms` is reached,
/// or `SCAN` were looked at. Blocking.
fn scan(
    s: &Store,
    before: Option<String>,
    since_ms: Option<u64>,
    keep: impl Fn(&EventSummary) -> bool,
) -> Result<Scan, StoreError> {
    let mut cursor = before;
    let mut picked: Vec<String> = Vec::new();
    let mut scanned = 0;
    let older = loop {
        let batch = s.list_events(BATCH, cursor.as_deref())?;
        let n = batch.len();
        let mut reached_since = false;
        for ev in batch {
            scanned += 1;
            cursor = Some(ev.key.clone());
            if since_ms.is_some_and(|since| ev.received_ms < since) {
                reached_since = true;
                break;
            }
            if keep(&ev) {
                picked.push(ev.key);
                if picked.len() == PAGE {
                    break;
                }
            }
        }
        if picked.len() == PAGE {
            break picked.last().cloned();
        }
        if reached_since || n < BATCH {
            break None;
        }
        if scanned >= SCAN {
            break cursor.clone();
        }
    };
    let mut rows = Vec::with_capacity(picked.len());
    for key in &picked {
        if let Some(detail) = s.get_event(key)? {
            rows.push(Row::of_detail(&detail));
        }
    }
    Ok(Scan { rows, older })
}

/// One attempt as the event page shows it.
#[derive(Debug, Serialize)]
struct AttemptView {
    n: usize,
    at: String,
    duration: String,
    outcome: &'static str,
    status: String,
    excerpt: String,
    next_retry: String,
}

#[derive(Debug, Serialize)]
struct GroupView {
    key: String,
    limit: u32,
    on_busy: &'static str,
}

#[derive(Debug, Serialize)]
struct DeliveryView {
    id: u64,
    list: &'static str,
    action: String,
    state: &'static str,
    attempts: Vec<AttemptView>,
    created: String,
    /// When it runs next, while pending.
    next: Option<String>,
    last_error: Option<String>,
    group: Option<GroupView>,
    waited: bool,
    cancel: Option<String>,
}

fn attempt_views(d: &DeliveryDetail) -> Vec<AttemptView> {
    let h: &[Attempt] = &d.history;
    h.iter()
        .enumerate()
        .map(|(i, a)| {
            let next_retry = match a.outcome {
                AttemptOutcome::Ok => "none: delivered".to_owned(),
                AttemptOutcome::Dead => "none: dead".to_owned(),
                AttemptOutcome::Retry => match h.get(i + 1) {
                    Some(next) => format!("retried {}", time_ms(next.at_ms)),
                    None if d.record.state == DeliveryState::Pending => time_ms(d.record.due_at_ms),
                    None => format!("none: {}", state_word(d.record.state)),
                },
            };
            AttemptView {
                n: i + 1,
                at: time_ms(a.at_ms),
                duration: format!("{} ms", a.duration_ms),
                outcome: a.outcome.as_str(),
                status: a
                    .status
                    .map_or_else(|| "none".to_owned(), |s| s.to_string()),
                excerpt: a.detail.as_deref().map(excerpt).unwrap_or_default(),
                next_retry,
            }
        })
        .collect()
}

fn list_word(list: ActionList) -> &'static str {
    match list {
        ActionList::Actions => "actions",
        ActionList::OnFailure => "on_failure",
        ActionList::OnCancel => "on_cancel",
    }
}

fn delivery_view(d: &DeliveryDetail) -> DeliveryView {
    let r = &d.record;
    let mut action = format!("{} #{}", r.kind, r.action + 1);
    for step in &r.then {
        action.push_str(&format!(" › then #{}", step + 1));
    }
    DeliveryView {
        id: r.id,
        list: list_word(r.list),
        action,
        state: state_word(r.state),
        attempts: attempt_views(d),
        created: time_ms(r.created_ms),
        next: (r.state == DeliveryState::Pending).then(|| time_ms(r.due_at_ms)),
        last_error: r.last_error.as_deref().map(excerpt),
        group: r.group.as_ref().map(|g| GroupView {
            key: g.key.clone(),
            limit: g.limit,
            on_busy: match g.on_busy {
                crate::rules::OnBusy::Queue => "queue",
                crate::rules::OnBusy::Replace => "replace",
                crate::rules::OnBusy::Cancel => "cancel",
                crate::rules::OnBusy::Skip => "skip",
            },
        }),
        waited: r.waited,
        cancel: r.cancel.clone(),
    }
}

#[derive(Debug, Serialize)]
struct RuleSection {
    name: String,
    /// Still in the running rules (a replay needs it).
    current: bool,
    deliveries: Vec<DeliveryView>,
    unfinished: bool,
}

#[derive(Debug, Serialize)]
struct Unmatched {
    name: String,
    origin: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct EventPage {
    key: String,
    href: String,
    raw_href: String,
    received_at: String,
    source: String,
    provider: String,
    kind: String,
    event_id: String,
    dedup: Option<String>,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
    body: String,
    body_bytes: usize,
    body_truncated: bool,
    rules: Vec<RuleSection>,
    unmatched: Vec<Unmatched>,
    unfinished: bool,
    notice: Option<String>,
}

fn event_page(set: &RuleSet, d: &EventDetail, notice: Option<String>) -> EventPage {
    let pretty = serde_json::to_string_pretty(d.event.body.value()).unwrap_or_default();
    let (shown, truncated) = cut(&pretty, BODY_SHOWN);
    let mut rules: Vec<RuleSection> = Vec::new();
    for del in &d.deliveries {
        let view = delivery_view(del);
        let open = !del.record.state.is_final();
        match rules.iter_mut().find(|r| r.name == del.record.rule) {
            Some(section) => {
                section.unfinished |= open;
                section.deliveries.push(view);
            }
            None => rules.push(RuleSection {
                name: del.record.rule.clone(),
                current: set.rule(&del.record.rule).is_some(),
                deliveries: vec![view],
                unfinished: open,
            }),
        }
    }
    let unmatched = dryrun::explain_event(set, &d.event)
        .into_iter()
        .filter(|r| !r.matched)
        .map(|r| Unmatched {
            name: r.name,
            origin: r.origin,
            reason: r.reason.unwrap_or_default(),
        })
        .collect();
    EventPage {
        key: d.key.clone(),
        href: event_href(&d.key),
        raw_href: format!("{}/raw", event_href(&d.key)),
        received_at: d.event.received_at.clone(),
        source: d.event.source.clone(),
        provider: d.event.provider.clone(),
        kind: d.event.kind.clone(),
        event_id: d.event.id.clone(),
        dedup: d.dedup.as_ref().map(|k| format!("{} / {}", k.source, k.id)),
        headers: pairs(&d.event.headers),
        query: pairs(&d.event.query),
        body: shown.to_owned(),
        body_bytes: pretty.len(),
        body_truncated: truncated,
        unfinished: rules.iter().any(|r| r.unfinished),
        rules,
        unmatched,
        notice,
    }
}

/// One line of a Deliveries table.
#[derive(Debug, Serialize)]
struct DeliveryRow {
    id: u64,
    event_key: String,
    event_href: String,
    source: Option<String>,
    rule: String,
    action: String,
    state: &'static str,
    attempts: u32,
    when: String,
    last_error: String,
}

fn delivery_row(r: &DeliveryRecord, source: Option<String>) -> DeliveryRow {
    DeliveryRow {
        id: r.id,
        event_key: r.event_key.clone(),
        event_href: event_href(&r.event_key),
        source,
        rule: r.rule.clone(),
        action: format!("{} #{}", r.kind, r.action + 1),
        state: state_word(r.state),
        attempts: r.attempts,
        when: if r.state == DeliveryState::Pending {
            format!("due {}", time_ms(r.due_at_ms))
        } else {
            format!("created {}", time_ms(r.created_ms))
        },
        last_error: r.last_error.as_deref().map(excerpt).unwrap_or_default(),
    }
}

/// The Deliveries page's filters.
#[derive(Debug, Default, Clone, Serialize)]
struct DeliveryFilters {
    state: String,
    source: String,
    rule: String,
}

impl DeliveryFilters {
    fn from_pairs(get: impl Fn(&str) -> Option<String>) -> DeliveryFilters {
        let g = |k: &str| get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        DeliveryFilters {
            state: g("state"),
            source: g("source"),
            rule: g("rule"),
        }
    }
}

/// Dead deliveries passing `f`'s rule and source filters, newest first,
/// with their event's source when the filter needs it. Blocking.
fn dead_list(
    s: &Store,
    f: &DeliveryFilters,
    limit: usize,
) -> Result<Vec<(DeliveryRecord, Option<String>)>, StoreError> {
    let records = s.list_deliveries(Some(DeliveryState::Dead), limit.saturating_mul(4))?;
    filter_records(s, records, f, limit)
}

/// `records` passing `f`'s rule and source filters, at most `limit`. The
/// source is the event's: read once per event, and only when filtered on.
fn filter_records(
    s: &Store,
    records: Vec<DeliveryRecord>,
    f: &DeliveryFilters,
    limit: usize,
) -> Result<Vec<(DeliveryRecord, Option<String>)>, StoreError> {
    let mut sources: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for r in records {
        if out.len() == limit {
            break;
        }
        if !f.rule.is_empty() && r.rule != f.rule {
            continue;
        }
        let source = if f.source.is_empty() {
            None
        } else {
            if !sources.contains_key(&r.event_key) {
                let src = s.get_event(&r.event_key)?.map(|d| d.event.source);
                sources.insert(r.event_key.clone(), src);
            }
            let src = sources.get(&r.event_key).cloned().flatten();
            if src.as_deref() != Some(f.source.as_str()) {
                continue;
            }
            src
        };
        out.push((r, source));
    }
    Ok(out)
}

/// What a bulk replay would replay: each (event, rule) once.
#[derive(Debug, Serialize)]
struct BulkItem {
    value: String,
    event_key: String,
    event_href: String,
    rule: String,
    deliveries: Vec<u64>,
}

fn bulk_items(dead: &[(DeliveryRecord, Option<String>)]) -> Vec<BulkItem> {
    let mut items: Vec<BulkItem> = Vec::new();
    for (r, _) in dead {
        // The dead delivery of a reaction replays with its rule's actions.
        let full = items.len() >= BULK;
        match items
            .iter_mut()
            .find(|i| i.event_key == r.event_key && i.rule == r.rule)
        {
            Some(i) => i.deliveries.push(r.id),
            None if !full => items.push(BulkItem {
                value: format!("{}:{}", r.event_key, r.rule),
                event_key: r.event_key.clone(),
                event_href: event_href(&r.event_key),
                rule: r.rule.clone(),
                deliveries: vec![r.id],
            }),
            None => {}
        }
    }
    items
}

fn pattern_text(p: &EventPattern) -> String {
    match p {
        EventPattern::Any => "*".to_owned(),
        EventPattern::Exact(s) => s.clone(),
        EventPattern::Glob(g) => g.glob().glob().to_owned(),
    }
}

impl Console {
    pub(super) async fn events(&self, view: &View, q: &BTreeMap<String, String>) -> Answer {
        let get = |k: &str| q.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        let filters = EventFilters {
            source: get("source"),
            kind: get("type"),
            state: get("state"),
            since: get("since"),
        };
        let state = if filters.state.is_empty() {
            None
        } else {
            match ops::DeliveryFilter::parse(&filters.state) {
                Ok(ops::DeliveryFilter::State(s)) => Some(s),
                Ok(ops::DeliveryFilter::All) => None,
                Err(e) => return self.message(StatusCode::BAD_REQUEST, "Bad filter", &e),
            }
        };
        let since_ms = if filters.since.is_empty() {
            None
        } else {
            match parse_since(&filters.since) {
                Some(ms) => Some(ms),
                None => {
                    return self.message(
                        StatusCode::BAD_REQUEST,
                        "Bad filter",
                        "since: give an RFC 3339 time (2024-05-01T12:00:00Z) or unix seconds",
                    );
                }
            }
        };
        let before = q.get("before").filter(|b| !b.is_empty()).cloned();
        let first_page = before.is_none();
        let (source, kind) = (filters.source.clone(), filters.kind.clone());
        let read = self
            .store
            .read(move |s| {
                scan(s, before, since_ms, |ev| {
                    (source.is_empty() || ev.source == source)
                        && (kind.is_empty() || ev.kind == kind)
                        && state.is_none_or(|st| {
                            let mut c = ev.deliveries;
                            *c.slot(st) > 0
                        })
                })
            })
            .await;
        let scan = match read {
            Ok(s) => s,
            Err(e) => return self.store_error(&e),
        };
        let params = |before: &str| {
            with_query(
                "/ui/",
                &[
                    ("source", &filters.source),
                    ("type", &filters.kind),
                    ("state", &filters.state),
                    ("since", &filters.since),
                    ("before", before),
                ],
            )
        };
        let older = scan.older.as_deref().map(params);
        // Live rows join only the newest page, and only filters a new
        // event can be judged by at once.
        let stream = (first_page && state.is_none()).then(|| {
            with_query(
                "/ui/stream",
                &[("source", &filters.source), ("type", &filters.kind)],
            )
        });
        let set = self.rules.load();
        let sources: Vec<String> = set.sources.iter().map(|s| s.name.clone()).collect();
        let filtered = !(filters.source.is_empty()
            && filters.kind.is_empty()
            && filters.state.is_empty()
            && filters.since.is_empty());
        let page = serde_json::json!({
            "events": to_json(&scan.rows),
            "filters": to_json(&filters),
            "filtered": filtered,
            "states": to_json(&state_options(state)),
            "sources": sources,
            "older": older,
            "stream": stream,
            "newest": (!first_page).then(|| params("")),
        });
        self.render(StatusCode::OK, "events.html", view, page)
    }

    pub(super) async fn event(
        &self,
        view: &View,
        key: &str,
        q: &BTreeMap<String, String>,
    ) -> Answer {
        let owned = key.to_owned();
        let detail = match self.store.read(move |s| s.get_event(&owned)).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return self.message(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "There is no such event.",
                );
            }
            Err(e) => return self.store_error(&e),
        };
        let notice = if let Some(n) = q.get("replayed").and_then(|n| n.parse::<u64>().ok()) {
            Some(format!("Replayed: {n} new deliveries."))
        } else {
            q.get("cancelled")
                .and_then(|n| n.parse::<u64>().ok())
                .map(|n| format!("Cancelled: {n} deliveries."))
        };
        let set = self.rules.load_full();
        // The dry run renders templates: off the async threads.
        let page = tokio::task::spawn_blocking(move || to_json(&event_page(&set, &detail, notice)))
            .await
            .unwrap_or_default();
        self.render(StatusCode::OK, "event.html", view, page)
    }

    pub(super) async fn raw(&self, key: &str) -> Answer {
        let owned = key.to_owned();
        let detail = match self.store.read(move |s| s.get_event(&owned)).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return self.message(
                    StatusCode::NOT_FOUND,
                    "Not found",
                    "There is no such event.",
                );
            }
            Err(e) => return self.store_error(&e),
        };
        let text = serde_json::to_string(detail.event.body.value()).unwrap_or_default();
        let text = self.rules.load().redact(&text);
        let mut resp = whole(StatusCode::OK, "application/json", text);
        // Only the ULID's characters in the file name.
        let name: String = detail
            .key
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        if let Ok(v) =
            http::HeaderValue::from_str(&format!("attachment; filename=\"event-{name}.json\""))
        {
            resp.headers_mut()
                .insert(http::header::CONTENT_DISPOSITION, v);
        }
        resp
    }

    pub(super) async fn deliveries(&self, view: &View, q: &BTreeMap<String, String>) -> Answer {
        let filters = DeliveryFilters::from_pairs(|k| q.get(k).cloned());
        let state = if filters.state.is_empty() {
            None
        } else {
            match ops::DeliveryFilter::parse(&filters.state) {
                Ok(ops::DeliveryFilter::State(s)) => Some(s),
                Ok(ops::DeliveryFilter::All) => None,
                Err(e) => return self.message(StatusCode::BAD_REQUEST, "Bad filter", &e),
            }
        };
        let f = filters.clone();
        let read = self
            .store
            .read(move |s| {
                let dead = dead_list(s, &f, DELIVERIES)?;
                // Dead letters have their own table, above.
                let others = match state {
                    Some(DeliveryState::Dead) => Vec::new(),
                    _ => {
                        let filter =
                            state.map_or(ops::DeliveryFilter::All, ops::DeliveryFilter::State);
                        let records: Vec<DeliveryRecord> =
                            ops::list_deliveries(s, filter, DELIVERIES.saturating_mul(4))?
                                .into_iter()
                                .filter(|r| r.state != DeliveryState::Dead)
                                .collect();
                        filter_records(s, records, &f, DELIVERIES)?
                    }
                };
                Ok((dead, others))
            })
            .await;
        let (dead, others) = match read {
            Ok(x) => x,
            Err(e) => return self.store_error(&e),
        };
        let notice = match (
            q.get("replayed").and_then(|n| n.parse::<u64>().ok()),
            q.get("failed").and_then(|n| n.parse::<u64>().ok()),
        ) {
            (Some(n), Some(f)) if f > 0 => Some(format!(
                "Replayed {n} (event, rule) pairs; {f} could not be replayed."
            )),
            (Some(n), _) => Some(format!("Replayed {n} (event, rule) pairs.")),
            _ => None,
        };
        let rows = |list: &[(DeliveryRecord, Option<String>)]| -> Vec<DeliveryRow> {
            list.iter()
                .map(|(r, src)| delivery_row(r, src.clone()))
                .collect()
        };
        let page = serde_json::json!({
            "dead": to_json(&rows(&dead)),
            "deliveries": to_json(&rows(&others)),
            "filters": to_json(&filters),
            "states": to_json(&state_options(state)),
            "notice": notice,
            "bulk_max": BULK,
        });
        self.render(StatusCode::OK, "deliveries.html", view, page)
    }

    pub(super) async fn status(&self, view: &View) -> Answer {
        let depth = match self.store.read(|s| s.queue_depth()).await {
            Ok(d) => d,
            Err(e) => return self.store_error(&e),
        };
        let set = self.rules.load();
        let sources: Vec<serde_json::Value> = set
            .sources
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "provider": s.provider.name(),
                    "path": s.path,
                    "origin": s.origin.to_string(),
                })
            })
            .collect();
        let rules: Vec<serde_json::Value> = set
            .rules
            .iter()
            .map(|r| {
                let sources = match &r.sources {
                    SourceSel::Any => "any".to_owned(),
                    SourceSel::Named(n) => n.join(", "),
                };
                let events: Vec<String> = r.events.iter().map(pattern_text).collect();
                serde_json::json!({
                    "name": r.name,
                    "origin": r.origin.to_string(),
                    "sources": sources,
                    "events": events.join(", "),
                    "actions": r.actions.len(),
                })
            })
            .collect();
        let queue: Vec<serde_json::Value> = DeliveryState::ALL
            .iter()
            .map(|s| serde_json::json!({ "state": state_word(*s), "count": depth.get(*s) }))
            .collect();
        let page = serde_json::json!({
            "sources": sources,
            "rules": rules,
            "reload": to_json(&self.reload.snapshot()),
            "queue": queue,
            "store": { "engine": self.store.engine(), "name": self.store_name, "writable": self.store.is_writable() },
            "version": env!("CARGO_PKG_VERSION"),
        });
        self.render(StatusCode::OK, "status.html", view, page)
    }

    pub(super) async fn replay(&self, key: &str, form: &Form, fetch: bool) -> Answer {
        let set = self.rules.load_full();
        let rule = form.non_empty("rule");
        match ops::replay(Some(&set), &self.store, key, rule).await {
            Ok(ids) => {
                tracing::info!(key = %key, rule = rule.map(tracing::field::display), deliveries = ids.len(), "Replayed from the console.");
                if fetch {
                    json_answer(
                        StatusCode::OK,
                        &serde_json::json!({
                            "message": format!("Replayed: {} new deliveries.", ids.len()),
                            "deliveries": ids,
                        }),
                    )
                } else {
                    redirect(&format!("{}?replayed={}", event_href(key), ids.len()))
                }
            }
            Err(ReplayError::NotFound) => self.refuse(fetch, StatusCode::NOT_FOUND, "There is no such event."),
            Err(ReplayError::Nothing) => self.refuse(
                fetch,
                StatusCode::UNPROCESSABLE_ENTITY,
                "Nothing to replay: no delivery of this event (or of that rule) exists under the current rules.",
            ),
            Err(ReplayError::Store(e)) => {
                tracing::error!(error = %e, "Console replay failed.");
                self.refuse(fetch, StatusCode::SERVICE_UNAVAILABLE, "The store could not be written; try again shortly.")
            }
        }
    }

    pub(super) async fn cancel(&self, key: &str, form: &Form, fetch: bool) -> Answer {
        let rule = form.non_empty("rule");
        match ops::cancel(&self.store, key, rule).await {
            Ok(value) => {
                let n = value
                    .get("cancelled")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                tracing::info!(key = %key, rule = rule.map(tracing::field::display), cancelled = n, "Cancelled from the console.");
                if fetch {
                    json_answer(
                        StatusCode::OK,
                        &serde_json::json!({ "message": format!("Cancelled: {n} deliveries."), "cancelled": n }),
                    )
                } else {
                    redirect(&format!("{}?cancelled={n}", event_href(key)))
                }
            }
            Err(ops::CancelError::NotFound) => {
                self.refuse(fetch, StatusCode::NOT_FOUND, "There is no such event.")
            }
            Err(ops::CancelError::Store(e)) => {
                tracing::error!(error = %e, "Console cancel failed.");
                self.refuse(
                    fetch,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The store could not be written; try again shortly.",
                )
            }
        }
    }

    /// A form action's refusal: JSON for a script, a page otherwise.
    fn refuse(&self, fetch: bool, status: StatusCode, text: &str) -> Answer {
        if fetch {
            json_answer(status, &serde_json::json!({ "message": text }))
        } else {
            self.message(status, "Not done", text)
        }
    }

    /// The bulk replay of dead letters: without `confirm=yes`, a page
    /// listing what would be replayed (at most `BULK` pairs) with a form
    /// that confirms exactly those; with it, replay the listed pairs.
    pub(super) async fn bulk_replay(&self, view: &View, form: &Form) -> Answer {
        if form.get("confirm") == Some("yes") {
            let items: BTreeSet<(String, String)> = form
                .all("item")
                .filter_map(|v| v.split_once(':'))
                .map(|(k, r)| (k.to_owned(), r.to_owned()))
                .take(BULK)
                .collect();
            let set = self.rules.load_full();
            let (mut done, mut failed) = (0u64, 0u64);
            for (key, rule) in &items {
                match ops::replay(Some(&set), &self.store, key, Some(rule)).await {
                    Ok(_) => done += 1,
                    Err(e) => {
                        tracing::warn!(key = %key, rule = %rule, error = %e, "Bulk replay: one pair was not replayed.");
                        failed += 1;
                    }
                }
            }
            tracing::info!(replayed = done, failed, "Bulk replay from the console.");
            return redirect(&format!("/ui/deliveries?replayed={done}&failed={failed}"));
        }
        let filters = DeliveryFilters::from_pairs(|k| form.get(k).map(str::to_owned));
        let f = filters.clone();
        let read = self
            .store
            .read(move |s| dead_list(s, &f, BULK.saturating_mul(4)))
            .await;
        let dead = match read {
            Ok(d) => d,
            Err(e) => return self.store_error(&e),
        };
        let items = bulk_items(&dead);
        let page = serde_json::json!({
            "items": to_json(&items),
            "filters": to_json(&filters),
            "max": BULK,
        });
        self.render(StatusCode::OK, "confirm.html", view, page)
    }

    pub(super) fn login_page(&self, status: StatusCode, failed: bool) -> Answer {
        if !self.auth.required() {
            return redirect("/ui/");
        }
        let view = View {
            csrf: String::new(),
            logged_in: false,
        };
        self.render(
            status,
            "login.html",
            &view,
            serde_json::json!({ "failed": failed }),
        )
    }

    pub(super) async fn login(&self, req: hyper::Request<hyper::body::Incoming>) -> Answer {
        if !self.auth.required() {
            return redirect("/ui/");
        }
        let form = match super::read_form(req).await {
            Ok(f) => f,
            Err(status) => return self.message(status, "Bad form", "The form could not be read."),
        };
        match self.auth.login(form.get("token").unwrap_or("")) {
            Some(id) => {
                let mut resp = redirect("/ui/");
                if let Ok(v) = http::HeaderValue::from_str(&auth::set_cookie(&id)) {
                    resp.headers_mut().insert(http::header::SET_COOKIE, v);
                }
                resp
            }
            None => {
                tracing::warn!("Console login with a wrong token.");
                self.login_page(StatusCode::UNAUTHORIZED, true)
            }
        }
    }

    pub(super) fn logout(&self, session: Option<&str>) -> Answer {
        if let Some(id) = session {
            self.auth.logout(id);
        }
        let mut resp = redirect(if self.auth.required() {
            "/ui/login"
        } else {
            "/ui/"
        });
        if let Ok(v) = http::HeaderValue::from_str(&auth::clear_cookie()) {
            resp.headers_mut().insert(http::header::SET_COOKIE, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), ("h", true));
        assert_eq!(cut("héllo", 3), ("hé", true));
        assert_eq!(cut("abc", 3), ("abc", false));
    }

    #[test]
    fn since_takes_seconds_and_rfc3339() {
        assert_eq!(parse_since("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_since("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse_since("2023-11-14T22:13"), Some(1_699_999_980_000));
        assert_eq!(parse_since("yesterday"), None);
    }

    #[test]
    fn credentials_are_never_shown() {
        let mut h = BTreeMap::new();
        h.insert("x-hub-signature-256".to_owned(), "sha256=abc".to_owned());
        h.insert("authorization".to_owned(), "Bearer x".to_owned());
        h.insert("x-github-event".to_owned(), "push".to_owned());
        let shown = pairs(&h);
        assert!(
            shown
                .iter()
                .all(|(k, v)| k == "x-github-event" || v == "[redacted]")
        );
        assert!(shown.contains(&("x-github-event".to_owned(), "push".to_owned())));
    }

    #[test]
    fn links_keep_only_given_filters() {
        assert_eq!(with_query("/ui/", &[("source", ""), ("type", "")]), "/ui/");
        assert_eq!(
            with_query("/ui/", &[("source", "g h"), ("before", "01J")]),
            "/ui/?source=g+h&before=01J"
        );
    }
}
