//! The compiled, immutable rule set: the contract between loading and serving.
//!
//! Owns `RuleSet` and everything in it (rules, actions, retry policies, and
//! the sources, whose type lives in `providers::source`) and the index that
//! routes an event to the few rules that can match it by source and event
//! type, before any condition is evaluated.
//! Nothing here is deserialized: values only come from `config::compile`, so a
//! `RuleSet` that exists is valid.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use globset::GlobMatcher;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::condition::Condition;
use crate::event::Event;
use crate::providers::{Origin, Secret, Source};
use crate::template::{JsonTemplate, Template, Templates};

mod bursts;
pub use bursts::{Controls, Debounce, Limit, OVER, Over, Rate};

/// Which sources a rule listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSel {
    Any,
    Named(Vec<String>),
}

/// One `event:` pattern.
#[derive(Debug, Clone)]
pub enum EventPattern {
    /// Matches every type.
    Any,
    /// No wildcard: matches the type and its sub-types (`a` matches `a.b`).
    Exact(String),
    Glob(GlobMatcher),
}

impl EventPattern {
    pub fn matches(&self, kind: &str) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Exact(p) => {
                kind == p || (kind.starts_with(p.as_str()) && kind[p.len()..].starts_with('.'))
            }
            EventPattern::Glob(g) => g.is_match(kind),
        }
    }
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included; 1 means no retry.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub const NONE: RetryPolicy = RetryPolicy {
        attempts: 1,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1),
    };
    pub const HTTP_DEFAULT: RetryPolicy = RetryPolicy {
        attempts: 8,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(600),
    };
}

/// An HTTP request body.
#[derive(Debug, Clone)]
pub enum HttpBody {
    Json(JsonTemplate),
    Raw(Template),
}

#[derive(Debug, Clone)]
pub struct HttpAction {
    pub method: http::Method,
    pub url: Template,
    pub headers: Vec<(http::HeaderName, Template)>,
    pub body: Option<HttpBody>,
    /// Standard Webhooks signing key (already base64-decoded).
    pub sign: Option<SigningKey>,
}

/// A Standard Webhooks signing key. `Debug` never prints it.
#[derive(Clone)]
pub struct SigningKey(pub Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone)]
pub struct ShellAction {
    /// Each template renders into exactly one argument.
    pub argv: Vec<Template>,
    /// The child's whole environment (plus PATH).
    pub env: Vec<(String, Template)>,
    pub workdir: Option<PathBuf>,
    /// Bytes of stdout and of stderr kept.
    pub max_output: usize,
    /// Written to the child's standard input, which is then closed. `None`:
    /// stdin is `/dev/null`.
    pub stdin: Option<Template>,
    /// File name → content, written into a fresh private directory for each
    /// attempt and removed after it. Templates see `files[name]` as the path.
    pub files: Vec<(String, Template)>,
}

/// `cancel:` as an action: cancel the pending and running deliveries of
/// `rule` whose group key equals the rendered `key`.
#[derive(Debug, Clone)]
pub struct CancelAction {
    pub rule: String,
    pub key: Template,
}

/// What a delivery does when it becomes due while its group is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBusy {
    /// Wait, in order of arrival.
    #[default]
    Queue,
    /// Supersede every waiting (not running) member, then wait.
    Replace,
    /// Cancel the running members, supersede the waiting ones, run next.
    Cancel,
    /// Record the new delivery `skipped`.
    Skip,
}

/// `group:` on an action: deliveries whose rendered `key` is equal form a
/// group, of which at most `limit` run at once.
#[derive(Debug, Clone)]
pub struct Group {
    pub key: Template,
    pub limit: u32,
    pub on_busy: OnBusy,
}

#[derive(Debug, Clone)]
pub enum ActionKind {
    Log(Template),
    Http(HttpAction),
    Shell(ShellAction),
    Cancel(CancelAction),
}

impl ActionKind {
    pub fn action_type(&self) -> ActionType {
        match self {
            ActionKind::Log(_) => ActionType::Log,
            ActionKind::Http(_) => ActionType::Http,
            ActionKind::Shell(_) => ActionType::Shell,
            ActionKind::Cancel(_) => ActionType::Cancel,
        }
    }
}

