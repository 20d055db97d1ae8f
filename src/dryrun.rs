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
//!
//! What depends on a run is not invented: a `then:` action that reads
//! `result`, or a `when:` that does, is reported as decided after the run,
//! and a shell action's `files` are shown at a placeholder directory.

use std::time::SystemTime;

use serde::Serialize;

use crate::actions::render::{self, Rendered};
use crate::event::Event;
use crate::providers::{AdmitError, Handshake, Inbound, Source, Unverified, preview};
use crate::rules::{
    Action, ActionKind, ActionType, ExpectedAction, HttpBody, OnBusy, Rule, RuleSet, RuleTest,
    SourceSel, When,
};
use crate::template::{JsonTemplate, Template};

/// Where a dry run says a shell action's `files` would be: the real
/// directory is made fresh for each attempt.
pub const FILES_DIR: &str = "<attempt dir>";

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
    /// The answer a `respond:` would give the sender instead of the 202.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respond: Option<RespondReport>,
}

/// What a `respond:` would answer, or why it would not render (then the
/// sender gets the standard 202).
#[derive(Debug, Clone, Serialize)]
pub struct RespondReport {
    /// `rule "name"` or `source "name"`.
    pub owner: String,
    /// The rule's name, for a rule's `respond:`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub origin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<crate::store::Reply>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_origin: Option<String>,
}

impl RespondReport {
    fn new(a: crate::respond::Answer) -> RespondReport {
        let (reply, error, error_origin) = match a.reply {
            Ok(r) => (Some(r), None, None),
            Err(f) => (None, Some(f.error), Some(f.origin.to_string())),
        };
        RespondReport {
            owner: a.owner,
            rule: a.rule,
            origin: a.origin.to_string(),
            reply,
            error,
            error_origin,
        }
    }
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
    /// The rule's `when:`, when it has one and its other conditions hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<WhenReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<ActionReport>,
}

/// The verdict of a `when:` template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum WhenReport {
    /// It rendered `true`.
    True,
    /// It rendered something else.
    False { rendered: String },
    /// It failed to render, which counts as false.
    Error { error: String },
    /// It reads `result`, which exists only once the parent action ran.
    AfterRun,
}

impl WhenReport {
    fn new(set: &RuleSet, when: When) -> WhenReport {
        match when {
            When::Holds => WhenReport::True,
            When::Rendered(text) => WhenReport::False {
                rendered: set.redact(&text),
            },
            When::Failed(why) => WhenReport::Error {
                error: set.redact(&why),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    #[serde(rename = "type")]
    pub kind: ActionType,
    pub origin: String,
    pub retry_attempts: u32,
    pub timeout_ms: u64,
    /// The action as it would run, when it renders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Rendered>,
    /// Why it would fail, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the template that fails to render was written (`file:line:col`);
    /// the action's own place when no single template is at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_origin: Option<String>,
    /// A `then:` action that reads `result`: rendered only once its parent
    /// succeeded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub after_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<WhenReport>,
    /// A shell action's standard input, rendered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// The names of a shell action's `files`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_within_ms: Option<u64>,
    /// Run after this action succeeds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<ActionReport>,
}

/// The group an action's delivery would join.
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    /// The rendered key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why there is no key: the delivery would be dead at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The key reads `result`: rendered once the parent action succeeded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub after_run: bool,
    pub limit: u32,
    pub on_busy: &'static str,
    pub kill_grace_ms: u64,
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
                respond: None,
            });
        }
    };
    let rules = rule_reports(set, &event);
    let matched: Vec<String> = rules
        .iter()
        .filter(|r| r.matched)
        .map(|r| r.name.clone())
        .collect();
    let respond = crate::respond::answer(set, &event, &matched).map(RespondReport::new);
    Ok(Report {
        admitted: Admitted::Event(std::sync::Arc::unwrap_or_clone(event)),
        signature,
        rules,
        respond,
    })
}

/// For every rule, whether a stored event matches it under `set` and, if
/// not, why not: the console's event page shows this beside what ran.
pub fn explain_event(set: &RuleSet, event: &Event) -> Vec<RuleReport> {
    rule_reports(set, &std::sync::Arc::new(event.clone()))
}

