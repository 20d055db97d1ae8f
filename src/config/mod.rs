//! Loading rule files: the only way from YAML on disk to a `RuleSet`.
//!
//! Owns finding the files (`*.yaml`/`*.yml` under each `--rules` path,
//! recursively, in a stable order), parsing each with a location-aware YAML
//! deserializer, and handing them to `compile`. `check`, `test` and `serve`
//! all come through `load`, so they agree on what is valid.
//!
//! YAML syntax and shape errors (a wrong type, an unknown field) stop the
//! parse of their own file at the first one, since the parser cannot resume
//! inside a broken document; every other file, and every semantic error in
//! the files that parsed, is still reported in the same run.

pub mod compile;
pub mod diag;
pub mod interp;
pub mod node;
pub mod raw;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;

pub use diag::{Diagnostic, Diagnostics, Owner};
use node::{Kind, Node, Pos};

use crate::rules::RuleSet;

/// A loaded rule set and the warnings it loaded with.
#[derive(Debug)]
pub struct Loaded {
    pub rules: RuleSet,
    pub warnings: Vec<Diagnostic>,
    pub files: Vec<PathBuf>,
}

/// Every rule file under `paths`, sorted within each path.
///
/// # Errors
/// A path that does not exist or cannot be read, as a diagnostic.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostics> {
    let mut files = Vec::new();
    let mut diags = Diagnostics::default();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            if let Err(e) = walk(p, &mut found) {
                diags
                    .errors
                    .push(Diagnostic::new(p, Pos::default(), None, e.to_string()));
            }
            found.sort();
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            diags.errors.push(Diagnostic::new(
                p,
                Pos::default(),
                None,
                "no such file or directory",
            ));
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok(files)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Load, parse and compile every rule file under `paths`.
///
/// # Errors
/// All diagnostics (errors and warnings) when any error was found.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, Diagnostics> {
    let files = discover(paths)?;
    let mut diags = Diagnostics::default();
    let mut parsed = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => match parse(file, &text) {
                Ok(config) => parsed.push(compile::ParsedFile {
                    path: file.clone(),
                    config,
                }),
                Err(d) => diags.errors.push(d),
            },
            Err(e) => diags.errors.push(Diagnostic::new(
                file,
                Pos::default(),
                None,
                format!("cannot read: {e}"),
            )),
        }
    }
    match compile::compile(parsed) {
        Ok((rules, more)) => {
            if diags.has_errors() {
                diags.warnings.extend(more.warnings);
                diags.sort();
                return Err(diags);
            }
            Ok(Loaded {
                rules,
                warnings: more.warnings,
                files,
            })
        }
        Err(more) => {
            diags.errors.extend(more.errors);
            diags.warnings.extend(more.warnings);
            diags.sort();
            Err(diags)
        }
    }
}

/// Parse one file's text.
///
/// # Errors
/// The first YAML or shape error, located and attributed to its rule when
/// the document is well-formed enough to tell which rule it is in.
pub fn parse(file: &Path, text: &str) -> Result<raw::FileConfig, Diagnostic> {
    if text.trim().is_empty() {
        return Ok(raw::FileConfig {
            sources: Vec::new(),
            rules: Vec::new(),
            tests: Vec::new(),
        });
    }
    serde_saphyr::from_str::<raw::FileConfig>(text).map_err(|e| {
        let pos = e.location().map_or(Pos::default(), |l| Pos {
            line: u32::try_from(l.line()).unwrap_or(u32::MAX),
            column: u32::try_from(l.column()).unwrap_or(u32::MAX),
        });
        let owner = owner_at(text, pos.line);
        Diagnostic::new(file, pos, owner.as_ref(), clean_message(&e))
    })
}

/// saphyr's message without its own location prefix and snippet.
fn clean_message(e: &serde_saphyr::Error) -> String {
    static PREFIX: OnceLock<Regex> = OnceLock::new();
    let re = PREFIX.get_or_init(|| {
        Regex::new(r"^(?:error: )?(?:line \d+ column \d+: )?").unwrap_or_else(|_| unreachable!())
    });
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or_default();
    re.replace(first, "").into_owned()
}

/// The rule, source or test whose entry contains `line`, read from a lenient
/// parse of the same text.
fn owner_at(text: &str, line: u32) -> Option<Owner> {
    let root: Node = serde_saphyr::from_str(text).ok()?;
    let Kind::Map(top) = &root.kind else {
        return None;
    };
    for (key, value) in top {
        let make: fn(String) -> Owner = match key.as_str()? {
            "rules" => Owner::Rule,
            "sources" => Owner::Source,
            "tests" => Owner::Test,
            _ => continue,
        };
        let Kind::Seq(items) = &value.kind else {
            continue;
        };
        let mut found = None;
        for item in items {
            if item.pos.line <= line {
                found = Some(item);
            }
        }
        let is_last_section_item = found.is_some_and(|f| {
            // The item must start before the error and the next top-level key
            // must start after it.
            let next_key_line = top
                .iter()
                .map(|(k, _)| k.pos.line)
                .filter(|l| *l > key.pos.line)
                .min()
                .unwrap_or(u32::MAX);
            f.pos.line <= line && line < next_key_line
        });
        if let Some(item) = found.filter(|_| is_last_section_item) {
            let Kind::Map(fields) = &item.kind else {
                return None;
            };
            let name = fields
                .iter()
                .find(|(k, _)| k.as_str() == Some("name"))
                .and_then(|(_, v)| v.as_str())?;
            return Some(make(name.to_owned()));
        }
    }
    None
}
