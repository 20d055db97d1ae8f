//! Logging setup: tracing to stderr, as text or JSON, with a filter.
//!
//! Owns the subscriber and the filter syntax (`--log-level info`, or
//! `RUST_LOG`-style directives such as `hookrouter=debug,hyper=warn`).
//! Lines about an event carry an `event_id` field; message text never
//! includes secrets or request bodies.
//!
//! Field values read as plain values in both formats, never as Rust debug
//! text: words and strings are recorded with `%` (the text format quotes
//! plain `&str` fields), an optional number is passed as the `Option` itself
//! so that it is a bare number when present and the field is left out when
//! absent, and lists are joined with commas.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Install the global subscriber. A second call is a no-op.
pub fn init(format: LogFormat, filter: &str) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| filter.to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
