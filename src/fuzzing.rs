//! Fuzz target bodies, shared by the cargo-fuzz crate in `fuzz/` and by the
//! seed replay that runs on stable with `cargo test` (`tests/it/fuzz_seeds.rs`).
//! Compiled only with the `fuzzing` feature, which both of them turn on, so
//! the release binary does not carry it.
//!
//! Each function takes arbitrary bytes, feeds them to one surface that reads
//! untrusted or hand-written input, and panics only when an invariant breaks:
//!
//! - [`rules_yaml`]: a rule file never panics `config::parse` or
//!   `compile::compile`; a rule set that compiles routes through its index
//!   exactly as the linear `explain` scan does, and its templates render
//!   without panicking.
//! - [`condition`]: a condition compiled from fuzzed parts evaluates without
//!   panicking, `eval` agrees with `explain`, and `not` negates.
//! - [`template`]: compiling and rendering a fuzzed template never panics; a
//!   literal renders as itself and a typed template renders JSON.
//! - [`body`]: `body::parse` never panics, JSON bodies survive a round trip,
//!   and form bodies are objects of strings.
//! - [`signature_headers`]: every provider's `verify` refuses fuzzed
//!   signature, timestamp and id headers (only `none` accepts), and the
//!   post-verification hooks never panic on them.
//!
//! Input layouts are described on each function; the seed corpora in
//! `fuzz/corpus/<target>/` follow them.

// A panic is how a fuzz target reports a broken invariant to its driver.
#![allow(clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::actions::render;
use crate::body as body_mod;
use crate::condition::{self as cond, Condition, Op, PathCondition};
use crate::config::node::{Kind, Node};
use crate::config::{self, compile};
use crate::event::{Event, RawRequest};
use crate::providers::{
    self, Algorithm, Encoding, Extractor, HmacOptions, Provider, ProviderSettings, Secret, envelope,
};
use crate::rules::{EventPattern, RuleSet};
use crate::template::{JsonTemplate, Template, Templates};

/// The clock every fuzzed request is judged at.
pub const NOW: i64 = 1_700_000_000;
/// The URL a fuzzed request was sent to unless a `:url` line says otherwise.
pub const URL: &str = "https://hooks.example.com/hooks/in?x=1";
/// The secret of every provider keyed by a UTF-8 string.
pub const SECRET: &str = "fuzz-Zm9vYmFyLXNlY3JldC0xMjM0NTY3ODkw";
/// The Standard Webhooks secret (`whsec_` + base64 of 24 bytes).
pub const STANDARD_SECRET: &str = "whsec_ZnV6ei1zdGFuZGFyZC1zZWNyZXQtMDE=";
/// RFC 8032 test 1 public key, for `discord`.
pub const DISCORD_PUBLIC_KEY: &str =
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

/// Cap on the rules, sources and event types one input may make us walk, so
/// a large rule file stays a fast execution.
const WALK: usize = 8;

/// Bodies conditions and rule sets are evaluated against.
fn sample_bodies() -> &'static [Value] {
    static BODIES: OnceLock<Vec<Value>> = OnceLock::new();
    BODIES.get_or_init(|| {
        vec![
            Value::Null,
            json!({}),
            json!({
                "ref": "refs/heads/main",
                "action": "opened",
                "number": 7,
                "amount": 12.5,
                "draft": false,
                "nothing": null,
                "tags": ["a", "b", "deploy"],
                "repository": {"full_name": "acme/api", "private": true},
                "commits": [
                    {"id": "c1", "modified": ["src/x.rs", "deploy/app.yaml"]},
                    {"id": "c2", "modified": []}
                ],
                "type": "charge.succeeded",
                "data": {"object": {"amount": 1200, "currency": "usd"}},
                "": {"": [0, -1, 1e300, "é"]}
            }),
            json!([1, "two", [3], {"four": 4}]),
            json!("refs/heads/main"),
            json!(-0.0),
        ]
    })
}

// ---------------------------------------------------------------------------
// rules_yaml

