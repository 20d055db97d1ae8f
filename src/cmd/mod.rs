//! The subcommands: one file each, called by `cli` with plain values.
//!
//! `serve` runs the server, `check` validates rules and runs their tests,
//! `test` dry-runs one request, `inspect` holds `events`, `deliveries` and
//! `replay`, `migrate` creates or upgrades the store's schema, and `sign` prints a provider's headers for a body. Each takes
//! its options as plain values and returns the process's exit code (0 ok,
//! 1 invalid rules or a failed check, 2 usage or I/O error); none of them
//! knows about clap, so nothing below the command line imports `cli`.
//!
//! This file holds what several commands share: the output format, the
//! usage-error convention, and reading rules and bodies.

pub mod check;
pub mod inspect;
pub mod migrate;
pub mod serve;
pub mod sign;
pub mod test;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Diagnostics};

/// How `check` and `test` print their results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// The JSON Schema of a rule file, as committed in `schemas/`.
pub fn schema_json() -> String {
    let schema = schemars::schema_for!(config::raw::FileConfig);
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// Print `error: MSG` and exit 2.
pub fn usage_error(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::from(2)
}

/// A body file, or standard input for `-`.
fn read_body(path: &Path) -> std::io::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map(|_| buf)
    } else {
        std::fs::read(path)
    }
}

/// Refuse to start without rules, or with a rules path that is not there.
fn require_rules(rules: &[PathBuf]) -> Result<(), ExitCode> {
    if rules.is_empty() {
        return Err(usage_error(
            "no rules given: pass --rules PATH (a file or a folder) or set HOOKROUTER_RULES",
        ));
    }
    if let Some(missing) = rules.iter().find(|p| !p.exists()) {
        return Err(usage_error(&format!(
            "--rules {}: no such file or directory",
            missing.display()
        )));
    }
    Ok(())
}

fn print_diagnostics(d: &Diagnostics, format: OutputFormat) {
    match format {
        OutputFormat::Text => {
            eprint!("{}", d.render_text());
            if d.has_errors() {
                let n = d.errors.len();
                eprintln!("{n} error{}", if n == 1 { "" } else { "s" });
            }
        }
        OutputFormat::Json => {
            let out = serde_json::json!({
                "ok": false,
                "errors": d.errors,
                "warnings": d.warnings,
            });
            println!("{out}");
        }
    }
}
