//! Dry runs: routing one request through the rules without running anything.
//!
//! Owns the engine behind `hookrouter test` (which rules match a request,
//! exactly what each of their actions would do, and why every other rule did
//! not match) and the embedded `tests:` blocks that `hookrouter check` runs;
//! the commands in `cmd::test` and `cmd::check` only print what it finds. Both build the
//! envelope and render actions with the same code the server uses; nothing
//! is stored, sent or executed. Secrets are redacted from everything shown.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use crate::actions::render::{self, Rendered};
use crate::body;
use crate::event::{Event, RawRequest};
use crate::providers::envelope;
use crate::rules::{Action, RuleSet, RuleTest};

/// The request to try.
#[derive(Debug, Clone)]
pub struct TryRequest {
    pub source: String,
    pub headers: http::HeaderMap,
    pub query: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// Check the signature too.
    pub verify: bool,
}

/// `null` when not checked, else `{"verified": bool, "error"?: text}`.
fn signature_json<S: serde::Serializer>(
    sig: &Option<Result<(), String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let value = match sig {
        None => serde_json::Value::Null,
        Some(Ok(())) => serde_json::json!({ "verified": true }),
        Some(Err(e)) => serde_json::json!({ "verified": false, "error": e }),
    };
    serde::Serialize::serialize(&value, s)
}

/// What the dry run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub event: Event,
    /// `None` when not checked; otherwise `Ok` or the failure.
    #[serde(serialize_with = "signature_json")]
    pub signature: Option<Result<(), String>>,
    pub rules: Vec<RuleReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleReport {
    pub name: String,
    pub origin: String,
    pub matched: bool,
    /// Why the rule did not match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    pub origin: String,
    pub retry_attempts: u32,
    pub timeout_ms: u64,
    /// The action as it would run, when it renders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Rendered>,
    /// Why it would fail, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Errors that stop a dry run before routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DryRunError {
    #[error("unknown source {0:?}")]
    UnknownSource(String),
    #[error("{0}")]
    Body(#[from] body::BodyError),
}

/// Route `req` through `set`, rendering the actions of every matching rule.
///
/// # Errors
/// An unknown source or a body that does not parse.
pub fn run(set: &RuleSet, req: &TryRequest) -> Result<Report, DryRunError> {
    let source = set
        .source(&req.source)
        .ok_or_else(|| DryRunError::UnknownSource(req.source.clone()))?;
    let now = SystemTime::now();
    let unix = crate::clock::unix_secs(now);
    let url = source
        .url
        .clone()
        .unwrap_or_else(|| format!("http://localhost{}", source.path));
    let raw = RawRequest {
        url: &url,
        headers: &req.headers,
        body: &req.body,
        now: unix,
    };
    let signature = req
        .verify
        .then(|| source.provider.verify(&raw).map_err(|e| e.to_string()));
    let content_type = raw.header("content-type");
    let parsed = body::parse(content_type, &req.body)?;
    let event = std::sync::Arc::new(envelope::build(
        source,
        &raw,
        parsed,
        req.query.clone(),
        now,
    ));
    let rules = set
        .explain(&event)
        .into_iter()
        .map(|(rule, verdict)| {
            let actions = if verdict.is_ok() {
                let ctx = render::context(&event, &rule.name, None);
                rule.actions
                    .iter()
                    .map(|a| action_report(set, a, &ctx))
                    .collect()
            } else {
                Vec::new()
            };
            RuleReport {
                name: rule.name.clone(),
                origin: rule.origin.to_string(),
                matched: verdict.is_ok(),
                reason: verdict.err(),
                actions,
            }
        })
        .collect();
    Ok(Report {
        event: std::sync::Arc::unwrap_or_clone(event),
        signature,
        rules,
    })
}

fn action_report(set: &RuleSet, action: &Action, ctx: &minijinja::Value) -> ActionReport {
    let (action_out, error) = match render::render(set, action, ctx) {
        Ok(r) => (Some(redact_rendered(set, r)), None),
        Err(e) => (None, Some(set.redact(&e.to_string()))),
    };
    ActionReport {
        origin: action.origin.to_string(),
        retry_attempts: action.retry.attempts,
        timeout_ms: u64::try_from(action.timeout.as_millis()).unwrap_or(u64::MAX),
        action: action_out,
        error,
    }
}

fn redact_rendered(set: &RuleSet, r: Rendered) -> Rendered {
    let red = |s: String| set.redact(&s);
    let pairs = |v: Vec<(String, String)>| v.into_iter().map(|(k, v)| (k, red(v))).collect();
    match r {
        Rendered::Log { line } => Rendered::Log { line: red(line) },
        Rendered::Http(mut h) => {
            h.url = red(h.url);
            h.headers = pairs(h.headers);
            h.body = h
                .body
                .map(|b| set.redact(&String::from_utf8_lossy(&b)).into_bytes());
            Rendered::Http(h)
        }
        Rendered::Shell(mut c) => {
            c.argv = c.argv.into_iter().map(red).collect();
            c.env = pairs(c.env);
            Rendered::Shell(c)
        }
    }
}

/// The outcome of one embedded test.
#[derive(Debug, Clone, Serialize)]
pub struct TestOutcome {
    pub name: String,
    pub origin: String,
    pub passed: bool,
    pub expected: Vec<String>,
    pub matched: Vec<String>,
    /// For each expected rule that did not match: why.
    pub reasons: Vec<(String, String)>,
}

/// Run every embedded `tests:` case.
pub fn run_tests(set: &RuleSet) -> Vec<TestOutcome> {
    set.tests.iter().map(|t| run_test(set, t)).collect()
}

fn run_test(set: &RuleSet, t: &RuleTest) -> TestOutcome {
    let mut headers = http::HeaderMap::new();
    for (k, v) in &t.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            headers.append(name, value);
        }
    }
    let req = TryRequest {
        source: t.source.clone(),
        headers,
        query: t.query.iter().cloned().collect(),
        body: serde_json::to_vec(&t.body).unwrap_or_default(),
        verify: false,
    };
    let mut expected = t.expect.clone();
    expected.sort();
    match run(set, &req) {
        Ok(report) => {
            let mut matched: Vec<String> = report
                .rules
                .iter()
                .filter(|r| r.matched)
                .map(|r| r.name.clone())
                .collect();
            matched.sort();
            let reasons = report
                .rules
                .iter()
                .filter(|r| !r.matched && expected.contains(&r.name))
                .map(|r| (r.name.clone(), r.reason.clone().unwrap_or_default()))
                .collect();
            TestOutcome {
                name: t.name.clone(),
                origin: t.origin.to_string(),
                passed: matched == expected,
                expected,
                matched,
                reasons,
            }
        }
        Err(e) => TestOutcome {
            name: t.name.clone(),
            origin: t.origin.to_string(),
            passed: false,
            expected,
            matched: Vec::new(),
            reasons: vec![(String::new(), e.to_string())],
        },
    }
}