/// The type of an action without its settings: what a delivery records, what
/// metrics are labelled by, and the `type` a `failure` context shows.
///
/// Serialized as its word in every encoding. A derived enum would be written
/// as a variant number by postcard (the delivery rows' encoding), which
/// would neither read the rows that hold the word nor survive a reordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum ActionType {
    Log,
    Http,
    Shell,
    Cancel,
}

impl ActionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Log => "log",
            ActionType::Http => "http",
            ActionType::Shell => "shell",
            ActionType::Cancel => "cancel",
        }
    }
}

impl std::fmt::Display for ActionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ActionType> for &'static str {
    fn from(t: ActionType) -> Self {
        t.as_str()
    }
}

/// A word that is not `log`, `http`, `shell` or `cancel`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action type {0:?} (expected log, http, shell or cancel)")]
pub struct UnknownActionType(pub String);

impl std::str::FromStr for ActionType {
    type Err = UnknownActionType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "log" => Ok(ActionType::Log),
            "http" => Ok(ActionType::Http),
            "shell" => Ok(ActionType::Shell),
            "cancel" => Ok(ActionType::Cancel),
            _ => Err(UnknownActionType(s.to_owned())),
        }
    }
}

impl TryFrom<String> for ActionType {
    type Error = UnknownActionType;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[derive(Debug, Clone)]
pub struct Action {
    pub kind: ActionKind,
    pub retry: RetryPolicy,
    pub timeout: Duration,
    /// `None`: only the global worker limit applies.
    pub concurrency: Option<u32>,
    /// Must render `true` just before an attempt; otherwise the delivery is
    /// recorded `skipped`.
    pub when: Option<Template>,
    pub group: Option<Group>,
    /// From SIGTERM to SIGKILL when a shell run is cancelled or times out.
    pub kill_grace: Duration,
    /// Run once after this action succeeds, with `result` in their context.
    pub then: Vec<Action>,
    /// A delivery not started this long after its event was accepted is
    /// `expired`.
    pub start_within: Option<Duration>,
    pub origin: Origin,
}

impl Action {
    /// Grace between SIGTERM and SIGKILL when `group:` does not set one.
    pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

    /// Deepest nesting of `then:` lists.
    pub const MAX_THEN_DEPTH: usize = 8;
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub sources: SourceSel,
    pub events: Vec<EventPattern>,
    pub condition: Option<Condition>,
    pub dedup: Option<Template>,
    /// One more condition after `match:`: must render `true`.
    pub when: Option<Template>,
    pub actions: Vec<Action>,
    pub on_failure: Vec<Action>,
    /// Run once per cancelled event, with `cancel.reason`.
    pub on_cancel: Vec<Action>,
    /// `delay:`, `debounce:` and `limit:`; `None` when it has none.
    pub controls: Option<Box<Controls>>,
    /// The answer the sender gets for an event this rule matches.
    pub respond: Option<Respond>,
    pub origin: Origin,
}

/// `respond:` on a rule or a source: the answer the sender gets instead of
/// the standard 202, rendered from the event. When several apply, the first
/// matched rule's wins, then the source's.
#[derive(Debug, Clone)]
pub struct Respond {
    /// A 2xx status.
    pub status: u16,
    /// Header templates; `Content-Type` defaults from the body's kind.
    pub headers: Vec<(http::HeaderName, Template)>,
    pub body: Option<HttpBody>,
    /// Where `respond:` was written.
    pub origin: Origin,
}

impl Rule {
    pub fn matches_type(&self, kind: &str) -> bool {
        self.events.iter().any(|p| p.matches(kind))
    }

    /// The actions of one of the rule's lists.
    pub fn list(&self, list: ActionList) -> &[Action] {
        match list {
            ActionList::Actions => &self.actions,
            ActionList::OnFailure => &self.on_failure,
            ActionList::OnCancel => &self.on_cancel,
        }
    }
}

/// Which of a rule's lists an action is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionList {
    /// `actions:`, run for each matching event.
    Actions,
    /// `on_failure:`, run when a delivery of the rule goes dead.
    OnFailure,
    /// `on_cancel:`, run once per cancelled event.
    OnCancel,
}

