//! Compiling one action of a rule (`actions:`, `on_failure:`, `on_cancel:`
//! or a `then:` list): the `log`, `http`, `shell` and `cancel` kinds with
//! their templates, and the settings that apply to all of them (timeout,
//! retry, concurrency, `when`, `group`, `start_within` and the nested
//! `then:` actions).

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use serde_saphyr::Spanned;

use super::{Compiler, Ctx};
use crate::config::node::{Kind, Node, Pos};
use crate::config::raw::{
    ActionConfig, CancelConfig, GroupConfig, HttpConfig, ON_BUSY, RetryConfig,
};
use crate::providers::Secret;
use crate::rules::{
    Action, ActionKind, CancelAction, Group, HttpAction, HttpBody, OnBusy, RetryPolicy,
    ShellAction, SigningKey,
};
use crate::template::{JsonTemplate, Template};

/// HTTP actions time out after this unless `timeout:` is set.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Shell actions time out after this unless `timeout:` is set.
const SHELL_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes of a shell action's stdout and of its stderr kept by default.
const SHELL_MAX_OUTPUT: u64 = 64 * 1024;

impl Compiler {
    /// A top-level action of a rule's list.
    pub(super) fn action(
        &mut self,
        ctx: &Ctx<'_>,
        spanned: &Spanned<ActionConfig>,
    ) -> Option<Action> {
        self.action_at(ctx, spanned, 0)
    }