/// Each rule's verdict on `event`, with its actions rendered when it matches.
fn rule_reports(set: &RuleSet, event: &std::sync::Arc<Event>) -> Vec<RuleReport> {
    let event = event.clone();
    let when_ctx = |rule: &Rule| render::context(&event, &rule.name, None);
    set.explain(&event, when_ctx)
        .into_iter()
        .map(|(rule, verdict)| {
            let mut ctx = render::context(&event, &rule.name, None);
            // A debounced run sees its burst; a lone event is a burst of one.
            if rule.controls.as_ref().is_some_and(|c| c.debounce.is_some()) {
                ctx = render::extend(&ctx, render::debounce_alone(&event));
            }
            let actions = if verdict.is_ok() {
                rule.actions
                    .iter()
                    .map(|a| action_report(set, a, &ctx, false))
                    .collect()
            } else {
                Vec::new()
            };
            let when = rule
                .when
                .as_ref()
                .filter(|_| reaches_when(rule, &event))
                .map(|w| WhenReport::new(set, set.when(w, &ctx)));
            RuleReport {
                name: rule.name.clone(),
                origin: rule.origin.to_string(),
                matched: verdict.is_ok(),
                reason: verdict.err().map(|r| set.redact(&r)),
                when,
                actions,
            }
        })
        .collect()
}

/// Whether a rule's source, event type and `match:` hold, so that its
/// `when:` is what decides.
fn reaches_when(rule: &Rule, event: &Event) -> bool {
    let source = match &rule.sources {
        SourceSel::Any => true,
        SourceSel::Named(n) => n.iter().any(|s| s == &event.source),
    };
    source
        && rule.matches_type(&event.kind)
        && rule.condition.as_ref().is_none_or(|c| c.eval(&event.body))
}

/// `then` says whether `action` is in a `then:` list, where `result` will be
/// in the context.
fn action_report(
    set: &RuleSet,
    action: &Action,
    ctx: &minijinja::Value,
    then: bool,
) -> ActionReport {
    let uses_result = |t: &Template| then && set.templates.uses(t, "result");
    let after_run = then && kind_templates(action).into_iter().any(uses_result);
    // Shell templates see `files`: the real paths exist only during an
    // attempt, so the placeholder directory stands in for them.
    let ctx = match &action.kind {
        ActionKind::Shell(s) if !s.files.is_empty() => {
            let files: std::collections::BTreeMap<&str, String> = s
                .files
                .iter()
                .map(|(name, _)| (name.as_str(), format!("{FILES_DIR}/{name}")))
                .collect();
            minijinja::context! { files => files, ..ctx.clone() }
        }
        _ => ctx.clone(),
    };
    let (mut action_out, mut error) = (None, None);
    let mut stdin = None;
    if !after_run {
        match render::render(set, action, &ctx) {
            Ok(r) => action_out = Some(redact_rendered(set, r)),
            Err(e) => error = Some(set.redact(&e.to_string())),
        }
        if let ActionKind::Shell(s) = &action.kind
            && let Some(t) = &s.stdin
            && error.is_none()
        {
            match set.templates.render(t, &ctx) {
                Ok(text) => stdin = Some(set.redact(&text)),
                Err(e) => error = Some(set.redact(&format!("stdin: {e}"))),
            }
        }
    }
    let error_origin = error.as_ref().map(|_| {
        kind_templates(action)
            .into_iter()
            .find(|t| set.templates.render(t, &ctx).is_err())
            .and_then(|t| set.templates.origin(t))
            .unwrap_or(&action.origin)
            .to_string()
    });
    let when = action.when.as_ref().map(|w| {
        if uses_result(w) {
            WhenReport::AfterRun
        } else {
            WhenReport::new(set, set.when(w, &ctx))
        }
    });
    let group = action.group.as_ref().map(|g| {
        let (key, error, after_run) = if uses_result(&g.key) {
            (None, None, true)
        } else {
            match set.templates.render(&g.key, &ctx) {
                Ok(k) if k.is_empty() => (None, Some("group key rendered empty".to_owned()), false),
                Ok(k) => (Some(set.redact(&k)), None, false),
                Err(e) => (None, Some(set.redact(&e.to_string())), false),
            }
        };
        GroupReport {
            key,
            error,
            after_run,
            limit: g.limit,
            on_busy: on_busy_word(g.on_busy),
            kill_grace_ms: millis(action.kill_grace),
        }
    });
    let files = match &action.kind {
        ActionKind::Shell(s) => s.files.iter().map(|(n, _)| n.clone()).collect(),
        _ => Vec::new(),
    };
    ActionReport {
        kind: action.kind.action_type(),
        origin: action.origin.to_string(),
        retry_attempts: action.retry.attempts,
        timeout_ms: millis(action.timeout),
        action: action_out,
        error,
        error_origin,
        after_run,
        when,
        stdin,
        files,
        group,
        start_within_ms: action.start_within.map(millis),
        // A child's context is its parent's plus `result`, which a dry run
        // does not have.
        then: action
            .then
            .iter()
            .map(|child| action_report(set, child, &ctx, true))
            .collect(),
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn on_busy_word(o: OnBusy) -> &'static str {
    match o {
        OnBusy::Queue => "queue",
        OnBusy::Replace => "replace",
        OnBusy::Cancel => "cancel",
        OnBusy::Skip => "skip",
    }
}

/// Every template that renders the action itself (not its `when`, group
/// key or children).
fn kind_templates(action: &Action) -> Vec<&Template> {
    fn json<'a>(j: &'a JsonTemplate, out: &mut Vec<&'a Template>) {
        match j {
            JsonTemplate::Static(_) => {}
            JsonTemplate::Leaf(t) | JsonTemplate::Whole(t) => out.push(t),
            JsonTemplate::Array(items) => items.iter().for_each(|i| json(i, out)),
            JsonTemplate::Object(entries) => entries.iter().for_each(|(_, v)| json(v, out)),
        }
    }
    let mut out = Vec::new();
    match &action.kind {
        ActionKind::Log(t) => out.push(t),
        ActionKind::Http(h) => {
            out.push(&h.url);
            out.extend(h.headers.iter().map(|(_, t)| t));
            match &h.body {
                Some(HttpBody::Json(j)) => json(j, &mut out),
                Some(HttpBody::Raw(t)) => out.push(t),
                None => {}
            }
        }
        ActionKind::Shell(s) => {
            out.extend(&s.argv);
            out.extend(s.env.iter().map(|(_, t)| t));
            out.extend(&s.stdin);
            out.extend(s.files.iter().map(|(_, t)| t));
        }
        ActionKind::Cancel(c) => out.push(&c.key),
    }
    out
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
    /// Actions of matched rules that cannot render: the first real event
    /// like this one would fail them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub render_errors: Vec<RenderFailure>,
    /// `expect:` checks on rendered actions that do not hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub assertions: Vec<AssertionFailure>,
}

