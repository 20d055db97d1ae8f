//! Turning an action and an event into exactly what will run.
//!
//! Owns the template context (`body`, `headers`, `query`, `event`, `rule`,
//! `failure`) and the rendered forms of each action. The dispatcher runs
//! what this produces; `hookrouter test` prints it. Keeping one renderer for
//! both is what makes the dry run truthful.

use serde::Serialize;
use serde_json::Value;

use crate::event::Event;
use crate::rules::{Action, ActionKind, HttpBody, RuleSet};
use crate::template::TemplateError;

/// An HTTP request, ready to send (before Standard Webhooks signing, which
/// needs the send time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    #[serde(serialize_with = "body_text")]
    pub body: Option<Vec<u8>>,
    /// Whether the request is signed with the Standard Webhooks scheme.
    pub signed: bool,
}

/// A body shown as text (lossy UTF-8) rather than a list of byte values.
fn body_text<S: serde::Serializer>(body: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match body {
        Some(b) => s.serialize_some(&String::from_utf8_lossy(b)),
        None => s.serialize_none(),
    }
}

/// A process to start: argv[0] is the program, no shell involved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
}

/// One action, rendered.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Rendered {
    Log { line: String },
    Http(HttpRequest),
    Shell(Command),
}

/// The template context of one delivery, borrowed from the event so a large
/// body is converted once (into the template engine's values), not copied
/// first.
#[derive(Serialize)]
struct Context<'a> {
    body: &'a Value,
    headers: &'a std::collections::BTreeMap<String, String>,
    query: &'a std::collections::BTreeMap<String, String>,
    event: EventContext<'a>,
    rule: RuleContext<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'a Value>,
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

/// The template context of one delivery. `failure` is set for `on_failure`
/// actions: the failed delivery's action, attempts and last error.
pub fn context(event: &Event, rule: &str, failure: Option<&Value>) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(&Context {
        body: &event.body,
        headers: &event.headers,
        query: &event.query,
        event: EventContext {
            id: &event.id,
            kind: &event.kind,
            source: &event.source,
            provider: &event.provider,
            received_at: &event.received_at,
        },
        rule: RuleContext { name: rule },
        failure,
    }))
}

/// Render `action` for the event whose context is `ctx`.
///
/// # Errors
/// The first template that fails, or a URL that does not parse once rendered.
pub fn render(
    set: &RuleSet,
    action: &Action,
    ctx: &minijinja::Value,
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
                method: h.method.to_string(),
                url,
                headers,
                body,
                signed: h.sign.is_some(),
            })
        }
        ActionKind::Shell(s) => Rendered::Shell(Command {
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
            workdir: s.workdir.as_ref().map(|w| w.display().to_string()),
        }),
    })
}