/// One action of a rule, by the rule's name and the action's place in it.
/// A delivery keeps only this, so it runs the action as the rule set
/// current at that time defines it, or finds that it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ActionRef {
    pub rule: String,
    pub list: ActionList,
    /// Zero-based place in the list.
    pub index: u32,
    /// For a `then:` child: the places in each nested `then:` list below
    /// the action at `index`; empty for the action itself.
    pub then: Vec<u32>,
}

/// An embedded `tests:` case.
#[derive(Debug, Clone)]
pub struct RuleTest {
    pub name: String,
    pub source: String,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub body: Value,
    pub expect: Vec<String>,
    /// Assertions on the rendered actions of expected rules.
    pub expect_actions: Vec<ExpectedActions>,
    pub origin: Origin,
}

/// `expect: [{ rule, actions: [...] }]`: the rule's actions, by position.
#[derive(Debug, Clone)]
pub struct ExpectedActions {
    pub rule: String,
    pub actions: Vec<ExpectedAction>,
}

/// One entry of `actions:`: the action's type and checks on its fields.
#[derive(Debug, Clone)]
pub struct ExpectedAction {
    pub kind: ActionType,
    pub fields: Vec<FieldCheck>,
    pub origin: Origin,
}

/// `field: { equals | contains | regex: text }` on a rendered action.
#[derive(Debug, Clone)]
pub struct FieldCheck {
    /// `argv`, `argv[0]`, `stdin`, `env.NAME`, `method`, `url`,
    /// `headers.NAME`, `body`, `line`, `rule`, `key`.
    pub field: String,
    pub check: Check,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub enum Check {
    Equals(String),
    Contains(String),
    Regex(regex::Regex),
}

impl Check {
    pub fn holds(&self, value: &str) -> bool {
        match self {
            Check::Equals(x) => value == x,
            Check::Contains(x) => value.contains(x.as_str()),
            Check::Regex(re) => re.is_match(value),
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Check::Equals(x) => write!(f, "equals {x:?}"),
            Check::Contains(x) => write!(f, "contains {x:?}"),
            Check::Regex(re) => write!(f, "regex {:?}", re.as_str()),
        }
    }
}

/// Rules of one source, bucketed by the shape of their `event:` patterns.
#[derive(Debug, Default)]
struct Bucket {
    /// Exact patterns, looked up by the type and each of its parent types.
    exact: HashMap<String, Vec<u32>>,
    /// Rules with at least one glob; checked one by one (few in practice).
    glob: Vec<u32>,
    /// Rules with `*` or no `event:`.
    any: Vec<u32>,
}

impl Bucket {
    fn add(&mut self, idx: u32, rule: &Rule) {
        if rule.events.iter().any(|p| matches!(p, EventPattern::Any)) {
            self.any.push(idx);
        } else if rule
            .events
            .iter()
            .any(|p| matches!(p, EventPattern::Glob(_)))
        {
            self.glob.push(idx);
        } else {
            for p in &rule.events {
                if let EventPattern::Exact(s) = p {
                    self.exact.entry(s.clone()).or_default().push(idx);
                }
            }
        }
    }

    fn candidates(&self, kind: &str, rules: &[Rule], out: &mut Vec<u32>) {
        out.extend_from_slice(&self.any);
        let mut key = kind;
        loop {
            if let Some(ids) = self.exact.get(key) {
                out.extend_from_slice(ids);
            }
            match key.rfind('.') {
                Some(dot) => key = &key[..dot],
                None => break,
            }
        }
        out.extend(
            self.glob
                .iter()
                .copied()
                .filter(|&i| rules.get(i as usize).is_some_and(|r| r.matches_type(kind))),
        );
    }
}

/// Sources and rules by name and path, indexed for routing.
#[derive(Debug, Default)]
pub struct Index {
    by_source: HashMap<String, Bucket>,
    any_source: Bucket,
}

impl Index {
    pub fn build(rules: &[Rule]) -> Index {
        let mut index = Index::default();
        for (i, rule) in rules.iter().enumerate() {
            let idx = u32::try_from(i).unwrap_or(u32::MAX);
            match &rule.sources {
                SourceSel::Any => index.any_source.add(idx, rule),
                SourceSel::Named(names) => {
                    for n in names {
                        index.by_source.entry(n.clone()).or_default().add(idx, rule);
                    }
                }
            }
        }
        index
    }
}

/// What a `when:` template made of one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// It rendered `true`.
    Holds,
    /// It rendered something else.
    Rendered(String),
    /// It failed to render, which counts as not holding.
    Failed(String),
}