/// A matched rule's action that cannot render.
#[derive(Debug, Clone, Serialize)]
pub struct RenderFailure {
    pub rule: String,
    /// `2`, or `2.1` for the first `then:` action of action 2.
    pub action: String,
    /// Where the failing template was written.
    pub origin: String,
    pub error: String,
}

/// An expected action check that does not hold.
#[derive(Debug, Clone, Serialize)]
pub struct AssertionFailure {
    pub rule: String,
    /// One-based place in the rule's `actions:`.
    pub action: usize,
    /// Where the check was written.
    pub origin: String,
    pub field: String,
    pub assertion: String,
    /// The rendered value, or why there is none.
    pub rendered: Option<String>,
    pub error: Option<String>,
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
    expected.dedup();
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
            let render_errors = report.render_failures();
            let mut assertions = Vec::new();
            for e in &t.expect_actions {
                let Some(r) = report.rules.iter().find(|r| r.matched && r.name == e.rule) else {
                    continue;
                };
                for (i, want) in e.actions.iter().enumerate() {
                    check_action(&r.name, i + 1, want, r.actions.get(i), &mut assertions);
                }
            }
            TestOutcome {
                name: t.name.clone(),
                origin: t.origin.to_string(),
                passed: matched == expected && render_errors.is_empty() && assertions.is_empty(),
                expected,
                matched,
                reasons,
                render_errors,
                assertions,
            }
        }
        Err(e) => TestOutcome {
            name: t.name.clone(),
            origin: t.origin.to_string(),
            passed: false,
            expected,
            matched: Vec::new(),
            reasons: vec![(String::new(), e.to_string())],
            render_errors: Vec::new(),
            assertions: Vec::new(),
        },
    }
}