/// A whole rule file.
///
/// The bytes are the file's text (invalid UTF-8 becomes U+FFFD). `${file:…}`
/// references are escaped first, and a file whose YAML escapes still spell
/// one is skipped, so that a fuzzed file never reads the disk.
/// Invariants: parsing and compiling never panic; a failed compile reports an
/// error; for a rule set that compiles, `route` (through the index) and
/// `explain` (a linear scan) agree for every source and event type the file
/// mentions, and every matched rule's actions render without panicking.
pub fn rules_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data).replace("${file:", "$${file:");
    if may_read_files(&text) {
        return;
    }
    let path = Path::new("fuzz.yaml");
    let parsed = match config::parse(path, &text) {
        Ok(parsed) => parsed,
        Err(diag) => {
            let _ = diag.to_string();
            return;
        }
    };
    let files = vec![compile::ParsedFile {
        path: path.to_path_buf(),
        config: parsed,
    }];
    match compile::compile(files) {
        Ok((set, diags)) => {
            assert!(!diags.has_errors(), "compiled with errors: {diags}");
            let _ = diags.render_text();
            exercise_rule_set(&set);
        }
        Err(diags) => {
            assert!(diags.has_errors(), "compile failed without an error");
            let _ = diags.render_text();
        }
    }
}

/// Whether compiling `text` could read a file: a `${file:` spelled by a
/// double-quoted YAML escape, which the textual escape cannot see. Decided
/// on the parsed tree; text with escapes that does not parse as a tree is
/// skipped too.
fn may_read_files(text: &str) -> bool {
    if !text.contains('\\') {
        return false;
    }
    serde_saphyr::from_str::<Node>(text).map_or(true, |root| node_reads_files(&root))
}

fn node_reads_files(node: &Node) -> bool {
    match &node.kind {
        Kind::Str(s) => s
            .match_indices("${file:")
            .any(|(i, _)| !s.get(..i).unwrap_or_default().ends_with('$')),
        Kind::Seq(items) => items.iter().any(node_reads_files),
        Kind::Map(entries) => entries
            .iter()
            .any(|(k, v)| node_reads_files(k) || node_reads_files(v)),
        _ => false,
    }
}

