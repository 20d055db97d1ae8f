//! Turning an action and an event into exactly what will run.
//!
//! Owns the template context (`body`, `headers`, `query`, `event`, `rule`,
//! `failure`, and keys added per delivery such as `result`, `cancel` and
//! `files`) and the rendered forms of each action. The dispatcher runs
//! what this produces; `hookrouter test` prints it. Keeping one renderer for
//! both is what makes the dry run truthful.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use serde::Serialize;
use serde_json::Value;

use crate::event::Event;
use crate::rules::{Action, ActionKind, HttpBody, RuleSet};
use crate::template::TemplateError;

/// An HTTP request, ready to send (before Standard Webhooks signing, which
/// needs the send time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpRequest {
    /// Checked when the rules were compiled, so it is always valid here.
    #[serde(serialize_with = "method_text")]
    pub method: http::Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    #[serde(serialize_with = "body_text")]
    pub body: Option<Vec<u8>>,
    /// Whether the request is signed with the Standard Webhooks scheme.
    pub signed: bool,
}

fn method_text<S: serde::Serializer>(method: &http::Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(method.as_str())
}

/// A body shown as text (lossy UTF-8) rather than a list of byte values.
fn body_text<S: serde::Serializer>(body: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match body {
        Some(b) => s.serialize_some(&String::from_utf8_lossy(b)),
        None => s.serialize_none(),
    }
}

/// A process to start: `argv[0]` is the program, no shell involved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    /// Written to the child's standard input, which is then closed. `None`:
    /// stdin is `/dev/null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// The attempt's private directory for `files`; created just before the
    /// process starts and removed after it. `None` when there are no files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files_dir: Option<PathBuf>,
    /// File name (inside `files_dir`) → content.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<(String, String)>,
}

/// Where `render` pretends an attempt's files live: the dry run has no
/// attempt, and a path that is plainly not real says so.
pub const DRY_RUN_FILES_DIR: &str = "<attempt-files>";

/// One action, rendered.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Rendered {
    Log {
        line: String,
    },
    Http(HttpRequest),
    Shell(Command),
    /// Cancel the deliveries of `rule` whose group key is `key`.
    Cancel {
        rule: String,
        key: String,
    },
}

/// The template context of one delivery. `failure` is set for `on_failure`
/// actions: the failed delivery's action, attempts and last error.
///
/// Nothing is converted up front: `body.a.b` walks the event's JSON and
/// converts only the value it reaches, so a large body costs a template only
/// what it reads. Whole objects (`{{ body | tojson }}`, loops) are walked the
/// same way, in the body's own key order.
pub fn context(event: &Arc<Event>, rule: &str, failure: Option<&Value>) -> minijinja::Value {
    context_with(event, rule, failure, BTreeMap::new())
}

/// [`context`] plus top-level keys of the delivery's own (`result` for a
/// `then:` child, `cancel` for `on_cancel`). An extra key never hides one
/// of the event's.
pub fn context_with(
    event: &Arc<Event>,
    rule: &str,
    failure: Option<&Value>,
    extra: BTreeMap<String, minijinja::Value>,
) -> minijinja::Value {
    minijinja::Value::from_object(Root {
        event: Arc::clone(event),
        rule: rule.to_owned(),
        failure: failure.cloned(),
        extra,
    })
}

/// `ctx` with `extra`'s keys added; everything else is still looked up
/// lazily in `ctx`, whose own keys win (as in [`context_with`]).
pub fn extend(
    ctx: &minijinja::Value,
    extra: BTreeMap<String, minijinja::Value>,
) -> minijinja::Value {
    if extra.is_empty() {
        return ctx.clone();
    }
    minijinja::value::merge_maps([minijinja::Value::from(extra), ctx.clone()])
}

/// The `debounce` key of a debounced delivery's context: `count` events in
/// its burst, the first received at `first_at` (RFC 3339, as
/// `event.received_at`).
pub fn debounce(count: u32, first_ms: u64) -> BTreeMap<String, minijinja::Value> {
    let first_at =
        humantime::format_rfc3339_millis(crate::clock::from_unix_ms(first_ms)).to_string();
    BTreeMap::from([(
        "debounce".to_owned(),
        minijinja::context! { count => count, first_at => first_at },
    )])
}