impl When {
    /// Longest rendered value an explanation quotes.
    const QUOTED: usize = 120;

    /// `Ok` when it holds; otherwise why not, quoting what it rendered.
    pub fn explain(&self) -> Result<(), String> {
        match self {
            When::Holds => Ok(()),
            When::Rendered(text) => {
                let mut shown: String = text.chars().take(Self::QUOTED).collect();
                if shown.len() < text.len() {
                    shown.push('…');
                }
                Err(format!("`when` rendered {shown:?}, not `true`"))
            }
            When::Failed(why) => Err(format!("`when` did not render: {why}")),
        }
    }
}

/// Shortest substituted value or secret that `RuleSet::redact` replaces.
pub const MIN_REDACTED: usize = 4;

/// The whole compiled configuration, swapped atomically on reload.
#[derive(Debug)]
pub struct RuleSet {
    pub sources: Vec<Source>,
    pub rules: Vec<Rule>,
    pub tests: Vec<RuleTest>,
    pub templates: Templates,
    /// Values that came from `${env:…}`/`${file:…}` and secrets: redacted
    /// from anything shown to a person.
    pub secrets: Vec<Secret>,
    /// `respond:` of the sources that have one, by source name.
    pub source_responds: HashMap<String, Respond>,
    source_by_name: HashMap<String, usize>,
    source_by_path: HashMap<String, usize>,
    rule_by_name: HashMap<String, usize>,
    index: Index,
    /// Short SHA-256 of the rule files it was loaded from; see `digest`.
    digest: String,
}

