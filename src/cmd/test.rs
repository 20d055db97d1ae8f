//! `hookrouter test`: dry-run one request given on the command line.
//!
//! Owns turning `--header`, `--query` and `--body` into a request, the
//! human rendering of the dry run's report (or the report as JSON), and the
//! exit code: 1 when `--verify` finds a bad signature. The routing itself
//! is `dryrun::run`. Everything printed is redacted of configured secrets.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::{OutputFormat, print_diagnostics, read_body, require_rules, usage_error};
use crate::actions::render::Rendered;
use crate::config;
use crate::dryrun::{self, ActionReport, Admitted, Report, WhenReport};

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
            // An action that cannot render would fail on the real event.
            if matches!(report.signature, Some(Err(_))) || !report.render_failures().is_empty() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => usage_error(&e.to_string()),
    }
}

/// One action at `depth` (1 for a rule's own), numbered `number` (`2.1` is
/// the first `then:` action of action 2), and its `then:` actions below it.
fn render_action(out: &mut String, a: &ActionReport, number: &str, depth: usize) {
    let pad = "  ".repeat(depth);
    let _ = write!(out, "{pad}action {number}: ");
    match (&a.action, &a.error) {
        (_, Some(why)) => {
            let _ = writeln!(out, "would FAIL: {why}");
        }
        (None, None) if a.after_run => {
            let _ = writeln!(out, "{}, rendered after the run (reads `result`)", a.kind);
        }
        (None, None) => out.push('\n'),
        (Some(Rendered::Log { line }), None) => {
            let _ = writeln!(out, "log {line}");
        }
        (Some(Rendered::Http(h)), None) => {
            let _ = writeln!(out, "http {} {}", h.method, h.url);
            for (k, v) in &h.headers {
                let _ = writeln!(out, "{pad}  {k}: {v}");
            }
            if h.signed {
                let _ = writeln!(
                    out,
                    "{pad}  webhook-id, webhook-timestamp, webhook-signature: added when sent"
                );
            }
            if let Some(b) = &h.body {
                let _ = writeln!(out, "{pad}  body: {}", String::from_utf8_lossy(b));
            }
        }
        (Some(Rendered::Shell(c)), None) => {
            let argv = serde_json::to_string(&c.argv).unwrap_or_default();
            let _ = writeln!(out, "shell argv={argv}");
            for (k, v) in &c.env {
                let _ = writeln!(out, "{pad}  env {k}={v}");
            }
            if let Some(w) = &c.workdir {
                let _ = writeln!(out, "{pad}  workdir {w}");
            }
        }
        (Some(Rendered::Cancel { rule, key }), None) => {
            let _ = writeln!(out, "cancel rule={rule} key={key:?}");
        }
    }
    if let Some(w) = &a.when {
        let _ = writeln!(out, "{pad}  when: {}", when_text(w));
    }
    if let Some(stdin) = &a.stdin {
        let _ = writeln!(out, "{pad}  stdin: {stdin:?}");
    }
    if !a.files.is_empty() {
        let _ = writeln!(
            out,
            "{pad}  files (in {}): {}",
            dryrun::FILES_DIR,
            a.files.join(", ")
        );
    }
    if let Some(g) = &a.group {
        let key = match (&g.key, &g.error) {
            (Some(k), _) => format!("{k:?}"),
            (None, Some(why)) => format!("would FAIL: {why}"),
            (None, None) => "decided after the run (reads `result`)".to_owned(),
        };
        let _ = writeln!(
            out,
            "{pad}  group key {key} (limit {}, on_busy {}, kill_grace {})",
            g.limit,
            g.on_busy,
            humantime::format_duration(Duration::from_millis(g.kill_grace_ms))
        );
    }
    if let Some(ms) = a.start_within_ms {
        let _ = writeln!(
            out,
            "{pad}  start_within {}",
            humantime::format_duration(Duration::from_millis(ms))
        );
    }
    let _ = writeln!(
        out,
        "{pad}  (attempts: {}, timeout: {})",
        a.retry_attempts,
        humantime::format_duration(Duration::from_millis(a.timeout_ms))
    );
    if !a.then.is_empty() {
        let _ = writeln!(out, "{pad}  after success:");
        for (i, child) in a.then.iter().enumerate() {
            render_action(out, child, &format!("{number}.{}", i + 1), depth + 2);
        }
    }
}

fn when_text(w: &WhenReport) -> String {
    match w {
        WhenReport::True => "true".to_owned(),
        WhenReport::False { rendered } => {
            format!("rendered {rendered:?}, not `true`: it would be skipped")
        }
        WhenReport::Error { error } => format!("would FAIL: {error}"),
        WhenReport::AfterRun => "decided after the run (reads `result`)".to_owned(),
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
        if let Some(w) = &r.when {
            let _ = writeln!(out, "  when: {}", when_text(w));
        }
        for (i, a) in r.actions.iter().enumerate() {
            render_action(&mut out, a, &(i + 1).to_string(), 1);
        }
    }
    if let Some(r) = &report.respond {
        match (&r.reply, &r.error) {
            (Some(reply), _) => {
                let _ = writeln!(
                    out,
                    "ANSWER {} ({}) instead of 202: {} {}",
                    r.owner, r.origin, reply.status, reply.body
                );
            }
            (None, error) => {
                let _ = writeln!(
                    out,
                    "ANSWER {} ({}) would FAIL at {}: {}; the sender gets the standard 202",
                    r.owner,
                    r.origin,
                    r.error_origin.as_deref().unwrap_or(&r.origin),
                    error.as_deref().unwrap_or("")
                );
            }
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