impl Report {
    /// The actions of matched rules that would fail to render, leaving out
    /// those an action `when:` skips (a guard such as `body.comment is
    /// defined` is how a template reads an optional field).
    pub fn render_failures(&self) -> Vec<RenderFailure> {
        let mut out = Vec::new();
        for r in self.rules.iter().filter(|r| r.matched) {
            for (i, a) in r.actions.iter().enumerate() {
                collect_render_errors(&r.name, a, &(i + 1).to_string(), &mut out);
            }
        }
        // A `respond:` that cannot render answers the 202 instead: a
        // mistake too, found here rather than by the sender.
        if let Some(r) = &self.respond
            && let Some(error) = &r.error
        {
            out.push(RenderFailure {
                rule: r.rule.clone().unwrap_or_else(|| r.owner.clone()),
                action: "respond".to_owned(),
                origin: r.error_origin.clone().unwrap_or_else(|| r.origin.clone()),
                error: error.clone(),
            });
        }
        out
    }
}

fn collect_render_errors(rule: &str, a: &ActionReport, number: &str, out: &mut Vec<RenderFailure>) {
    if a.when.as_ref().is_some_and(|w| *w != WhenReport::True) {
        return;
    }
    if let Some(error) = &a.error {
        out.push(RenderFailure {
            rule: rule.to_owned(),
            action: number.to_owned(),
            origin: a.error_origin.clone().unwrap_or_else(|| a.origin.clone()),
            error: error.clone(),
        });
    }
    for (i, child) in a.then.iter().enumerate() {
        collect_render_errors(rule, child, &format!("{number}.{}", i + 1), out);
    }
}

/// Check `want` against the rule's action at the same place.
fn check_action(
    rule: &str,
    number: usize,
    want: &ExpectedAction,
    got: Option<&ActionReport>,
    out: &mut Vec<AssertionFailure>,
) {
    let fail =
        |field: &str, assertion: String, rendered: Option<String>, error: &str| AssertionFailure {
            rule: rule.to_owned(),
            action: number,
            origin: want.origin.to_string(),
            field: field.to_owned(),
            assertion,
            rendered,
            error: Some(error.to_owned()),
        };
    let Some(got) = got else {
        out.push(fail(
            "",
            format!("a {} action", want.kind),
            None,
            "the rule has no action at this place",
        ));
        return;
    };
    if got.kind != want.kind {
        out.push(fail(
            "",
            format!("a {} action", want.kind),
            None,
            &format!("the action is {}", got.kind),
        ));
        return;
    }
    let Some(rendered) = &got.action else {
        // A render error is reported on its own; an action rendered only
        // after its parent ran has nothing to check yet.
        if got.error.is_none() {
            out.push(fail(
                "",
                format!("a rendered {} action", want.kind),
                None,
                "the action renders only after its parent runs",
            ));
        }
        return;
    };
    for f in &want.fields {
        let value = field_value(rendered, &f.field);
        if value.as_deref().is_some_and(|v| f.check.holds(v)) {
            continue;
        }
        out.push(AssertionFailure {
            rule: rule.to_owned(),
            action: number,
            origin: f.origin.to_string(),
            field: f.field.clone(),
            assertion: f.check.to_string(),
            error: value.is_none().then(|| "the field is absent".to_owned()),
            rendered: value,
        });
    }
}

/// The text of `field` in a rendered action; `None` when it has none (no
/// such header, argument or variable, no stdin or body).
fn field_value(r: &Rendered, field: &str) -> Option<String> {
    let lookup = |pairs: &[(String, String)], name: &str, fold: bool| {
        pairs
            .iter()
            .find(|(k, _)| {
                if fold {
                    k.eq_ignore_ascii_case(name)
                } else {
                    k == name
                }
            })
            .map(|(_, v)| v.clone())
    };
    match r {
        Rendered::Log { line } => (field == "line").then(|| line.clone()),
        Rendered::Cancel { rule, key } => match field {
            "rule" => Some(rule.clone()),
            "key" => Some(key.clone()),
            _ => None,
        },
        Rendered::Http(h) => match field {
            "method" => Some(h.method.as_str().to_owned()),
            "url" => Some(h.url.clone()),
            "body" => h
                .body
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            _ => field
                .strip_prefix("headers.")
                .and_then(|name| lookup(&h.headers, name, true)),
        },
        Rendered::Shell(c) => match field {
            "argv" => Some(c.argv.join(" ")),
            "stdin" => c.stdin.clone(),
            _ => {
                if let Some(name) = field.strip_prefix("env.") {
                    return lookup(&c.env, name, false);
                }
                let index: usize = field
                    .strip_prefix("argv[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()?;
                c.argv.get(index).cloned()
            }
        },
    }
}