impl RuleSet {
    pub fn new(
        sources: Vec<Source>,
        rules: Vec<Rule>,
        tests: Vec<RuleTest>,
        templates: Templates,
        mut secrets: Vec<Secret>,
    ) -> RuleSet {
        let source_by_name = sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
        let source_by_path = sources
            .iter()
            .enumerate()
            .map(|(i, s)| (s.path.clone(), i))
            .collect();
        let rule_by_name = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), i))
            .collect();
        // Longest first, so a secret that contains another is redacted whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        secrets.dedup();
        let index = Index::build(&rules);
        RuleSet {
            sources,
            rules,
            tests,
            templates,
            secrets,
            source_responds: HashMap::new(),
            source_by_name,
            source_by_path,
            rule_by_name,
            index,
            digest: String::new(),
        }
    }

    /// A short hex SHA-256 of the rule files' texts, in load order, with
    /// secrets redacted first (so it says nothing about them). Replicas
    /// serving the same rules show the same digest; empty when the set was
    /// not loaded from files.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Sets [`RuleSet::digest`] from the texts of the files loaded.
    pub fn set_digest<'a>(&mut self, texts: impl IntoIterator<Item = &'a str>) {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for text in texts {
            let text = self.redact(text);
            // Length-prefixed, so moving text from one file to the next
            // changes the digest.
            h.update((text.len() as u64).to_be_bytes());
            h.update(text.as_bytes());
        }
        let full = hex::encode(h.finalize());
        self.digest = full.get(..16).unwrap_or(&full).to_owned();
    }

    pub fn source(&self, name: &str) -> Option<&Source> {
        self.source_by_name
            .get(name)
            .and_then(|&i| self.sources.get(i))
    }

    pub fn source_for_path(&self, path: &str) -> Option<&Source> {
        self.source_by_path
            .get(path)
            .and_then(|&i| self.sources.get(i))
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rule_by_name.get(name).and_then(|&i| self.rules.get(i))
    }

    /// The action `at` points to, if its rule and action still exist.
    pub fn action(&self, at: &ActionRef) -> Option<&Action> {
        let mut action = self.rule(&at.rule)?.list(at.list).get(at.index as usize)?;
        for &i in &at.then {
            action = action.then.get(i as usize)?;
        }
        Some(action)
    }

    /// Whether `when` holds in `ctx`: it must render `true`, trimmed, in any
    /// case.
    pub fn when(&self, when: &Template, ctx: &minijinja::Value) -> When {
        match self.templates.render(when, ctx) {
            Ok(text) if text.trim().eq_ignore_ascii_case("true") => When::Holds,
            Ok(text) => When::Rendered(text),
            Err(e) => When::Failed(e.to_string()),
        }
    }

    /// Rules whose source and event type fit, in declaration order, before
    /// conditions are evaluated.
    pub fn candidates(&self, source: &str, kind: &str) -> Vec<u32> {
        let mut out = Vec::new();
        if let Some(bucket) = self.index.by_source.get(source) {
            bucket.candidates(kind, &self.rules, &mut out);
        }
        self.index
            .any_source
            .candidates(kind, &self.rules, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The rules an event matches, in declaration order.
    ///
    /// `ctx` gives the template context of a rule's `when:`; it is called
    /// only for rules that have one and whose other conditions hold, so
    /// routing without `when:` renders nothing.
    pub fn route(
        &self,
        event: &Event,
        mut ctx: impl FnMut(&Rule) -> minijinja::Value,
    ) -> Vec<&Rule> {
        self.candidates(&event.source, &event.kind)
            .into_iter()
            .filter_map(|i| self.rules.get(i as usize))
            .filter(|r| r.condition.as_ref().is_none_or(|c| c.eval(&event.body)))
            .filter(|r| {
                r.when
                    .as_ref()
                    .is_none_or(|w| matches!(self.when(w, &ctx(r)), When::Holds))
            })
            .collect()
    }

    /// For every rule, whether it matches and, if not, why not. `ctx` is as
    /// for [`RuleSet::route`].
    pub fn explain(
        &self,
        event: &Event,
        mut ctx: impl FnMut(&Rule) -> minijinja::Value,
    ) -> Vec<(&Rule, Result<(), String>)> {
        self.rules
            .iter()
            .map(|rule| {
                let verdict = if !match &rule.sources {
                    SourceSel::Any => true,
                    SourceSel::Named(n) => n.iter().any(|s| s == &event.source),
                } {
                    Err(format!(
                        "source {:?} is not one of its sources",
                        event.source
                    ))
                } else if !rule.matches_type(&event.kind) {
                    Err(format!(
                        "event type {:?} does not match its `event:` patterns",
                        event.kind
                    ))
                } else {
                    rule.condition
                        .as_ref()
                        .map_or(Ok(()), |c| c.explain(&event.body))
                        .and_then(|()| match &rule.when {
                            Some(w) => self.when(w, &ctx(rule)).explain(),
                            None => Ok(()),
                        })
                };
                (rule, verdict)
            })
            .collect()
    }

    /// The `respond:` that answers an event of `source` matched by the
    /// rules `matched` (in declaration order): the first of them that has
    /// one, else the source's. With the name of the rule it belongs to.
    pub fn respond_for<'a>(
        &'a self,
        source: &str,
        matched: &[String],
    ) -> Option<(&'a Respond, Option<&'a str>)> {
        matched
            .iter()
            .filter_map(|n| self.rule(n))
            .find_map(|r| Some((r.respond.as_ref()?, Some(r.name.as_str()))))
            .or_else(|| self.source_responds.get(source).map(|r| (r, None)))
    }

    /// `text` with every configured secret replaced by `[redacted]`.
    ///
    /// Values shorter than `MIN_REDACTED` are left alone: replacing every
    /// "t" or "dev" in a text would make it unreadable while hiding nothing
    /// worth hiding.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if s.expose().len() >= MIN_REDACTED && out.contains(s.expose()) {
                out = out.replace(s.expose(), "[redacted]");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_patterns_match_sub_types() {
        let p = EventPattern::Exact("pull_request".into());
        assert!(p.matches("pull_request"));
        assert!(p.matches("pull_request.opened"));
        assert!(!p.matches("pull_request_review"));
        assert!(!p.matches("pull"));
        assert!(!p.matches("issues"));
    }

    #[test]
    fn glob_patterns() {
        let g = |s: &str| EventPattern::Glob(globset::Glob::new(s).unwrap().compile_matcher());
        assert!(g("charge.*").matches("charge.refunded"));
        assert!(g("charge.*").matches("charge.dispute.created"));
        assert!(!g("charge.*").matches("charge"));
        assert!(g("*.created").matches("customer.created"));
        assert!(g("issue?").matches("issues"));
        assert!(EventPattern::Any.matches(""));
    }
}