fn exercise_rule_set(set: &RuleSet) {
    let mut sources: Vec<String> = set.sources.iter().map(|s| s.name.clone()).collect();
    sources.push("not-a-source".to_owned());
    sources.truncate(WALK);

    let mut kinds = vec![String::new(), "push".to_owned(), "a.b.c".to_owned()];
    for rule in set.rules.iter().take(WALK) {
        for p in rule.events.iter().take(2) {
            if let EventPattern::Exact(e) = p {
                kinds.push(e.clone());
                kinds.push(format!("{e}.sub"));
            }
        }
    }
    kinds.truncate(WALK * 2);

    let mut bodies: Vec<&Value> = sample_bodies().iter().collect();
    bodies.extend(set.tests.iter().take(WALK).map(|t| &t.body));

    for source in &sources {
        for kind in &kinds {
            for body in &bodies {
                let event = Event {
                    id: "evt_fuzz".to_owned(),
                    kind: kind.clone(),
                    source: source.clone(),
                    provider: "none".to_owned(),
                    received_at: "2023-11-14T22:13:20.000Z".to_owned(),
                    headers: BTreeMap::new(),
                    query: BTreeMap::new(),
                    body: (*body).clone().into(),
                };
                route_agrees_with_explain(set, &event);
            }
        }
    }

    // Envelopes as the request path builds them, one per source.
    let headers = HeaderMap::new();
    for source in set.sources.iter().take(WALK) {
        let req = RawRequest {
            url: URL,
            headers: &headers,
            body: b"{}",
            now: NOW,
        };
        let _ = source.provider.event_type(&req, &json!({}));
        let event = envelope::build(
            source,
            &req,
            json!({}).into(),
            BTreeMap::new(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        route_agrees_with_explain(set, &event);
    }
    let _ = set.redact("a text that may hold a secret");
}

fn route_agrees_with_explain(set: &RuleSet, event: &Event) {
    let shared = std::sync::Arc::new(event.clone());
    let when_ctx = |rule: &crate::rules::Rule| render::context(&shared, &rule.name, None);
    let routed: Vec<&str> = set
        .route(event, when_ctx)
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    let explained: Vec<&str> = set
        .explain(event, when_ctx)
        .into_iter()
        .filter(|(_, verdict)| verdict.is_ok())
        .map(|(r, _)| r.name.as_str())
        .collect();
    assert_eq!(
        routed, explained,
        "route and explain disagree for source {:?}, type {:?}, body {}",
        event.source, event.kind, event.body
    );
    for name in routed.iter().take(WALK) {
        let Some(rule) = set.rule(name) else {
            panic!("routed to {name:?}, which `rule` does not know");
        };
        let ctx = render::context(&std::sync::Arc::new(event.clone()), &rule.name, None);
        if let Some(dedup) = &rule.dedup {
            let _ = set.templates.render(dedup, &ctx);
        }
        for action in rule.actions.iter().chain(&rule.on_failure).take(WALK) {
            let _ = render::render(set, action, &ctx);
        }
    }
}

// ---------------------------------------------------------------------------
// condition

/// One `match:` entry.
///
/// Layout: the first line is the JSONPath, the second the operator name, the
/// rest the operand as JSON (text that is not JSON is taken as a JSON
/// string). The operand, when it is JSON, is also used as a body.
/// Invariants: nothing panics; `eval` holds exactly when `explain` is `Ok`;
/// `not` negates; the same path as a source `event_type:` extractor does not
/// panic.
pub fn condition(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let path = parts.next().unwrap_or_default().trim_end_matches('\r');
    let op_name = parts.next().unwrap_or("equals").trim();
    let rest = parts.next().unwrap_or_default();
    let parsed_operand = serde_json::from_str::<Value>(rest).ok();
    let operand = parsed_operand
        .clone()
        .unwrap_or_else(|| Value::String(rest.to_owned()));

    let op = match Op::compile(op_name, &operand) {
        Ok(op) => op,
        Err(msg) => {
            assert!(!msg.is_empty());
            return;
        }
    };
    let _ = op.to_string();
    let query = match cond::compile_path(path) {
        Ok(q) => q,
        Err(msg) => {
            assert!(!msg.is_empty());
            return;
        }
    };
    let extractor = Extractor::Path(query.clone());
    let c = Condition::Path(PathCondition {
        path: path.to_owned(),
        query,
        ops: vec![op],
    });
    let negated = Condition::Not(Box::new(c.clone()));
    let both = Condition::All(vec![c.clone(), negated.clone()]);
    let either = Condition::Any(vec![c.clone(), negated.clone()]);
    let _ = both.describe();

    let mut bodies: Vec<&Value> = sample_bodies().iter().collect();
    if let Some(v) = &parsed_operand {
        bodies.push(v);
    }
    let headers = HeaderMap::new();
    for body in bodies {
        let held = eval_agrees_with_explain(&c, body);
        assert_eq!(
            eval_agrees_with_explain(&negated, body),
            !held,
            "`not` did not negate {} on {body}",
            c.describe()
        );
        assert!(
            !eval_agrees_with_explain(&both, body),
            "c and not c held on {body}"
        );
        assert!(
            eval_agrees_with_explain(&either, body),
            "neither c nor not c held on {body}"
        );
        let _ = extractor.extract(&headers, body);
    }
}

fn eval_agrees_with_explain(c: &Condition, body: &Value) -> bool {
    let held = c.eval(body);
    let explained = c.explain(body);
    assert_eq!(
        held,
        explained.is_ok(),
        "eval and explain disagree for {} on {body}: {explained:?}",
        c.describe()
    );
    held
}

// ---------------------------------------------------------------------------
// template

/// One template string, as written in a rule file.
///
/// Invariants: compiling (as text and as a typed JSON leaf) and rendering
/// never panic; a template without syntax is a literal that renders as
/// itself; a typed template that renders yields JSON.
pub fn template(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = template_context();
    let mut t = Templates::new();
    if let Ok(tpl) = t.compile(src) {
        let out = t.render(&tpl, ctx);
        if let Template::Literal(text) = &tpl {
            assert_eq!(text, src, "a literal changed at compile");
            assert_eq!(out.as_deref(), Ok(src), "a literal changed at render");
        }
        let _ = t.render_value(&tpl, ctx);
    }
    if let Ok(tpl) = t.compile_typed(src) {
        let typed = matches!(tpl, Template::Typed(_));
        let text = t.render(&tpl, ctx);
        let value = t.render_value(&tpl, ctx);
        if typed && let Ok(text) = &text {
            assert!(
                value.is_ok(),
                "typed template {src:?} rendered {text:?}, which is not JSON"
            );
        }
        let _ = t.render_json(&JsonTemplate::Whole(tpl.clone()), ctx);
        let _ = t.render_json(
            &JsonTemplate::Object(vec![(
                "k".to_owned(),
                JsonTemplate::Array(vec![
                    JsonTemplate::Leaf(tpl),
                    JsonTemplate::Static(json!(1)),
                ]),
            )]),
            ctx,
        );
    }
}

fn template_context() -> &'static minijinja::Value {
    static CTX: OnceLock<minijinja::Value> = OnceLock::new();
    CTX.get_or_init(|| {
        let event = Event {
            id: "evt_1".to_owned(),
            kind: "push".to_owned(),
            source: "github".to_owned(),
            provider: "github".to_owned(),
            received_at: "2023-11-14T22:13:20.000Z".to_owned(),
            headers: BTreeMap::from([("x-github-event".to_owned(), "push".to_owned())]),
            query: BTreeMap::from([("x".to_owned(), "1".to_owned())]),
            body: sample_bodies().get(2).cloned().unwrap_or_default().into(),
        };
        let failure = json!({"action": "http", "attempts": 3, "error": "HTTP 500"});
        render::context(&std::sync::Arc::new(event), "fuzz-rule", Some(&failure))
    })
}

// ---------------------------------------------------------------------------
// body

/// A request body and its content type.
///
/// Layout: the first line is the Content-Type header (an empty first line, or
/// no newline at all, means no header), the rest is the body.
/// Invariants: `body::parse` never panics; a JSON body that parses
/// re-serializes to the same value; `application/json` parses as no content
/// type does; a form body is an object whose values are strings or lists of
/// at least two strings, and parses as `parse_form` says.
pub fn body(data: &[u8]) {
    let (content_type, bytes) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (
            data.get(..i).filter(|ct| !ct.is_empty()),
            data.get(i + 1..).unwrap_or_default(),
        ),
        None => (None, data),
    };
    let content_type = content_type.map(String::from_utf8_lossy);
    let _ = body_mod::parse(content_type.as_deref(), bytes);

    let json = body_mod::parse(Some("application/json"), bytes);
    assert_eq!(
        json,
        body_mod::parse(None, bytes),
        "application/json and no content type disagree"
    );
    if let Ok(body) = &json {
        // The store writes this text in place of the value.
        if let Some(raw) = body.raw_json() {
            let back = serde_json::from_slice::<Value>(raw);
            assert!(
                back.as_ref().is_ok_and(|b| b == body.value()),
                "the kept text does not parse to the body: {back:?}"
            );
        }
    }
    if let Ok(v) = &json {
        let v = v.value();
        let again = serde_json::to_vec(v).map(|text| serde_json::from_slice::<Value>(&text));
        match again {
            Ok(Ok(back)) => assert!(
                same_json(&back, v),
                "JSON did not survive a round trip: {v} became {back}"
            ),
            other => panic!("a parsed body does not re-serialize: {other:?}"),
        }
    }
    let _ = body_mod::parse(Some("application/vnd.api+json; charset=utf-8"), bytes);

    let form = body_mod::parse_form(bytes);
    assert_eq!(
        body_mod::parse(
            Some("Application/X-WWW-Form-URLEncoded; charset=utf-8"),
            bytes
        )
        .as_ref()
        .map(|b| b.value()),
        Ok(&form),
        "a form body parsed differently through `parse`"
    );
    let Value::Object(fields) = &form else {
        panic!("a form body is not an object: {form}");
    };
    for (k, v) in fields {
        match v {
            Value::String(_) => {}
            Value::Array(items) => assert!(
                items.len() >= 2 && items.iter().all(Value::is_string),
                "form field {k:?} is {v}"
            ),
            other => panic!("form field {k:?} is {other}"),
        }
    }
}

