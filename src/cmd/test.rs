//! `hookrouter test`: dry-run one request given on the command line.
//!
//! Owns turning `--header`, `--query` and `--body` into a request, the
//! human rendering of the dry run's report (or the report as JSON), and the
//! exit code: 1 when `--verify` finds a bad signature. The routing itself
//! is `dryrun::run`. Everything printed is redacted of configured secrets.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{OutputFormat, print_diagnostics, read_body, require_rules, usage_error};
use crate::actions::render::Rendered;
use crate::config;
use crate::dryrun::{self, Admitted, Report};

/// The request to try, as given on the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub rules: Vec<PathBuf>,
    /// The source the request arrives at.
    pub source: String,
    /// The body file; `-` is standard input.
    pub body: PathBuf,
    /// `Name: value` each.
    pub headers: Vec<String>,
    /// `name=value` each.
    pub query: Vec<String>,
    /// Check the signature too.
    pub verify: bool,
    pub format: OutputFormat,
}

/// Run the dry run and print its report.
pub fn run(args: &Options) -> ExitCode {
    if let Err(code) = require_rules(&args.rules) {
        return code;
    }
    let loaded = match config::load(&args.rules) {
        Ok(l) => l,
        Err(d) => {
            print_diagnostics(&d, OutputFormat::Text);
            return ExitCode::from(1);
        }
    };
    let body = match read_body(&args.body) {
        Ok(b) => b,
        Err(e) => return usage_error(&format!("cannot read {}: {e}", args.body.display())),
    };
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let Some((name, value)) = h.split_once(':') else {
            return usage_error(&format!("--header {h:?} is not `Name: value`"));
        };
        match (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value.trim()),
        ) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
            }
            _ => return usage_error(&format!("--header {h:?} is not a valid header")),
        }
    }
    let query = args
        .query
        .iter()
        .map(|q| {
            let (k, v) = q.split_once('=').unwrap_or((q.as_str(), ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let req = dryrun::TryRequest {
        source: args.source.clone(),
        headers,
        query,
        body,
        verify: args.verify,
    };
    match dryrun::run(&loaded.rules, &req) {
        Ok(report) => {
            let text = match args.format {
                OutputFormat::Text => render_text(&report),
                OutputFormat::Json => {
                    serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
                }
            };
            // The event's own headers and body may carry configured secrets
            // too (a GitLab token, say), not only the rendered actions.
            print!("{}", loaded.rules.redact(&text));
            if matches!(report.signature, Some(Err(_))) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => usage_error(&e.to_string()),
    }
}

/// The human rendering of a report.
fn render_text(report: &Report) -> String {
    let mut out = String::new();
    match &report.admitted {
        Admitted::Event(e) => {
            let _ = writeln!(
                out,
                "event {} type={:?} source={} provider={}",
                e.id, e.kind, e.source, e.provider
            );
        }
        Admitted::Handshake(h) => {
            let _ = writeln!(out, "handshake source={} provider={}", h.source, h.provider);
        }
    }
    match &report.signature {
        None => out.push_str("signature: not checked (add --verify)\n"),
        Some(Ok(())) => out.push_str("signature: verified\n"),
        Some(Err(why)) => {
            let _ = writeln!(
                out,
                "signature: REJECTED ({why}); the server would answer 401"
            );
        }
    }
    if let Admitted::Handshake(h) = &report.admitted {
        let _ = writeln!(
            out,
            "the server would answer the provider's handshake: {} ({}) {}\nnothing is stored or routed",
            h.status, h.content_type, h.body
        );
        return out;
    }
    let matched = report.rules.iter().filter(|r| r.matched).count();
    let _ = writeln!(out, "{matched} of {} rules match\n", report.rules.len());
    for r in report.rules.iter().filter(|r| r.matched) {
        let _ = writeln!(out, "MATCH {} ({})", r.name, r.origin);
        for (i, a) in r.actions.iter().enumerate() {
            let _ = write!(out, "  action {}: ", i + 1);
            match (&a.action, &a.error) {
                (_, Some(why)) => {
                    let _ = writeln!(out, "would FAIL: {why}");
                }
                (None, None) => {}
                (Some(Rendered::Log { line }), None) => {
                    let _ = writeln!(out, "log {line}");
                }
                (Some(Rendered::Http(h)), None) => {
                    let _ = writeln!(out, "http {} {}", h.method, h.url);
                    for (k, v) in &h.headers {
                        let _ = writeln!(out, "    {k}: {v}");
                    }
                    if h.signed {
                        out.push_str(
                            "    webhook-id, webhook-timestamp, webhook-signature: added when sent\n",
                        );
                    }
                    if let Some(b) = &h.body {
                        let _ = writeln!(out, "    body: {}", String::from_utf8_lossy(b));
                    }
                }
                (Some(Rendered::Shell(c)), None) => {
                    let argv = serde_json::to_string(&c.argv).unwrap_or_default();
                    let _ = writeln!(out, "shell argv={argv}");
                    for (k, v) in &c.env {
                        let _ = writeln!(out, "    env {k}={v}");
                    }
                    if let Some(w) = &c.workdir {
                        let _ = writeln!(out, "    workdir {w}");
                    }
                }
                (Some(Rendered::Cancel { rule, key }), None) => {
                    let _ = writeln!(out, "cancel rule={rule} key={key:?}");
                }
            }
            let _ = writeln!(
                out,
                "    (attempts: {}, timeout: {})",
                a.retry_attempts,
                humantime::format_duration(std::time::Duration::from_millis(a.timeout_ms))
            );
        }
    }
    for r in report.rules.iter().filter(|r| !r.matched) {
        let _ = writeln!(
            out,
            "no    {} ({}): {}",
            r.name,
            r.origin,
            r.reason.as_deref().unwrap_or("")
        );
    }
    out
}