/// [`debounce`] for an event that is a burst of its own: a debounced rule's
/// event run without its burst (a replay, the dry run).
pub fn debounce_alone(event: &Event) -> BTreeMap<String, minijinja::Value> {
    let first_ms = humantime::parse_rfc3339(&event.received_at)
        .map_or_else(|_| crate::clock::now_ms(), crate::clock::unix_ms);
    debounce(1, first_ms)
}

/// The top level: `body`, `headers`, `query`, `event`, `rule`, `failure`,
/// and the extra keys.
#[derive(Debug)]
struct Root {
    event: Arc<Event>,
    rule: String,
    failure: Option<Value>,
    extra: BTreeMap<String, minijinja::Value>,
}

const KEYS: &[&str] = &["body", "headers", "query", "event", "rule"];

impl Object for Root {
    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        let e = &self.event;
        Some(match key.as_str()? {
            "body" => json(&e.body, || Json {
                event: Arc::clone(e),
                path: Vec::new(),
            }),
            "headers" => serde_value(&e.headers),
            "query" => serde_value(&e.query),
            "event" => serde_value(EventContext {
                id: &e.id,
                kind: &e.kind,
                source: &e.source,
                provider: &e.provider,
                received_at: &e.received_at,
            }),
            "rule" => serde_value(RuleContext { name: &self.rule }),
            "failure" => serde_value(self.failure.as_ref()?),
            other => return self.extra.get(other).cloned(),
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let fixed = KEYS
            .iter()
            .copied()
            .chain(self.failure.is_some().then_some("failure"));
        let extra = self
            .extra
            .keys()
            .map(String::as_str)
            .filter(|k| !KEYS.contains(k) && *k != "failure");
        Enumerator::Values(fixed.chain(extra).map(minijinja::Value::from).collect())
    }
}

fn serde_value<T: Serialize>(v: T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(v))
}

#[derive(Serialize)]
struct EventContext<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    source: &'a str,
    provider: &'a str,
    received_at: &'a str,
}

#[derive(Serialize)]
struct RuleContext<'a> {
    name: &'a str,
}

/// An object or array inside the event's body, found again from the body
/// by its path on each look-up (paths are short; the event is shared).
#[derive(Debug)]
struct Json {
    event: Arc<Event>,
    path: Vec<Step>,
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

impl Json {
    fn node(&self) -> &Value {
        let mut v = self.event.body.value();
        for step in &self.path {
            let next = match step {
                Step::Key(k) => v.get(k.as_str()),
                Step::Index(i) => v.get(*i),
            };
            // The path was taken from this very value, which never changes.
            v = next.unwrap_or(&Value::Null);
        }
        v
    }

