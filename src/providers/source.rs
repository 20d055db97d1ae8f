//! A configured source: one webhook sender at one path, with its provider.
//!
//! Owns `Source`, the `Extractor`s that override where its event type and id
//! are read from, and `Origin`, the file position a definition was written
//! at (sources, rules, actions and tests all carry one). They live here,
//! below `rules`, because admission reads a source and must not depend on
//! the rule set that holds it; `config::compile` builds them.

use std::path::PathBuf;

use jsonpath_rust::parser::model::JpQuery;
use serde_json::Value;

use super::Provider;

/// Where a definition was written, for messages about it at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// Where a source reads its event type or id from, overriding the provider.
#[derive(Debug, Clone)]
pub enum Extractor {
    /// A header, by lowercase name.
    Header(String),
    /// The first value a JSONPath selects in the body.
    Path(JpQuery),
}

impl Extractor {
    pub fn extract(&self, headers: &http::HeaderMap, body: &Value) -> Option<String> {
        match self {
            Extractor::Header(name) => headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            Extractor::Path(q) => jsonpath_rust::query::js_path_process(q, body)
                .ok()?
                .into_iter()
                .next()
                .and_then(|r| scalar_text(r.val())),
        }
    }
}

/// A scalar's text; objects, arrays and null have none.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A webhook sender.
#[derive(Debug)]
pub struct Source {
    pub name: String,
    pub provider: Box<dyn Provider>,
    /// The request path it is served at.
    pub path: String,
    /// The public URL (Twilio, Square); `None` means Host + path.
    pub url: Option<String>,
    pub event_type: Option<Extractor>,
    pub event_id: Option<Extractor>,
    pub origin: Origin,
}
