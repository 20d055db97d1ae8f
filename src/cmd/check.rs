//! `hookrouter check`: load and compile rules and run their embedded tests.
//!
//! Owns the command's report: diagnostics, failed tests with the reason
//! each expected rule did not match, and the one-line summary (or the same
//! as one JSON object). The tests themselves run in `dryrun`, through the
//! admission steps the server uses. No network, no data file.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{OutputFormat, print_diagnostics, require_rules};
use crate::config;
use crate::dryrun;

/// What `check` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub rules: Vec<PathBuf>,
    pub format: OutputFormat,
    /// Fail (exit 1) on warnings too.
    pub deny_warnings: bool,
}

fn plural(n: usize, word: &str) -> String {
    format!("{n} {word}{}", if n == 1 { "" } else { "s" })
}

/// Run the command; the exit code says whether the rules passed.
pub fn run(args: &Options) -> ExitCode {
    if let Err(code) = require_rules(&args.rules) {
        return code;
    }
    let loaded = match config::load(&args.rules) {
        Ok(l) => l,
        Err(d) => {
            print_diagnostics(&d, args.format);
            return ExitCode::from(1);
        }
    };
    let outcomes = dryrun::run_tests(&loaded.rules);
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    let warned = !loaded.warnings.is_empty();
    let ok = failed == 0 && !(args.deny_warnings && warned);
    match args.format {
        OutputFormat::Json => {
            let out = serde_json::json!({
                "ok": ok,
                "errors": [],
                "warnings": loaded.warnings,
                "files": loaded.files,
                "sources": loaded.rules.sources.len(),
                "rules": loaded.rules.rules.len(),
                "tests": outcomes,
            });
            println!("{out}");
        }
        OutputFormat::Text => {
            for w in &loaded.warnings {
                eprintln!("warning: {w}");
            }
            for o in &outcomes {
                if o.passed {
                    continue;
                }
                if o.expected != o.matched || o.render_errors.is_empty() && o.assertions.is_empty()
                {
                    eprintln!(
                        "error: {}: test {:?}: expected {:?}, matched {:?}",
                        o.origin, o.name, o.expected, o.matched
                    );
                    for (rule, why) in &o.reasons {
                        eprintln!("  {rule}: {why}");
                    }
                }
                for f in &o.render_errors {
                    eprintln!(
                        "error: {}: test {:?}: rule {:?} action {} cannot render: {}",
                        f.origin, o.name, f.rule, f.action, f.error
                    );
                }
                for f in &o.assertions {
                    let rendered = match (&f.rendered, &f.error) {
                        (Some(v), _) => format!("rendered {v:?}"),
                        (None, Some(why)) => why.clone(),
                        (None, None) => String::new(),
                    };
                    let field = if f.field.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", f.field)
                    };
                    eprintln!(
                        "error: {}: test {:?}: rule {:?} action {}{field}: expected {}, {rendered}",
                        f.origin, o.name, f.rule, f.action, f.assertion
                    );
                }
            }
            if args.deny_warnings && warned {
                eprintln!(
                    "error: {} and --deny-warnings",
                    plural(loaded.warnings.len(), "warning")
                );
            }
            let set = &loaded.rules;
            println!(
                "{}, {}, {}, {}: {} passed, {} failed{}",
                plural(loaded.files.len(), "file"),
                plural(set.sources.len(), "source"),
                plural(set.rules.len(), "rule"),
                plural(outcomes.len(), "test"),
                outcomes.len() - failed,
                failed,
                if warned {
                    format!(", {}", plural(loaded.warnings.len(), "warning"))
                } else {
                    String::new()
                }
            );
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
