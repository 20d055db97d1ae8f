//! Actions: rendering them from an event, and running them.
//!
//! `render` is shared by the dispatcher and the dry run, so what
//! `hookrouter test` prints is what would run. [`run`] is the one place that
//! turns an action into what its type does: it renders the action, then logs
//! the line, sends the request (`http`) or starts the process (`shell`), and
//! classifies the attempt. Retry timing is the dispatcher's business.
//!
//! An attempt can be stopped from outside ([`Job::cancel`]): the HTTP call is
//! dropped, a process group gets SIGTERM and, after the action's
//! `kill_grace`, SIGKILL. Such an attempt reports `cancelled`. What the
//! attempt printed or received is kept (bounded) for `then:` children as
//! `result` ([`AttemptResult::result_context`]).

pub mod http;
pub mod render;
pub mod shell;

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

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

/// One attempt's result: the verdict, the HTTP status or exit code, a
/// short description for the attempt record, and what the action produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    pub verdict: Verdict,
    pub status: Option<i32>,
    pub detail: String,
    /// The attempt was stopped by [`Job::cancel`]; the delivery is
    /// `cancelled`, whatever the verdict (which is `Fail`, so nothing that
    /// overlooks this flag retries it).
    pub cancelled: bool,
    pub output: Output,
}

/// What an attempt produced, each part cut at the action's output cap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Output {
    /// A log line, a cancel, or an attempt that never started.
    #[default]
    None,
    Shell {
        stdout: String,
        stderr: String,
    },
    Http {
        body: String,
    },
}

impl AttemptResult {
    pub fn done(status: Option<i32>, detail: String) -> Self {
        Self::new(Verdict::Done, status, detail)
    }
    pub fn retry(status: Option<i32>, detail: String, after: Option<Duration>) -> Self {
        Self::new(Verdict::Retry { after }, status, detail)
    }
    pub fn fail(status: Option<i32>, detail: String) -> Self {
        Self::new(Verdict::Fail, status, detail)
    }
    /// An attempt stopped by a cancel request.
    pub fn cancelled(detail: String) -> Self {
        AttemptResult {
            cancelled: true,
            ..Self::new(Verdict::Fail, None, detail)
        }
    }

    fn new(verdict: Verdict, status: Option<i32>, detail: String) -> Self {
        AttemptResult {
            verdict,
            status,
            detail,
            cancelled: false,
            output: Output::None,
        }
    }

    #[must_use]
    pub fn with_output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    /// `result` for `then:` children: `status` (exit code or HTTP status),
    /// `stdout`, `stderr`, `body` (empty when the action has none) and
    /// `json`: stdout or the body parsed, present only when it is JSON.
    pub fn result_context(&self) -> serde_json::Value {
        let (stdout, stderr, body, parsed) = match &self.output {
            Output::None => ("", "", "", None),
            Output::Shell { stdout, stderr } => {
                (stdout.as_str(), stderr.as_str(), "", Some(stdout))
            }
            Output::Http { body } => ("", "", body.as_str(), Some(body)),
        };
        let mut ctx = serde_json::json!({
            "status": self.status,
            "stdout": stdout,
            "stderr": stderr,
            "body": body,
        });
        if let Some(json) = parsed.and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            && let Some(map) = ctx.as_object_mut()
        {
            map.insert("json".to_owned(), json);
        }
        ctx
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
    /// Fires when the delivery is cancelled while this attempt runs.
    pub cancel: &'a CancellationToken,
    /// Where each attempt's `files:` directory is made (see
    /// [`shell::prepare_files_base`]).
    pub files_dir: &'a Path,
}

/// Render `job`'s action and run it once. Text that reaches a log is
/// redacted with `set`'s secrets; the result's detail is not (the caller
/// redacts it before it is stored).
pub async fn run(set: &RuleSet, client: &reqwest::Client, job: Job<'_>) -> AttemptResult {
    if job.cancel.is_cancelled() {
        return AttemptResult::cancelled("cancelled before it started".to_owned());
    }
    let files_dir = shell::attempt_dir(job.files_dir, job.delivery);
    let rendered = match render::render_attempt(set, job.action, job.context, &files_dir) {
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
            tokio::select! {
                // Dropping the request future closes its connection.
                () = job.cancel.cancelled() => {
                    AttemptResult::cancelled("cancelled; request dropped".to_owned())
                }
                r = http::send(client, &req, sign, &msg_id, job.action.timeout) => r,
            }
        }
        (Rendered::Shell(cmd), kind) => {
            let max_output = match kind {
                ActionKind::Shell(s) => s.max_output,
                _ => 0,
            };
            let limits = shell::Limits {
                timeout: job.action.timeout,
                kill_grace: job.action.kill_grace,
                max_output,
            };
            let out = shell::run(&cmd, limits, job.cancel).await;
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