/// Structural equality where floats may differ in the last bits: serde_json
/// parses decimal floats quickly rather than exactly (no `float_roundtrip`),
/// so a float can move by an ulp when its printed form is read back.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

// ---------------------------------------------------------------------------
// signature_headers

/// Every provider adapter, built once with the dummy secrets above: one per
/// `providers::KINDS` entry, plus a second `hmac` with a timestamp header.
pub fn signature_providers() -> &'static [(&'static str, Box<dyn Provider>)] {
    static PROVIDERS: OnceLock<Vec<(&'static str, Box<dyn Provider>)>> = OnceLock::new();
    PROVIDERS.get_or_init(|| {
        let mut out = Vec::new();
        for kind in providers::KINDS {
            let variants: &[&'static str] = if *kind == "hmac" {
                &["hmac", "hmac-timestamped"]
            } else {
                &[kind]
            };
            for variant in variants {
                match providers::build(kind, provider_settings(variant)) {
                    Ok(p) => out.push((*variant, p)),
                    Err(e) => panic!("cannot build provider {variant}: {e}"),
                }
            }
        }
        out
    })
}

/// The settings `signature_providers` builds `variant` with (a `KINDS` entry,
/// or `hmac-timestamped`).
pub fn provider_settings(variant: &str) -> ProviderSettings {
    let secret = match variant {
        "discord" => DISCORD_PUBLIC_KEY,
        "standard" => STANDARD_SECRET,
        "none" => return ProviderSettings::default(),
        _ => SECRET,
    };
    let hmac = match variant {
        "hmac" => Some(HmacOptions {
            header: "X-Signature".to_owned(),
            algorithm: Algorithm::Sha256,
            encoding: Encoding::Hex,
            prefix: "sha256=".to_owned(),
            timestamp_header: None,
        }),
        "hmac-timestamped" => Some(HmacOptions {
            header: "X-Signature".to_owned(),
            algorithm: Algorithm::Sha1,
            encoding: Encoding::Base64,
            prefix: String::new(),
            timestamp_header: Some("X-Timestamp".to_owned()),
        }),
        _ => None,
    };
    ProviderSettings {
        secrets: vec![Secret::new(secret)],
        tolerance: None,
        hmac,
    }
}

/// A request decoded from a `signature_headers` input.
#[derive(Debug)]
pub struct FuzzRequest<'a> {
    pub url: String,
    pub headers: HeaderMap,
    pub body: &'a [u8],
}

