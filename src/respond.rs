//! `respond:` at ingest: which one answers an event, and rendering it into
//! the [`Reply`] that is stored with the event and sent once it is committed.
//!
//! A render error never reaches the sender: the event gets the standard 202
//! and the log says which rule (or source) and which template failed, with
//! the message redacted like every other template error. The HTTP side
//! (`server`) only writes out what this produces.

use std::sync::Arc;

use crate::actions::render;
use crate::event::Event;
use crate::providers::Origin;
use crate::rules::{HttpBody, Respond, RuleSet};
use crate::store::Reply;
use crate::template::{JsonTemplate, Template, Templates};

/// The answer for `event`, matched by the rules named in `matched` (in
/// declaration order): the first matched rule's `respond:`, else its
/// source's, rendered. `None` when none applies or it failed to render
/// (logged).
pub fn reply(set: &RuleSet, event: &Event, matched: &[String]) -> Option<Reply> {
    set.respond_for(&event.source, matched)?;
    // Only events that are answered pay for a shared copy.
    let answer = answer(set, &Arc::new(event.clone()), matched)?;
    match answer.reply {
        Ok(reply) => Some(reply),
        Err(failed) => {
            tracing::warn!(event_id = %event.id, source = %event.source, respond = %answer.owner, at = %failed.origin, error = %failed.error, "respond did not render; answering the standard 202.");
            None
        }
    }
}

/// Which `respond:` answers an event, and what it rendered.
pub struct Answer {
    /// `rule "name"` or `source "name"`.
    pub owner: String,
    /// The rule's name, for a rule's `respond:`.
    pub rule: Option<String>,
    /// Where that `respond:` was written.
    pub origin: Origin,
    pub reply: Result<Reply, RenderFailed>,
}

/// Why a `respond:` did not render.
pub struct RenderFailed {
    /// The failing template's place, else the `respond:`'s.
    pub origin: Origin,
    /// Redacted.
    pub error: String,
}

/// [`reply`] for a caller that shows the outcome (the dry run): `None` when
/// no `respond:` applies.
pub fn answer(set: &RuleSet, event: &Arc<Event>, matched: &[String]) -> Option<Answer> {
    let (respond, rule) = set.respond_for(&event.source, matched)?;
    let ctx = render::context(event, rule.unwrap_or(""), None);
    let owner = match rule {
        Some(r) => format!("rule {r:?}"),
        None => format!("source {:?}", event.source),
    };
    let reply = render_reply(set, respond, &ctx).map_err(|failed| RenderFailed {
        origin: failed
            .template
            .and_then(|t| set.templates.origin(t))
            .unwrap_or(&respond.origin)
            .clone(),
        error: set.redact(&failed.error),
    });
    Some(Answer {
        owner,
        rule: rule.map(str::to_owned),
        origin: respond.origin.clone(),
        reply,
    })
}

/// Why a `respond:` did not render, and which template (when one is to
/// blame rather than its output).
struct Failed<'a> {
    template: Option<&'a Template>,
    error: String,
}

/// Renders every part of `respond` in `ctx`.
fn render_reply<'a>(
    set: &RuleSet,
    respond: &'a Respond,
    ctx: &minijinja::Value,
) -> Result<Reply, Failed<'a>> {
    let t = &set.templates;
    let mut headers = Vec::with_capacity(respond.headers.len() + 1);
    for (name, tpl) in &respond.headers {
        let value = t.render(tpl, ctx).map_err(|e| Failed {
            template: Some(tpl),
            error: e.to_string(),
        })?;
        // A value with a line break would end the header early.
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(Failed {
                template: Some(tpl),
                error: format!("header {name} rendered a value that is not a valid header value"),
            });
        }
        headers.push((name.as_str().to_owned(), value));
    }
    let (body, content_type) = match &respond.body {
        None => (String::new(), None),
        Some(HttpBody::Raw(tpl)) => {
            let text = t.render(tpl, ctx).map_err(|e| Failed {
                template: Some(tpl),
                error: e.to_string(),
            })?;
            (text, Some("text/plain; charset=utf-8"))
        }
        Some(HttpBody::Json(json)) => {
            let value = t.render_json(json, ctx).map_err(|e| Failed {
                template: failing_leaf(t, json, ctx),
                error: e.to_string(),
            })?;
            let text = serde_json::to_string(&value).map_err(|e| Failed {
                template: None,
                error: e.to_string(),
            })?;
            (text, Some("application/json"))
        }
    };
    let named = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if let Some(ct) = content_type.filter(|_| !named("content-type")) {
        headers.push(("content-type".to_owned(), ct.to_owned()));
    }
    Ok(Reply {
        status: respond.status,
        headers,
        body,
    })
}

/// The template of a `json:` body that fails in `ctx`, to point the log at
/// it. Renders again, so only on the error path.
fn failing_leaf<'a>(
    t: &Templates,
    json: &'a JsonTemplate,
    ctx: &minijinja::Value,
) -> Option<&'a Template> {
    match json {
        JsonTemplate::Static(_) => None,
        JsonTemplate::Leaf(tpl) | JsonTemplate::Whole(tpl) => Some(tpl),
        JsonTemplate::Array(items) => items
            .iter()
            .find(|i| t.render_json(i, ctx).is_err())
            .and_then(|i| failing_leaf(t, i, ctx)),
        JsonTemplate::Object(entries) => entries
            .iter()
            .find(|(_, v)| t.render_json(v, ctx).is_err())
            .and_then(|(_, v)| failing_leaf(t, v, ctx)),
    }
}
