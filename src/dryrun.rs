//! Dry runs: routing one request through the rules without running anything.
//!
//! Owns the engine behind `hookrouter test` (which rules match a request,
//! exactly what each of their actions would do, and why every other rule did
//! not match) and the embedded `tests:` blocks that `hookrouter check` runs;
//! the commands in `cmd::test` and `cmd::check` only print what it finds.
//!
//! A request goes through the server's own admission (`providers::preview`:
//! the same URL, header, body, handshake and envelope steps in the same
//! order), except that the signature is checked only on request and a bad
//! one is reported instead of ending the run. Actions are rendered with the
//! server's code too; nothing is stored, sent or executed. Secrets are
//! redacted from everything shown.

use std::time::SystemTime;

use serde::Serialize;

use crate::actions::render::{self, Rendered};
use crate::event::Event;
use crate::providers::{AdmitError, Handshake, Inbound, Source, Unverified, preview};
use crate::rules::{Action, RuleSet, RuleTest};

/// The request to try.
#[derive(Debug, Clone)]
pub struct TryRequest {
    pub source: String,
    pub headers: http::HeaderMap,
    /// Query parameters in the order given; they are part of the URL that
    /// some providers sign.
    pub query: Vec<(String, String)>,
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
    /// `"event"`, or `"handshake"` when the server would answer the
    /// provider's handshake and route nothing.
    #[serde(flatten)]
    pub admitted: Admitted,
    /// `None` when not checked; otherwise `Ok` or the failure.
    #[serde(serialize_with = "signature_json")]
    pub signature: Option<Result<(), String>>,
    pub rules: Vec<RuleReport>,
}

/// What admission made of the request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Admitted {
    Event(Event),
    Handshake(HandshakeReport),
}

/// The answer the server would give a provider's handshake.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeReport {
    pub source: String,
    pub provider: String,
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl HandshakeReport {
    fn new(source: &Source, h: Handshake) -> HandshakeReport {
        HandshakeReport {
            source: source.name.clone(),
            provider: source.provider.name().to_owned(),
            status: h.status,
            content_type: h.content_type.to_owned(),
            body: String::from_utf8_lossy(&h.body).into_owned(),
        }
    }
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
    /// A header that is not UTF-8, or a body that does not parse.
    #[error(transparent)]
    Admit(#[from] AdmitError),
}

/// Route `req` through `set`, rendering the actions of every matching rule.
///
/// # Errors
/// An unknown source, a header that is not UTF-8, or a body that does not
/// parse.
pub fn run(set: &RuleSet, req: &TryRequest) -> Result<Report, DryRunError> {
    let source = set
        .source(&req.source)
        .ok_or_else(|| DryRunError::UnknownSource(req.source.clone()))?;
    // As it would arrive: at the source's path, with the query string a
    // sender would write.
    let query = (!req.query.is_empty()).then(|| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&req.query)
            .finish()
    });
    let inbound = Inbound {
        headers: &req.headers,
        path: &source.path,
        query: query.as_deref(),
        body: &req.body,
        received_at: SystemTime::now(),
    };
    let previewed = preview(source, &inbound, req.verify)?;
    let signature = previewed
        .signature
        .map(|checked| checked.map_err(|e| e.to_string()));
    let event = match previewed.request {
        Unverified::Event(event) => std::sync::Arc::new(event),
        Unverified::Handshake(h) => {
            return Ok(Report {
                admitted: Admitted::Handshake(HandshakeReport::new(source, h)),
                signature,
                rules: Vec::new(),
            });
        }
    };
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
        admitted: Admitted::Event(std::sync::Arc::unwrap_or_clone(event)),
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
            c.stdin = c.stdin.map(red);
            c.files = pairs(c.files);
            Rendered::Shell(c)
        }
        Rendered::Cancel { rule, key } => Rendered::Cancel {
            rule,
            key: red(key),
        },
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
        query: t.query.clone(),
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