/// Decode a `signature_headers` input (layout on [`signature_headers`]).
pub fn request(data: &[u8]) -> FuzzRequest<'_> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (
            data.get(..i).unwrap_or_default(),
            data.get(i + 2..).unwrap_or_default(),
        ),
        None => (data, &[][..]),
    };
    let mut url = URL.to_owned();
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(u) = line.strip_prefix(b":url ") {
            url = String::from_utf8_lossy(u).into_owned();
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (
            line.get(..colon).unwrap_or_default(),
            line.get(colon + 1..).unwrap_or_default(),
        );
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    FuzzRequest { url, headers, body }
}

/// A request's headers and body, shaped like HTTP.
///
/// Layout: header lines `Name: value` up to the first empty line, then the
/// body bytes. A line `:url <url>` sets the request URL (default [`URL`]).
/// Names that are not valid header names and values that are not valid
/// header values are skipped; a repeated name is sent twice. The clock is
/// fixed at [`NOW`].
/// Invariants: every provider but `none` refuses the request (no fuzzed input
/// forges a signature under a secret it does not know) and `none` accepts
/// it; `event_type`, `event_id` and `handshake` never panic on it.
pub fn signature_headers(data: &[u8]) {
    let FuzzRequest { url, headers, body } = request(data);
    let req = RawRequest {
        url: &url,
        headers: &headers,
        body,
        now: NOW,
    };
    let _ = envelope::headers(&headers);
    let _ = envelope::query(url.split_once('?').map(|(_, q)| q));
    let parsed = body_mod::parse(req.header("content-type"), body).ok();
    for (variant, provider) in signature_providers() {
        let verdict = provider.verify(&req);
        if *variant == "none" {
            assert_eq!(verdict, Ok(()), "`none` refused a request");
        } else {
            match verdict {
                Err(e) => {
                    let _ = (e.reason(), e.to_string());
                }
                Ok(()) => panic!(
                    "provider {variant} accepted a fuzzed request: headers {headers:?}, url {url:?}, body {:?}",
                    String::from_utf8_lossy(body)
                ),
            }
        }
        if let Some(v) = &parsed {
            let _ = provider.event_type(&req, v);
            let _ = provider.event_id(&req, v);
            let _ = provider.handshake(&req, v);
        }
    }
}
