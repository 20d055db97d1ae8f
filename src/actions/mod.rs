//! Actions: rendering them from an event, and running them.
//!
//! `render` is shared by the dispatcher and the dry run, so what
//! `hookrouter test` prints is what would run. `http` and `shell` execute one
//! attempt and classify it; retry timing is the dispatcher's business.

pub mod http;
pub mod render;
pub mod shell;

use std::time::Duration;

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
pub struct Outcome {
    pub verdict: Verdict,
    pub status: Option<i32>,
    pub detail: String,
}

impl Outcome {
    pub fn done(status: Option<i32>, detail: String) -> Self {
        Outcome {
            verdict: Verdict::Done,
            status,
            detail,
        }
    }
    pub fn retry(status: Option<i32>, detail: String, after: Option<Duration>) -> Self {
        Outcome {
            verdict: Verdict::Retry { after },
            status,
            detail,
        }
    }
    pub fn fail(status: Option<i32>, detail: String) -> Self {
        Outcome {
            verdict: Verdict::Fail,
            status,
            detail,
        }
    }
}
