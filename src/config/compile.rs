//! Raw config → compiled `RuleSet`, collecting every error.
//!
//! Owns the meaning of each field: resolving `${…}` references, compiling
//! JSONPath, regexes, globs and templates, building provider adapters,
//! checking names and references across files, and choosing defaults. It
//! never stops at the first problem: each check records a diagnostic at the
//! offending value and moves on, so one `check` run shows everything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::diag::{Diagnostic, Diagnostics, Owner};
use super::interp;
use super::node::{Kind, Node, Pos};
use super::raw::{
    ActionConfig, FileConfig, HttpConfig, RetryConfig, RuleConfig, SourceConfig, TestConfig,
};
use crate::condition::{self, Condition, Op, PathCondition};
use crate::providers::{
    self, Algorithm, Encoding, Extractor, HmacOptions, Origin, ProviderSettings, Secret, Source,
};
use crate::rules::{
    Action, ActionKind, EventPattern, HttpAction, HttpBody, RetryPolicy, Rule, RuleSet, RuleTest,
    ShellAction, SigningKey, SourceSel,
};
use crate::template::{JsonTemplate, Template, Templates};

/// HTTP actions time out after this unless `timeout:` is set.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Shell actions time out after this unless `timeout:` is set.
pub const SHELL_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes of a shell action's stdout and of its stderr kept by default.
pub const SHELL_MAX_OUTPUT: u64 = 64 * 1024;

/// One parsed file, waiting to be compiled with the others.
pub struct ParsedFile {
    pub path: PathBuf,
    pub config: FileConfig,
}

/// Compile state shared by every file of one load.
struct Compiler {
    diags: Diagnostics,
    templates: Templates,
    secrets: Vec<Secret>,
    sources: Vec<Source>,
    rules: Vec<Rule>,
    tests: Vec<RuleTest>,
    source_names: HashMap<String, Origin>,
    source_paths: HashMap<String, (String, Origin)>,
    rule_names: HashMap<String, Origin>,
}

/// Where diagnostics of the current item go.
struct Ctx<'a> {
    file: &'a Path,
    base: PathBuf,
    owner: Option<Owner>,
}

impl Ctx<'_> {
    fn origin(&self, pos: Pos) -> Origin {
        Origin {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
        }
    }
}

/// Compile parsed files into a rule set.
///
/// # Errors
/// Every error found, with the warnings, when any error was found.
pub fn compile(files: Vec<ParsedFile>) -> Result<(RuleSet, Diagnostics), Diagnostics> {
    let mut c = Compiler {
        diags: Diagnostics::default(),
        templates: Templates::new(),
        secrets: Vec::new(),
        sources: Vec::new(),
        rules: Vec::new(),
        tests: Vec::new(),
        source_names: HashMap::new(),
        source_paths: HashMap::new(),
        rule_names: HashMap::new(),
    };
    // Sources first, from every file, so a rule may name a source defined in
    // another file.
    for f in &files {
        for s in &f.config.sources {
            c.source(&f.path, s);
        }
    }
    for f in &files {
        for r in &f.config.rules {
            c.rule(&f.path, r);
        }
    }
    for f in &files {
        for t in &f.config.tests {
            c.test(&f.path, t);
        }
    }
    c.diags.sort();
    if c.diags.has_errors() {
        return Err(c.diags);
    }
    let set = RuleSet::new(c.sources, c.rules, c.tests, c.templates, c.secrets);
    Ok((set, c.diags))
}

fn base_of(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e} (write e.g. 30s, 5m, 1h)"))
}

impl Compiler {
    fn error(&mut self, ctx: &Ctx<'_>, pos: Pos, msg: impl Into<String>) {
        self.diags
            .errors
            .push(Diagnostic::new(ctx.file, pos, ctx.owner.as_ref(), msg));
    }

    fn warn(&mut self, ctx: &Ctx<'_>, pos: Pos, msg: impl Into<String>) {
        self.diags
            .warnings
            .push(Diagnostic::new(ctx.file, pos, ctx.owner.as_ref(), msg));
    }

    /// Resolve `${…}` references; the resolved values become secrets to redact.
    fn expand(&mut self, ctx: &Ctx<'_>, text: &str, pos: Pos) -> Option<String> {
        match interp::expand(text, &ctx.base) {
            Ok(e) => {
                self.secrets.extend(e.secrets.into_iter().map(Secret::new));
                Some(e.text)
            }
            Err(e) => {
                let at = locate_reference(ctx.file, pos, text, &e.reference).unwrap_or(pos);
                self.error(ctx, at, e.message);
                None
            }
        }
    }

