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
pub mod syntax;

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
    let mut texts = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => match parse(file, &text) {
                Ok(config) => {
                    parsed.push(compile::ParsedFile {
                        path: file.clone(),
                        config,
                    });
                    texts.push(text);
                }
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
        Ok((mut rules, more)) => {
            rules.set_digest(texts.iter().map(String::as_str));
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
            limits: Vec::new(),
        });
    }
    // Syntax first: deserializing stops at the first shape error, which a
    // misindented line can cause before the parser reports the line itself.
    if let Err(e) = syntax::check(text) {
        let owner = owner_by_text(text, e.pos.line);
        return Err(Diagnostic::new(file, e.pos, owner.as_ref(), e.message));
    }
    serde_saphyr::from_str_with_options::<raw::FileConfig>(text, yaml_options()).map_err(|e| {
        let pos = e.location().map_or(Pos::default(), |l| Pos {
            line: u32::try_from(l.line()).unwrap_or(u32::MAX),
            column: u32::try_from(l.column()).unwrap_or(u32::MAX),
        });
        let owner = owner_at(text, pos.line);
        Diagnostic::new(file, pos, owner.as_ref(), clean_message(&e))
    })
}

/// YAML 1.2 booleans only: `on`, `off`, `yes`, `no`, `y` and `n` stay
/// strings, so `json: { on: 1 }` sends the key `"on"`, not `"true"`.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// saphyr's message without its own location (prefix or suffix) and snippet:
/// the diagnostic already starts with `file:line:col`.
fn clean_message(e: &serde_saphyr::Error) -> String {
    strip_location(&e.without_snippet().to_string())
}

fn strip_location(text: &str) -> String {
    static PREFIX: OnceLock<Regex> = OnceLock::new();
    static SUFFIX: OnceLock<Regex> = OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        Regex::new(r"^(?:error: )?(?:line \d+ column \d+: )?").unwrap_or_else(|_| unreachable!())
    });
    let suffix = SUFFIX.get_or_init(|| {
        Regex::new(r" at line \d+, column \d+$").unwrap_or_else(|_| unreachable!())
    });
    let first = text.lines().next().unwrap_or_default();
    let first = prefix.replace(first, "");
    let msg = suffix.replace(&first, "");
    // saphyr names the Rust type (`invalid u32`); say what to write instead.
    match msg.strip_prefix("invalid u") {
        Some(bits) if bits.parse::<u8>().is_ok() => "expected a whole number, 0 or more".to_owned(),
        _ => msg.into_owned(),
    }
}

/// The rule, source or test whose entry contains `line`, read from a lenient
/// parse of the same text.
fn owner_at(text: &str, line: u32) -> Option<Owner> {
    let Ok(root) = serde_saphyr::from_str_with_options::<Node>(text, yaml_options()) else {
        return owner_by_text(text, line);
    };
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

/// The owner of `line` when the text is not even well-formed YAML: the
/// `name:` of the block-style list item around `line` in a top-level
/// `rules:`, `sources:` or `tests:` section, read line by line.
fn owner_by_text(text: &str, line: u32) -> Option<Owner> {
    let lines: Vec<&str> = text.lines().collect();
    let upto = usize::try_from(line).ok()?.min(lines.len());
    let indent = |l: &str| l.len() - l.trim_start_matches(' ').len();
    let is_item = |l: &str| {
        let t = l.trim_start_matches(' ');
        t == "-" || t.starts_with("- ")
    };
    // The section: the last top-level line at or before `line`.
    let section = lines
        .get(..upto)?
        .iter()
        .rposition(|l| !l.is_empty() && !l.starts_with([' ', '\t', '#']) && !is_item(l))?;
    let (head, body) = lines.get(section..)?.split_first()?;
    let make: fn(String) -> Owner = match head.split(':').next()?.trim() {
        "rules" => Owner::Rule,
        "sources" => Owner::Source,
        "tests" => Owner::Test,
        _ => return None,
    };
    let item_indent = indent(body.iter().find(|l| is_item(l))?);
    let is_own_item = |l: &&str| is_item(l) && indent(l) == item_indent;
    let start = lines
        .get(section + 1..upto)?
        .iter()
        .rposition(is_own_item)?;
    let (item, after) = body.get(start..)?.split_first()?;
    let after_dash = item.get(item_indent + 1..)?;
    let field_indent = item_indent + 1 + after_dash.len() - after_dash.trim_start().len();
    let name = std::iter::once(after_dash.trim_start())
        .chain(
            after
                .iter()
                .take_while(|l| {
                    !(is_own_item(l) || (!l.is_empty() && !l.starts_with([' ', '\t', '#'])))
                })
                .filter(|l| indent(l) == field_indent)
                .map(|l| l.trim_start()),
        )
        .find_map(|l| l.strip_prefix("name:"))?;
    let name = name.split(" #").next()?.trim();
    let name = name
        .strip_prefix('"')
        .and_then(|n| n.strip_suffix('"'))
        .or_else(|| name.strip_prefix('\'').and_then(|n| n.strip_suffix('\'')))
        .unwrap_or(name);
    (!name.is_empty()).then(|| make(name.to_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn yaml_1_1_booleans_stay_strings() {
        let text = "rules:\n  - name: r\n    source: s\n    actions:\n      - http:\n          url: http://x/\n          json: { on: 1, n: yes, t: true }\n";
        let cfg = super::parse(std::path::Path::new("f.yaml"), text).unwrap();
        let json = cfg.rules[0].actions[0]
            .value
            .http
            .as_ref()
            .unwrap()
            .json
            .as_ref()
            .unwrap()
            .to_json();
        assert_eq!(json, serde_json::json!({"on": 1, "n": "yes", "t": true}));
    }

    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("f.yaml"), text).unwrap_err().to_string()
    }

    #[test]
    fn shape_errors_name_their_rule_once_located() {
        let text =
            "rules:\n  - name: r\n    source: \"*\"\n    evnt: push\n    actions: [{ log: x }]\n";
        let e = err(text);
        assert!(
            e.starts_with("f.yaml:4:5: rule \"r\": unknown field `evnt`"),
            "{e}"
        );
        assert!(!e.contains("at line"), "{e}");
        let text = "rules:\n  - name: r\n    source: \"*\"\n    actions:\n      - shell: [echo]\n        concurrency: -1\n";
        assert_eq!(
            err(text),
            "f.yaml:6:22: rule \"r\": expected a whole number, 0 or more"
        );
    }

    #[test]
    fn syntax_errors_name_their_rule() {
        let text = "sources:\n  - name: s\n    provider: none\nrules:\n  - name: a\n    source: s\n    actions: [{ log: x }]\n  - source: s\n    name: \"b\"  # second\n    actions:\n      - log: \"open\n";
        let e = err(text);
        assert_eq!(e, "f.yaml:11:14: rule \"b\": unclosed quote");
    }

    #[test]
    fn owner_by_text_sections_and_items() {
        let text = "sources:\n  - name: s\n    provider: x\n\ntests:\n- name: 't 1'\n  source: s\n";
        assert_eq!(owner_by_text(text, 3), Some(Owner::Source("s".into())));
        assert_eq!(owner_by_text(text, 7), Some(Owner::Test("t 1".into())));
        assert_eq!(owner_by_text(text, 1), None);
        assert_eq!(owner_by_text("other:\n  - name: x\n", 2), None);
        assert_eq!(owner_by_text("rules: [\n", 1), None);
        assert_eq!(owner_by_text("", 1), None);
    }
}
