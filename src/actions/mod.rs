//! Actions: rendering them from an event, and running them.
//!
//! `render` is shared by the dispatcher and the dry run, so what
//! `hookrouter test` prints is what would run. [`run`] is the one place that
//! turns an action into what its type does: it renders the action, then logs
//! the line, sends the request (`http`) or starts the process (`shell`), and
//! classifies the attempt. Retry timing is the dispatcher's business.

pub mod http;
pub mod render;
pub mod shell;

use std::time::Duration;

use crate::rules::{Action, ActionKind, RuleSet};
use render::Rendered;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Done,
    /// Worth trying again (connection error, timeout, 408, 429, 5xx, a
    /// failing command when the rule asks for retries).
    Retry {
        after: Option<Duration>,
    },
    /// Never worth trying again (another 4xx, a template error).
    Fail,
}

/// One attempt's result: the verdict, the HTTP status or exit code, and a
/// short description for the attempt record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub verdict: Verdict,
    pub status: Option<i32>,
    pub detail: String,
}

impl AttemptResult {
    pub fn done(status: Option<i32>, detail: String) -> Self {
        AttemptResult {
            verdict: Verdict::Done,
            status,
            detail,
        }
    }
    pub fn retry(status: Option<i32>, detail: String, after: Option<Duration>) -> Self {
        AttemptResult {
            verdict: Verdict::Retry { after },
            status,
            detail,
        }
    }
    pub fn fail(status: Option<i32>, detail: String) -> Self {
        AttemptResult {
            verdict: Verdict::Fail,
            status,
            detail,
        }
    }
}

/// One attempt of one delivery at an action: what [`run`] needs besides the
/// rule set and the HTTP client.
pub struct Job<'a> {
    pub action: &'a Action,
    /// The template context, from [`render::context`].
    pub context: &'a minijinja::Value,
    /// The rule's name, for the lines the action logs.
    pub rule: &'a str,
    /// The event's id, for the lines the action logs.
    pub event_id: &'a str,
    /// The event's key and the delivery's id make the Standard Webhooks
    /// message id, which stays the same across a delivery's retries.
    pub event_key: &'a str,
    pub delivery: u64,
}

/// Render `job`'s action and run it once. Text that reaches a log is
/// redacted with `set`'s secrets; the result's detail is not (the caller
/// redacts it before it is stored).
pub async fn run(set: &RuleSet, client: &reqwest::Client, job: Job<'_>) -> AttemptResult {
    let rendered = match render::render(set, job.action, job.context) {
        Ok(r) => r,
        Err(e) => return AttemptResult::fail(None, e.to_string()),
    };
    match (rendered, &job.action.kind) {
        (Rendered::Log { line }, _) => {
            tracing::info!(target: "hookrouter::action", event_id = %job.event_id, rule = %job.rule, "{}", set.redact(&line));
            AttemptResult::done(None, String::new())
        }
        (Rendered::Http(req), kind) => {
            let sign = match kind {
                ActionKind::Http(h) => h.sign.as_ref(),
                _ => None,
            };
            let msg_id = format!("msg_{}_{}", job.event_key, job.delivery);
            http::send(client, &req, sign, &msg_id, job.action.timeout).await
        }
        (Rendered::Shell(cmd), kind) => {
            let max_output = match kind {
                ActionKind::Shell(s) => s.max_output,
                _ => 0,
            };
            let out = shell::run(&cmd, job.action.timeout, max_output).await;
            if !out.detail.is_empty() {
                tracing::info!(event_id = %job.event_id, rule = %job.rule, status = out.status, output = %set.redact(&out.detail), "Command finished.");
            }
            out
        }
        // A cancel changes the store, which only the dispatcher holds; it
        // takes cancel actions before they reach this function.
        (Rendered::Cancel { .. }, _) => {
            AttemptResult::fail(None, "a cancel action runs in the dispatcher".to_owned())
        }
    }
}