    fn expand_spanned(&mut self, ctx: &Ctx<'_>, s: &Spanned<String>) -> Option<String> {
        self.expand(ctx, &s.value, Pos::of(s))
    }

    fn duration(&mut self, ctx: &Ctx<'_>, s: &Spanned<String>) -> Option<Duration> {
        let text = self.expand_spanned(ctx, s)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(msg) => {
                self.error(ctx, Pos::of(s), msg);
                None
            }
        }
    }

    fn template(&mut self, ctx: &Ctx<'_>, text: &str, pos: Pos) -> Option<Template> {
        let text = self.expand(ctx, text, pos)?;
        match self.templates.compile(&text) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(ctx, pos, e.to_string());
                None
            }
        }
    }

    fn template_spanned(&mut self, ctx: &Ctx<'_>, s: &Spanned<String>) -> Option<Template> {
        self.template(ctx, &s.value, Pos::of(s))
    }

    // ---- sources ----

    fn source(&mut self, file: &Path, s: &SourceConfig) {
        let name = s.name.value.clone();
        let ctx = Ctx {
            file,
            base: base_of(file),
            owner: Some(Owner::Source(name.clone())),
        };
        let name_pos = Pos::of(&s.name);
        let mut ok = true;
        if !valid_name(&name) {
            self.error(
                &ctx,
                name_pos,
                "a source name may use only letters, digits, `-`, `_` and `.`",
            );
            ok = false;
        }
        if let Some(first) = self.source_names.get(&name) {
            let msg = format!("duplicate source name, first defined at {first}");
            self.error(&ctx, name_pos, msg);
            ok = false;
        } else {
            self.source_names.insert(name.clone(), ctx.origin(name_pos));
        }

        let kind = s.provider.value.as_str();
        let provider_pos = Pos::of(&s.provider);
        if !providers::KINDS.contains(&kind) {
            let msg = format!(
                "unknown provider `{kind}` (expected one of {})",
                providers::KINDS.join(", ")
            );
            self.error(&ctx, provider_pos, msg);
            ok = false;
        }
        if kind == "none" {
            self.warn(
                &ctx,
                provider_pos,
                "`provider: none` accepts requests without checking any signature",
            );
        }

        let secrets = self.secrets_of(&ctx, s.secret.as_ref());
        let tolerance = s.tolerance.as_ref().and_then(|t| self.duration(&ctx, t));
        if s.tolerance.is_some() && tolerance.is_none() {
            ok = false;
        }
        let url = match &s.url {
            Some(u) => match self.expand_spanned(&ctx, u) {
                Some(text) if url::Url::parse(&text).is_ok() => Some(text),
                Some(_) => {
                    self.error(&ctx, Pos::of(u), format!("invalid URL {:?}", u.value));
                    ok = false;
                    None
                }
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };
        let hmac = self.hmac_options(&ctx, s, kind == "hmac");
        let event_type = s.event_type.as_ref().and_then(|e| self.extractor(&ctx, e));
        let event_id = s.event_id.as_ref().and_then(|e| self.extractor(&ctx, e));

        let path = match &s.path {
            Some(p) if !p.value.starts_with('/') => {
                self.error(&ctx, Pos::of(p), "a path must start with `/`");
                ok = false;
                String::new()
            }
            Some(p) => p.value.clone(),
            None => format!("/hooks/{name}"),
        };
        let path_pos = s.path.as_ref().map_or(name_pos, Pos::of);
        if let Some((other, first)) = self.source_paths.get(&path) {
            let msg = format!("path {path} is already served by source {other:?} at {first}");
            self.error(&ctx, path_pos, msg);
            ok = false;
        } else {
            self.source_paths
                .insert(path.clone(), (name.clone(), ctx.origin(path_pos)));
        }

        if !providers::KINDS.contains(&kind) {
            return;
        }
        let Some(secrets) = secrets else { return };
        self.secrets.extend(secrets.iter().cloned());
        let settings = ProviderSettings {
            secrets,
            tolerance,
            url: url.clone(),
            hmac,
        };
        let secret_pos = s.secret.as_ref().map_or(provider_pos, |n| n.pos);
        match providers::build(kind, settings) {
            Ok(provider) if ok => self.sources.push(Source {
                name,
                provider,
                path,
                url,
                event_type,
                event_id,
                origin: ctx.origin(name_pos),
            }),
            Ok(_) => {}
            Err(msg) => self.error(&ctx, secret_pos, msg),
        }
    }

    fn secrets_of(&mut self, ctx: &Ctx<'_>, node: Option<&Node>) -> Option<Vec<Secret>> {
        let Some(node) = node else {
            return Some(Vec::new());
        };
        let items: Vec<&Node> = match &node.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut out = Vec::new();
        let mut ok = true;
        for item in items {
            match item.as_str() {
                Some(text) => match self.expand(ctx, text, item.pos) {
                    Some(v) if v.is_empty() => {
                        self.error(ctx, item.pos, "the secret is empty");
                        ok = false;
                    }
                    Some(v) => out.push(Secret::new(v)),
                    None => ok = false,
                },
                None => {
                    let msg = format!(
                        "`secret` must be a string or a list of strings, found {}",
                        item.type_name()
                    );
                    self.error(ctx, item.pos, msg);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn hmac_options(
        &mut self,
        ctx: &Ctx<'_>,
        s: &SourceConfig,
        is_hmac: bool,
    ) -> Option<HmacOptions> {
        let fields = [
            ("header", &s.header),
            ("algorithm", &s.algorithm),
            ("encoding", &s.encoding),
            ("prefix", &s.prefix),
            ("timestamp_header", &s.timestamp_header),
        ];
        if !is_hmac {
            for (field, value) in fields {
                if let Some(v) = value {
                    let msg = format!("`{field}` applies only to `provider: hmac`");
                    self.error(ctx, Pos::of(v), msg);
                }
            }
            return None;
        }
        let header = match &s.header {
            Some(h) if http::HeaderName::from_bytes(h.value.as_bytes()).is_ok() => h.value.clone(),
            Some(h) => {
                self.error(
                    ctx,
                    Pos::of(h),
                    format!("invalid header name {:?}", h.value),
                );
                return None;
            }
            None => {
                self.error(
                    ctx,
                    Pos::of(&s.provider),
                    "`provider: hmac` needs `header:` (the header carrying the signature)",
                );
                return None;
            }
        };
        let algorithm = match s.algorithm.as_ref().map(|a| (a.value.as_str(), Pos::of(a))) {
            None | Some(("sha256", _)) => Algorithm::Sha256,
            Some(("sha1", _)) => Algorithm::Sha1,
            Some(("sha512", _)) => Algorithm::Sha512,
            Some((other, pos)) => {
                let msg = format!("unknown algorithm `{other}` (expected sha1, sha256 or sha512)");
                self.error(ctx, pos, msg);
                return None;
            }
        };
        let encoding = match s.encoding.as_ref().map(|e| (e.value.as_str(), Pos::of(e))) {
            None | Some(("hex", _)) => Encoding::Hex,
            Some(("base64", _)) => Encoding::Base64,
            Some((other, pos)) => {
                let msg = format!("unknown encoding `{other}` (expected hex or base64)");
                self.error(ctx, pos, msg);
                return None;
            }
        };
        Some(HmacOptions {
            header,
            algorithm,
            encoding,
            prefix: s
                .prefix
                .as_ref()
                .map(|p| p.value.clone())
                .unwrap_or_default(),
            timestamp_header: s.timestamp_header.as_ref().map(|t| t.value.clone()),
        })
    }

    fn extractor(&mut self, ctx: &Ctx<'_>, s: &Spanned<String>) -> Option<Extractor> {
        let text = s.value.trim();
        if text.starts_with('$') {
            match condition::compile_path(text) {
                Ok(q) => Some(Extractor::Path(q)),
                Err(msg) => {
                    self.error(ctx, Pos::of(s), msg);
                    None
                }
            }
        } else {
            match http::HeaderName::from_bytes(text.as_bytes()) {
                Ok(h) => Some(Extractor::Header(h.as_str().to_owned())),
                Err(_) => {
                    let msg = format!("{text:?} is neither a JSONPath (`$…`) nor a header name");
                    self.error(ctx, Pos::of(s), msg);
                    None
                }
            }
        }
    }

    // ---- rules ----

    fn rule(&mut self, file: &Path, r: &RuleConfig) {
        let name = r.name.value.clone();
        let ctx = Ctx {
            file,
            base: base_of(file),
            owner: Some(Owner::Rule(name.clone())),
        };
        let name_pos = Pos::of(&r.name);
        let errors_before = self.diags.errors.len();
        if !valid_name(&name) {
            self.error(
                &ctx,
                name_pos,
                "a rule name may use only letters, digits, `-`, `_` and `.`",
            );
        }
        if let Some(first) = self.rule_names.get(&name) {
            let msg = format!("duplicate rule name, first defined at {first}");
            self.error(&ctx, name_pos, msg);
        } else {
            self.rule_names.insert(name.clone(), ctx.origin(name_pos));
        }

        let sources = self.source_sel(&ctx, &r.source);
        let events = self.event_patterns(&ctx, r.event.as_ref());
        let condition = r.match_.as_ref().and_then(|m| self.match_block(&ctx, m));
        let dedup = r
            .dedup
            .as_ref()
            .and_then(|d| self.template_spanned(&ctx, d));
        if r.actions.is_empty() {
            self.error(&ctx, name_pos, "a rule needs at least one action");
        }
        let actions: Vec<Action> = r
            .actions
            .iter()
            .filter_map(|a| self.action(&ctx, a))
            .collect();
        let on_failure: Vec<Action> = r
            .on_failure
            .iter()
            .filter_map(|a| self.action(&ctx, a))
            .collect();
        if self.diags.errors.len() > errors_before {
            return;
        }
        self.rules.push(Rule {
            name,
            sources,
            events,
            condition,
            dedup,
            actions,
            on_failure,
            origin: ctx.origin(name_pos),
        });
    }

    fn source_sel(&mut self, ctx: &Ctx<'_>, node: &Node) -> SourceSel {
        let items: Vec<&Node> = match &node.kind {
            Kind::Str(s) if s == "*" => return SourceSel::Any,
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut names = Vec::new();
        for item in items {
            match item.as_str() {
                Some("*") => return SourceSel::Any,
                Some(n) if self.source_names.contains_key(n) => names.push(n.to_owned()),
                Some(n) => {
                    let mut known: Vec<&str> =
                        self.source_names.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    let msg = format!("unknown source {n:?} (defined: {})", known.join(", "));
                    self.error(ctx, item.pos, msg);
                }
                None => {
                    let msg = format!(
                        "`source` must be a name, a list of names or \"*\", found {}",
                        item.type_name()
                    );
                    self.error(ctx, item.pos, msg);
                }
            }
        }
        SourceSel::Named(names)
    }

    fn event_patterns(&mut self, ctx: &Ctx<'_>, node: Option<&Node>) -> Vec<EventPattern> {
        let Some(node) = node else {
            return vec![EventPattern::Any];
        };
        let items: Vec<&Node> = match &node.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut out = Vec::new();
        for item in items {
            let Some(text) = item.as_str() else {
                let msg = format!(
                    "`event` must be a glob or a list of globs, found {}",
                    item.type_name()
                );
                self.error(ctx, item.pos, msg);
                continue;
            };
            if text == "*" || text == "**" {
                out.push(EventPattern::Any);
            } else if text.contains(['*', '?', '[', '{']) {
                match globset::Glob::new(text) {
                    Ok(g) => out.push(EventPattern::Glob(g.compile_matcher())),
                    Err(e) => {
                        let msg = format!("invalid event glob {text:?}: {}", e.kind());
                        self.error(ctx, item.pos, msg);
                    }
                }
            } else if text.is_empty() {
                self.error(ctx, item.pos, "an event pattern cannot be empty");
            } else {
                out.push(EventPattern::Exact(text.to_owned()));
            }
        }
        out
    }

    /// A `match:` mapping: every entry must hold.
    fn match_block(&mut self, ctx: &Ctx<'_>, node: &Node) -> Option<Condition> {
        let Kind::Map(entries) = &node.kind else {
            let msg = format!(
                "`match` must be a mapping of JSONPath to condition, found {}",
                node.type_name()
            );
            self.error(ctx, node.pos, msg);
            return None;
        };
        let mut all = Vec::new();
        let mut ok = true;
        for (key, value) in entries {
            match self.match_entry(ctx, key, value) {
                Some(c) => all.push(c),
                None => ok = false,
            }
        }
        ok.then_some(Condition::All(all))
    }

    fn match_entry(&mut self, ctx: &Ctx<'_>, key: &Node, value: &Node) -> Option<Condition> {
        let Some(k) = key.as_str() else {
            let msg = format!("a match key must be a string, found {}", key.type_name());
            self.error(ctx, key.pos, msg);
            return None;
        };
        match k {
            "all" | "any" => {
                let Kind::Seq(items) = &value.kind else {
                    let msg = format!(
                        "`{k}` needs a list of conditions, found {}",
                        value.type_name()
                    );
                    self.error(ctx, value.pos, msg);
                    return None;
                };
                let mut children = Vec::new();
                let mut ok = true;
                for item in items {
                    match self.match_block(ctx, item) {
                        Some(c) => children.push(c),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                Some(if k == "all" {
                    Condition::All(children)
                } else {
                    Condition::Any(children)
                })
            }
            "not" => self
                .match_block(ctx, value)
                .map(|c| Condition::Not(Box::new(c))),
            path if path.starts_with('$') => {
                let query = match condition::compile_path(path) {
                    Ok(q) => Some(q),
                    Err(msg) => {
                        self.error(ctx, key.pos, format!("condition {path:?}: {msg}"));
                        None
                    }
                };
                let ops = self.operators(ctx, path, value)?;
                Some(Condition::Path(PathCondition {
                    path: path.to_owned(),
                    query: query?,
                    ops,
                }))
            }
            other => {
                let msg = format!(
                    "match key {other:?} is neither a JSONPath (start it with `$`) nor one of all, any, not"
                );
                self.error(ctx, key.pos, msg);
                None
            }
        }
    }

    /// A bare value means equals; a mapping lists operators, all of which
    /// must hold.
    fn operators(&mut self, ctx: &Ctx<'_>, path: &str, value: &Node) -> Option<Vec<Op>> {
        let Kind::Map(entries) = &value.kind else {
            return Some(vec![Op::Equals(value.to_json())]);
        };
        if entries.is_empty() {
            let msg = format!(
                "condition {path:?}: an empty mapping has no operator (write `equals: {{}}` to compare with an empty object)"
            );
            self.error(ctx, value.pos, msg);
            return None;
        }
        let mut ops = Vec::new();
        let mut ok = true;
        for (op_key, operand) in entries {
            let name = op_key.key_text();
            let pos = if condition::OPERATORS.contains(&name.as_str()) {
                operand.pos
            } else {
                op_key.pos
            };
            match Op::compile(&name, &operand.to_json()) {
                Ok(op) => ops.push(op),
                Err(msg) => {
                    self.error(ctx, pos, format!("condition {path:?}: {msg}"));
                    ok = false;
                }
            }
        }
        ok.then_some(ops)
    }

    // ---- actions ----

    fn action(&mut self, ctx: &Ctx<'_>, spanned: &Spanned<ActionConfig>) -> Option<Action> {
        let a = &spanned.value;
        let pos = Pos::of(spanned);
        let present = [a.log.is_some(), a.http.is_some(), a.shell.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if present != 1 {
            let msg = if present == 0 {
                "an action needs one of `log`, `http` or `shell`"
            } else {
                "an action has exactly one of `log`, `http` or `shell`; write separate actions"
            };
            self.error(ctx, pos, msg);
            return None;
        }
        let errors_before = self.diags.errors.len();
        if a.shell.is_none() {
            for (field, p) in [
                (
                    "env",
                    a.env.as_ref().and_then(|m| m.values().next()).map(Pos::of),
                ),
                ("workdir", a.workdir.as_ref().map(Pos::of)),
                ("max_output", a.max_output.as_ref().map(Pos::of)),
            ] {
                if let Some(p) = p {
                    self.error(ctx, p, format!("`{field}` applies only to `shell` actions"));
                }
            }
        }
        let (kind, default_timeout, default_retry) = if let Some(t) = &a.log {
            (
                self.template_spanned(ctx, t).map(ActionKind::Log),
                HTTP_TIMEOUT,
                RetryPolicy::NONE,
            )
        } else if let Some(h) = &a.http {
            (
                self.http(ctx, h).map(ActionKind::Http),
                HTTP_TIMEOUT,
                RetryPolicy::HTTP_DEFAULT,
            )
        } else if let Some(argv) = &a.shell {
            (
                self.shell(ctx, a, argv).map(ActionKind::Shell),
                SHELL_TIMEOUT,
                RetryPolicy::NONE,
            )
        } else {
            return None;
        };
        let inner_timeout = a.http.as_ref().and_then(|h| h.timeout.as_ref());
        if let (Some(outer), Some(_)) = (&a.timeout, inner_timeout) {
            self.error(
                ctx,
                Pos::of(outer),
                "`timeout` is set both on the action and inside `http`; keep one",
            );
        }
        let timeout = match a.timeout.as_ref().or(inner_timeout) {
            Some(t) => match self.duration(ctx, t) {
                Some(d) if d.is_zero() => {
                    self.error(ctx, Pos::of(t), "a timeout must be longer than zero");
                    default_timeout
                }
                Some(d) => d,
                None => default_timeout,
            },
            None => default_timeout,
        };
        let retry = match &a.retry {
            Some(r) => self.retry(ctx, r, default_retry),
            None => default_retry,
        };
        let concurrency = match &a.concurrency {
            Some(c) if c.value == 0 => {
                self.error(ctx, Pos::of(c), "`concurrency` must be at least 1");
                None
            }
            Some(c) => Some(c.value),
            None => None,
        };
        let kind = kind?;
        if self.diags.errors.len() > errors_before {
            return None;
        }
        Some(Action {
            kind,
            retry,
            timeout,
            concurrency,
            origin: ctx.origin(pos),
        })
    }

    fn retry(&mut self, ctx: &Ctx<'_>, r: &RetryConfig, default: RetryPolicy) -> RetryPolicy {
        // A `retry:` block on an action that does not retry by default asks
        // for the HTTP defaults where it is silent.
        let base = if default.attempts > 1 {
            default
        } else {
            RetryPolicy::HTTP_DEFAULT
        };
        let attempts = match &r.attempts {
            Some(a) if a.value == 0 => {
                self.error(
                    ctx,
                    Pos::of(a),
                    "`attempts` counts the first try, so it is at least 1",
                );
                base.attempts
            }
            Some(a) => a.value,
            None => base.attempts,
        };
        let backoff = r
            .backoff
            .as_ref()
            .and_then(|b| self.duration(ctx, b))
            .unwrap_or(base.backoff);
        let max_backoff = r
            .max_backoff
            .as_ref()
            .and_then(|b| self.duration(ctx, b))
            .unwrap_or(base.max_backoff.max(backoff));
        if let Some(m) = &r.max_backoff
            && max_backoff < backoff
        {
            self.error(ctx, Pos::of(m), "`max_backoff` is shorter than `backoff`");
        }
        RetryPolicy {
            attempts,
            backoff,
            max_backoff,
        }
    }

    fn http(&mut self, ctx: &Ctx<'_>, h: &HttpConfig) -> Option<HttpAction> {
        let url_pos = Pos::of(&h.url);
        let url_text = self.expand_spanned(ctx, &h.url)?;
        if host_is_templated(&url_text) {
            self.warn(
                ctx,
                url_pos,
                "the URL's host comes from a template: payload values must not choose where requests go",
            );
        } else if !has_template(&url_text) && url::Url::parse(&url_text).is_err() {
            self.error(ctx, url_pos, format!("invalid URL {url_text:?}"));
        }
        let url = match self.templates.compile(&url_text) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(ctx, url_pos, e.to_string());
                None
            }
        };
        let method = match &h.method {
            Some(m) => match http::Method::from_bytes(m.value.to_ascii_uppercase().as_bytes()) {
                Ok(method) => Some(method),
                Err(_) => {
                    self.error(
                        ctx,
                        Pos::of(m),
                        format!("invalid HTTP method {:?}", m.value),
                    );
                    None
                }
            },
            None => Some(http::Method::POST),
        };
        let mut headers = Vec::new();
        for (name, value) in h.headers.iter().flatten() {
            let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
                self.error(ctx, Pos::of(value), format!("invalid header name {name:?}"));
                continue;
            };
            if let Some(t) = self.template_spanned(ctx, value) {
                headers.push((header, t));
            }
        }
        let body = match (&h.json, &h.body) {
            (Some(_), Some(b)) => {
                self.error(ctx, Pos::of(b), "`json` and `body` are exclusive; keep one");
                None
            }
            (Some(j), None) => self.json_body(ctx, j).map(HttpBody::Json),
            (None, Some(b)) => self.template_spanned(ctx, b).map(HttpBody::Raw),
            (None, None) => None,
        };
        let sign = match &h.sign {
            Some(s) => {
                let secret = self.expand_spanned(ctx, &s.secret)?;
                let raw = secret.strip_prefix("whsec_").unwrap_or(&secret);
                match base64::engine::general_purpose::STANDARD.decode(raw) {
                    Ok(key) if !key.is_empty() => {
                        self.secrets.push(Secret::new(secret.clone()));
                        Some(SigningKey(key))
                    }
                    _ => {
                        self.error(
                            ctx,
                            Pos::of(&s.secret),
                            "`sign.secret` must be a Standard Webhooks secret: `whsec_` followed by base64",
                        );
                        None
                    }
                }
            }
            None => None,
        };
        Some(HttpAction {
            method: method?,
            url: url?,
            headers,
            body,
            sign,
        })
    }

    /// A `json:` body: one template string whose output is JSON, or a YAML
    /// value whose string leaves are templates.
    fn json_body(&mut self, ctx: &Ctx<'_>, node: &Node) -> Option<JsonTemplate> {
        if let Some(text) = node.as_str() {
            let text = self.expand(ctx, text, node.pos)?;
            return match self.templates.compile_typed(&text) {
                Ok(t) => Some(JsonTemplate::Whole(t)),
                Err(e) => {
                    self.error(ctx, node.pos, e.to_string());
                    None
                }
            };
        }
        self.json_leaves(ctx, node)
    }

    fn json_leaves(&mut self, ctx: &Ctx<'_>, node: &Node) -> Option<JsonTemplate> {
        match &node.kind {
            Kind::Str(text) => {
                let text = self.expand(ctx, text, node.pos)?;
                if !has_template(&text) {
                    return Some(JsonTemplate::Static(Value::String(text)));
                }
                match self.templates.compile_typed(&text) {
                    Ok(t) => Some(JsonTemplate::Leaf(t)),
                    Err(e) => {
                        self.error(ctx, node.pos, e.to_string());
                        None
                    }
                }
            }
            Kind::Seq(items) => {
                let out: Vec<Option<JsonTemplate>> =
                    items.iter().map(|i| self.json_leaves(ctx, i)).collect();
                out.into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(JsonTemplate::Array)
            }
            Kind::Map(entries) => {
                let out: Vec<Option<(String, JsonTemplate)>> = entries
                    .iter()
                    .map(|(k, v)| Some((k.key_text(), self.json_leaves(ctx, v)?)))
                    .collect();
                out.into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(JsonTemplate::Object)
            }
            _ => Some(JsonTemplate::Static(node.to_json())),
        }
    }

    fn shell(&mut self, ctx: &Ctx<'_>, a: &ActionConfig, argv: &Node) -> Option<ShellAction> {
        let Kind::Seq(items) = &argv.kind else {
            let msg = format!(
                "`shell` takes an argv list such as [\"./deploy.sh\", \"{{{{ body.after }}}}\"], found {}; it never runs a shell",
                argv.type_name()
            );
            self.error(ctx, argv.pos, msg);
            return None;
        };
        if items.is_empty() {
            self.error(ctx, argv.pos, "`shell` needs at least the program to run");
            return None;
        }
        let mut args = Vec::new();
        for item in items {
            let text = match &item.kind {
                Kind::Str(s) => s.clone(),
                Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) => item.key_text(),
                _ => {
                    let msg = format!(
                        "a `shell` argument must be a string, found {}",
                        item.type_name()
                    );
                    self.error(ctx, item.pos, msg);
                    continue;
                }
            };
            if let Some(t) = self.template(ctx, &text, item.pos) {
                args.push(t);
            }
        }
        let mut env = Vec::new();
        for (name, value) in a.env.iter().flatten() {
            if name.is_empty() || name.contains(['=', '\0']) {
                self.error(
                    ctx,
                    Pos::of(value),
                    format!("invalid environment variable name {name:?}"),
                );
                continue;
            }
            if let Some(t) = self.template_spanned(ctx, value) {
                env.push((name.clone(), t));
            }
        }
        let workdir = a
            .workdir
            .as_ref()
            .and_then(|w| self.expand_spanned(ctx, w))
            .map(PathBuf::from);
        let max_output = a.max_output.as_ref().map_or(SHELL_MAX_OUTPUT, |m| m.value);
        Some(ShellAction {
            argv: args,
            env,
            workdir,
            max_output: usize::try_from(max_output).unwrap_or(usize::MAX),
        })
    }

    // ---- tests ----

    fn test(&mut self, file: &Path, t: &TestConfig) {
        let ctx = Ctx {
            file,
            base: base_of(file),
            owner: Some(Owner::Test(t.name.value.clone())),
        };
        let mut ok = true;
        if !self.source_names.contains_key(&t.source.value) {
            let msg = format!("unknown source {:?}", t.source.value);
            self.error(&ctx, Pos::of(&t.source), msg);
            ok = false;
        }
        for e in &t.expect {
            if !self.rule_names.contains_key(&e.value) {
                let msg = format!("expects unknown rule {:?}", e.value);
                self.error(&ctx, Pos::of(e), msg);
                ok = false;
            }
        }
        if !ok {
            return;
        }
        self.tests.push(RuleTest {
            name: t.name.value.clone(),
            source: t.source.value.clone(),
            headers: t
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            query: t
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body: t
                .body
                .as_ref()
                .map_or(Value::Object(Default::default()), Node::to_json),
            expect: t.expect.iter().map(|e| e.value.clone()).collect(),
            origin: ctx.origin(Pos::of(&t.name)),
        });
    }
}

/// Where `reference` (as written, `${env:NAME}`) appears in `file`, looking
/// only in the stretch of text that can hold the value `value` that starts at
/// `start`: a block scalar puts it on a later line, quoting shifts its column.
/// `None` when the file cannot be read or the reference is not found there
/// verbatim (the caller then points at the value's start).
fn locate_reference(file: &Path, start: Pos, value: &str, reference: &str) -> Option<Pos> {
    let text = std::fs::read_to_string(file).ok()?;
    let line_start = if start.line <= 1 {
        0
    } else {
        text.match_indices('\n')
            .nth(usize::try_from(start.line).ok()? - 2)?
            .0
            + 1
    };
    let offset = line_start
        + text[line_start..]
            .char_indices()
            .nth(usize::try_from(start.column).ok()?.saturating_sub(1))?
            .0;
    // The raw value is the value plus quotes, escapes and, per line, its
    // indentation: a generous bound keeps the search inside it.
    let lines = value.lines().count() + 2;
    let window = value.len() * 2 + lines * (usize::try_from(start.column).ok()? + 8);
    let end = (offset + window).min(text.len());
    let end = (end..=text.len()).find(|&i| text.is_char_boundary(i))?;
    let found = offset + text[offset..end].find(reference)?;
    let before = &text[..found];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    Some(Pos {
        line: u32::try_from(line).ok()?,
        column: u32::try_from(column).ok()?,
    })
}

fn has_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// Whether any template syntax appears in the scheme or the authority,
/// that is before the first `/`, `?` or `#` after `://`. A template
/// expression that itself contains `/` still starts before it.
fn host_is_templated(url: &str) -> bool {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    has_template(scheme) || has_template(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_references_are_located_where_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.yaml");
        let text = "a: \"x ${env:A} y\"\nb: |\n  one\n  two ${env:B}\nc: plain\n";
        std::fs::write(&file, text).unwrap();
        let at = |line, column| Pos { line, column };
        // A quoted scalar: the column of `${`, not of the quote.
        assert_eq!(
            locate_reference(&file, at(1, 4), "x ${env:A} y", "${env:A}"),
            Some(at(1, 7))
        );
        // A block scalar: the reference's own line.
        assert_eq!(
            locate_reference(&file, at(2, 4), "one\ntwo ${env:B}\n", "${env:B}"),
            Some(at(4, 7))
        );
        // Not in the value: no position, so the caller keeps the value's.
        assert_eq!(locate_reference(&file, at(5, 4), "plain", "${env:A}"), None);
        assert_eq!(
            locate_reference(&dir.path().join("gone.yaml"), at(1, 1), "x", "${env:A}"),
            None
        );
    }

    #[test]
    fn templated_hosts_are_spotted() {
        assert!(host_is_templated("https://{{ body.host }}/x"));
        assert!(host_is_templated(
            "http://api.{{ body.tenant }}.example.com/"
        ));
        assert!(!host_is_templated(
            "https://api.example.com/{{ body.path }}"
        ));
        assert!(!host_is_templated(
            "http://127.0.0.1:8700/agent?x={{ body.x }}"
        ));
        assert!(host_is_templated("{{ body.url }}"));
        assert!(host_is_templated("{{ body.base }}/x"));
        assert!(host_is_templated("https://{{ body.hosts['a/b'] }}/x"));
        // Multi-byte characters must not trip the scan.
        assert!(!host_is_templated("http://é/{{ body.x }}"));
        assert!(host_is_templated("http://é{{ body.x }}/"));
    }
}