    fn child(&self, step: Step) -> Json {
        let mut path = Vec::with_capacity(self.path.len() + 1);
        path.extend_from_slice(&self.path);
        path.push(step);
        Json {
            event: Arc::clone(&self.event),
            path,
        }
    }
}

/// A JSON value as a template value: scalars are converted, objects and
/// arrays become lazy [`Json`] nodes.
fn json(v: &Value, node: impl FnOnce() -> Json) -> minijinja::Value {
    match v {
        Value::Null => minijinja::Value::from(()),
        Value::Bool(b) => minijinja::Value::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                minijinja::Value::from(i)
            } else if let Some(u) = n.as_u64() {
                minijinja::Value::from(u)
            } else {
                minijinja::Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => minijinja::Value::from(s.as_str()),
        Value::Array(_) | Value::Object(_) => minijinja::Value::from_object(node()),
    }
}

impl Object for Json {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            Value::Array(_) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        match self.node() {
            Value::Object(map) => {
                let k = key.as_str()?;
                let v = map.get(k)?;
                Some(json(v, || self.child(Step::Key(k.to_owned()))))
            }
            Value::Array(items) => {
                let i = key.as_usize()?;
                let v = items.get(i)?;
                Some(json(v, || self.child(Step::Index(i))))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            Value::Object(map) => Enumerator::Values(
                map.keys()
                    .map(|k| minijinja::Value::from(k.as_str()))
                    .collect(),
            ),
            Value::Array(items) => Enumerator::Seq(items.len()),
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.node() {
            Value::Object(map) => Some(map.len()),
            Value::Array(items) => Some(items.len()),
            _ => Some(0),
        }
    }
}

/// Render `action` for the event whose context is `ctx`, as the dry run
/// shows it: a shell action's files are placed in [`DRY_RUN_FILES_DIR`].
///
/// # Errors
/// The first template that fails, or a URL that does not parse once rendered.
pub fn render(
    set: &RuleSet,
    action: &Action,
    ctx: &minijinja::Value,
) -> Result<Rendered, TemplateError> {
    render_attempt(set, action, ctx, Path::new(DRY_RUN_FILES_DIR))
}

/// Render `action` for one attempt whose files (if the action has any) go
/// into `files_dir`. The directory's path is chosen first because every
/// other template may name a file by its path (`files['event.json']`).
///
/// # Errors
/// As [`render`].
pub fn render_attempt(
    set: &RuleSet,
    action: &Action,
    ctx: &minijinja::Value,
    files_dir: &Path,
) -> Result<Rendered, TemplateError> {
    let t = &set.templates;
    Ok(match &action.kind {
        ActionKind::Log(tpl) => Rendered::Log {
            line: t.render(tpl, ctx)?,
        },
        ActionKind::Http(h) => {
            let url = t.render(&h.url, ctx)?;
            if url::Url::parse(&url).is_err() {
                return Err(TemplateError::Render(format!(
                    "rendered URL {url:?} is not valid"
                )));
            }
            let mut headers = Vec::with_capacity(h.headers.len() + 1);
            for (name, tpl) in &h.headers {
                headers.push((name.as_str().to_owned(), t.render(tpl, ctx)?));
            }
            let body = match &h.body {
                Some(HttpBody::Json(j)) => {
                    if !headers.iter().any(|(n, _)| n == "content-type") {
                        headers.push(("content-type".to_owned(), "application/json".to_owned()));
                    }
                    let value = t.render_json(j, ctx)?;
                    Some(
                        serde_json::to_vec(&value)
                            .map_err(|e| TemplateError::Render(e.to_string()))?,
                    )
                }
                Some(HttpBody::Raw(tpl)) => Some(t.render(tpl, ctx)?.into_bytes()),
                None => None,
            };
            Rendered::Http(HttpRequest {
                method: h.method.clone(),
                url,
                headers,
                body,
                signed: h.sign.is_some(),
            })
        }
        ActionKind::Cancel(c) => Rendered::Cancel {
            rule: c.rule.clone(),
            key: t.render(&c.key, ctx)?,
        },
        ActionKind::Shell(s) => {
            let with_files;
            let (ctx, files_dir) = if s.files.is_empty() {
                (ctx, None)
            } else {
                let paths: BTreeMap<&str, String> = s
                    .files
                    .iter()
                    .map(|(name, _)| (name.as_str(), files_dir.join(name).display().to_string()))
                    .collect();
                with_files = extend(
                    ctx,
                    BTreeMap::from([("files".to_owned(), serde_value(paths))]),
                );
                (&with_files, Some(files_dir.to_path_buf()))
            };
            Rendered::Shell(Command {
                files: s
                    .files
                    .iter()
                    .map(|(name, v)| Ok((name.clone(), t.render(v, ctx)?)))
                    .collect::<Result<_, TemplateError>>()?,
                argv: s
                    .argv
                    .iter()
                    .map(|a| t.render(a, ctx))
                    .collect::<Result<_, _>>()?,
                env: s
                    .env
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), t.render(v, ctx)?)))
                    .collect::<Result<_, TemplateError>>()?,
                stdin: s.stdin.as_ref().map(|v| t.render(v, ctx)).transpose()?,
                workdir: s.workdir.as_ref().map(|w| w.display().to_string()),
                files_dir,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::template::Templates;

    fn event(body: Value) -> Arc<Event> {
        Arc::new(Event {
            id: "d-1".to_owned(),
            kind: "push".to_owned(),
            source: "gh".to_owned(),
            provider: "github".to_owned(),
            received_at: "2025-01-01T00:00:00.000Z".to_owned(),
            headers: BTreeMap::from([("x-github-event".to_owned(), "push".to_owned())]),
            query: BTreeMap::from([("q".to_owned(), "1".to_owned())]),
            body: body.into(),
        })
    }

    fn render(src: &str, ctx: &minijinja::Value) -> Result<String, TemplateError> {
        let mut t = Templates::new();
        let tpl = t.compile(src)?;
        t.render(&tpl, ctx)
    }

    #[test]
    fn the_lazy_context_reads_like_the_event() {
        let body = json!({
            "zeta": 1, "alpha": {"n": null, "ok": true, "f": 1.5, "big": 18_446_744_073_709_551_615u64},
            "list": [{"id": "a"}, {"id": "b"}, 3], "s": "x\"y"
        });
        let ctx = context(&event(body.clone()), "r1", Some(&json!({"attempts": 3})));
        let cases = [
            ("{{ body.list[1].id }}", "b"),
            ("{{ body.list[-1] }}", "3"),
            (
                "{{ body['alpha'].ok }} {{ body.alpha.f }} {{ body.alpha.big }}",
                "True 1.5 18446744073709551615",
            ),
            ("{{ body.alpha.n is none }}", "True"),
            (
                "{% for item in body.list %}{{ loop.index }}{% endfor %}",
                "123",
            ),
            ("{{ body.list | length }} {{ body | length }}", "3 4"),
            (
                "{{ body.list | map(attribute='id') | select | join('+') }}",
                "a+b",
            ),
            ("{{ body.missing | default('none') }}", "none"),
            ("{{ 'yes' if body.alpha else 'no' }}", "yes"),
            (
                "{{ event.id }} {{ event.type }} {{ rule.name }} {{ headers['x-github-event'] }} {{ query.q }}",
                "d-1 push r1 push 1",
            ),
            ("{{ failure.attempts }}", "3"),
        ];
        for (src, want) in cases {
            assert_eq!(render(src, &ctx).expect(src), want, "{src}");
        }
        // Keys come in the body's own order; the whole body comes back as
        // the same JSON.
        let keys: String = body
            .as_object()
            .expect("object")
            .keys()
            .map(|k| format!("{k},"))
            .collect();
        let looped = render("{% for k in body %}{{ k }},{% endfor %}", &ctx).expect("loop");
        assert_eq!(looped, keys);
        let whole = render("{{ body | tojson }}", &ctx).expect("tojson");
        assert_eq!(serde_json::from_str::<Value>(&whole).expect("json"), body);
        // Printing what is not there fails the render (semi-strict).
        assert!(render("{{ body.alpha.missing.deeper }}", &ctx).is_err());
        // No failure context outside on_failure actions.
        let plain = context(&event(json!({})), "r1", None);
        assert_eq!(
            render("{{ failure is defined }}", &plain).expect("defined"),
            "False"
        );
    }

    #[test]
    fn extra_keys_join_the_context_without_hiding_the_event() {
        let result = serde_value(json!({"json": {"result": "hi"}, "status": 0}));
        let ctx = context_with(
            &event(json!({"n": 1})),
            "r1",
            None,
            BTreeMap::from([
                ("result".to_owned(), result),
                ("body".to_owned(), minijinja::Value::from("not the body")),
            ]),
        );
        let ctx = extend(
            &ctx,
            BTreeMap::from([
                ("files".to_owned(), serde_value(json!({"a": "/x/a"}))),
                ("rule".to_owned(), minijinja::Value::from("not the rule")),
            ]),
        );
        let cases = [
            ("{{ result.json.result }} {{ result.status }}", "hi 0"),
            ("{{ files.a }} {{ files['a'] }}", "/x/a /x/a"),
            ("{{ body.n }} {{ rule.name }}", "1 r1"),
            ("{{ result.json.missing is defined }}", "False"),
        ];
        for (src, want) in cases {
            assert_eq!(render(src, &ctx).expect(src), want, "{src}");
        }
        let keys = render(
            "{% for k in ctx %}{{ k }},{% endfor %}",
            &minijinja::Value::from(BTreeMap::from([("ctx".to_owned(), ctx)])),
        )
        .expect("keys");
        for key in [
            "body", "headers", "query", "event", "rule", "result", "files",
        ] {
            assert_eq!(
                keys.matches(&format!("{key},")).count(),
                1,
                "{key} in {keys}"
            );
        }
    }
}