    /// An action `depth` `then:` lists below its rule's list.
    fn action_at(
        &mut self,
        ctx: &Ctx<'_>,
        spanned: &Spanned<ActionConfig>,
        depth: usize,
    ) -> Option<Action> {
        let a = &spanned.value;
        let pos = Pos::of(spanned);
        if depth > Action::MAX_THEN_DEPTH {
            // Reported once, at the first action too deep; what is below it
            // is not compiled.
            let msg = format!(
                "`then:` nests at most {} deep; this action is {depth} deep",
                Action::MAX_THEN_DEPTH
            );
            self.error(ctx, pos, msg);
            return None;
        }
        let present = [
            a.log.is_some(),
            a.http.is_some(),
            a.shell.is_some(),
            a.cancel.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if present != 1 {
            let msg = if present == 0 {
                "an action needs one of `log`, `http`, `shell` or `cancel`"
            } else {
                "an action has exactly one of `log`, `http`, `shell` or `cancel`; write separate actions"
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
                ("stdin", a.stdin.as_ref().map(Pos::of)),
                ("files", a.files.as_ref().map(|f| f.pos)),
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
        } else if let Some(c) = &a.cancel {
            (
                self.cancel(ctx, c).map(ActionKind::Cancel),
                HTTP_TIMEOUT,
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
        let when = a.when.as_ref().and_then(|w| self.template_spanned(ctx, w));
        let (group, kill_grace) = match &a.group {
            Some(g) => self.group(ctx, g),
            None => (None, Action::DEFAULT_KILL_GRACE),
        };
        let start_within = match &a.start_within {
            Some(s) => match self.duration(ctx, s) {
                Some(d) if d.is_zero() => {
                    self.error(ctx, Pos::of(s), "`start_within` must be longer than zero");
                    None
                }
                d => d,
            },
            None => None,
        };
        let then: Vec<Action> = a
            .then
            .iter()
            .filter_map(|child| self.action_at(ctx, child, depth + 1))
            .collect();
        let kind = kind?;
        if self.diags.errors.len() > errors_before {
            return None;
        }
        Some(Action {
            kind,
            retry,
            timeout,
            concurrency,
            when,
            group,
            kill_grace,
            then,
            start_within,
            origin: ctx.origin(pos),
        })
    }

    /// `group:`, and the kill grace it carries.
    fn group(&mut self, ctx: &Ctx<'_>, g: &GroupConfig) -> (Option<Group>, Duration) {
        let key = self.template_spanned(ctx, &g.key);
        let limit = match &g.limit {
            Some(l) if l.value == 0 => {
                self.error(ctx, Pos::of(l), "`limit` must be at least 1");
                1
            }
            Some(l) => l.value,
            None => 1,
        };
        let on_busy = match &g.on_busy {
            Some(o) => match o.value.as_str() {
                "queue" => OnBusy::Queue,
                "replace" => OnBusy::Replace,
                "cancel" => OnBusy::Cancel,
                "skip" => OnBusy::Skip,
                other => {
                    let msg = format!(
                        "unknown `on_busy` {other:?} (expected one of: {})",
                        ON_BUSY.join(", ")
                    );
                    self.error(ctx, Pos::of(o), msg);
                    OnBusy::default()
                }
            },
            None => OnBusy::default(),
        };
        let kill_grace = g
            .kill_grace
            .as_ref()
            .and_then(|k| self.duration(ctx, k))
            .unwrap_or(Action::DEFAULT_KILL_GRACE);
        let group = key.map(|key| Group {
            key,
            limit,
            on_busy,
        });
        (group, kill_grace)
    }

    /// `cancel:`; whether its rule exists is checked once every file's
    /// rules are known.
    fn cancel(&mut self, ctx: &Ctx<'_>, c: &CancelConfig) -> Option<CancelAction> {
        self.cancel_refs.push(super::CancelRef {
            file: ctx.file.to_path_buf(),
            owner: ctx.owner.clone(),
            pos: Pos::of(&c.rule),
            rule: c.rule.value.clone(),
        });
        let key = self.template_spanned(ctx, &c.key)?;
        Some(CancelAction {
            rule: c.rule.value.clone(),
            key,
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
            Ok(t) => {
                self.templates.set_origin(&t, ctx.origin(url_pos));
                Some(t)
            }
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
    pub(super) fn json_body(&mut self, ctx: &Ctx<'_>, node: &Node) -> Option<JsonTemplate> {
        if let Some(text) = node.as_str() {
            let text = self.expand(ctx, text, node.pos)?;
            return match self.templates.compile_typed(&text) {
                Ok(t) => {
                    self.templates.set_origin(&t, ctx.origin(node.pos));
                    Some(JsonTemplate::Whole(t))
                }
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
                    Ok(t) => {
                        self.templates.set_origin(&t, ctx.origin(node.pos));
                        Some(JsonTemplate::Leaf(t))
                    }
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
        let stdin = a.stdin.as_ref().and_then(|s| self.template_spanned(ctx, s));
        let files = a
            .files
            .as_ref()
            .map(|f| self.files(ctx, f))
            .unwrap_or_default();
        Some(ShellAction {
            argv: args,
            env,
            workdir,
            max_output: usize::try_from(max_output).unwrap_or(usize::MAX),
            stdin,
            files,
        })
    }

    /// `files:`: plain file names, each to a content template.
    fn files(&mut self, ctx: &Ctx<'_>, node: &Node) -> Vec<(String, Template)> {
        let Kind::Map(entries) = &node.kind else {
            let msg = format!(
                "`files` must be a mapping of file name to content, found {}",
                node.type_name()
            );
            self.error(ctx, node.pos, msg);
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in entries {
            let name = key.key_text();
            if let Err(why) = plain_file_name(&name) {
                self.error(ctx, key.pos, format!("file name {name:?} {why}"));
                continue;
            }
            if out.iter().any(|(n, _)| *n == name) {
                self.error(ctx, key.pos, format!("duplicate file name {name:?}"));
                continue;
            }
            let text = match &value.kind {
                Kind::Str(s) => s.clone(),
                Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) => value.key_text(),
                _ => {
                    let msg = format!(
                        "the content of file {name:?} must be a string, found {}",
                        value.type_name()
                    );
                    self.error(ctx, value.pos, msg);
                    continue;
                }
            };
            if let Some(t) = self.template(ctx, &text, value.pos) {
                out.push((name, t));
            }
        }
        out
    }
}

/// A name that stays inside the attempt's directory: one path component,
/// neither `.` nor `..`.
fn plain_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.contains(['/', '\0']) {
        Err("must be a plain file name, without `/`")
    } else if name == "." || name == ".." {
        Err("must be a plain file name, not `.` or `..`")
    } else {
        Ok(())
    }
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
