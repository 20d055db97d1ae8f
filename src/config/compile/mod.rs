//! Raw config → compiled `RuleSet`, collecting every error.
//!
//! Owns the meaning of each field: resolving `${…}` references, compiling
//! JSONPath, regexes, globs and templates, building provider adapters,
//! checking names and references across files, and choosing defaults. It
//! never stops at the first problem: each check records a diagnostic at the
//! offending value and moves on, so one `check` run shows everything.
//!
//! This module owns the compile state and the helpers every item uses
//! (diagnostics, `${…}` expansion, durations, templates); each kind of item
//! has its own file: `source`, `rule` (with its `match:` conditions),
//! `action` (log, HTTP, shell, retry), `respond` (answers to the sender)
//! and `test` (embedded rule tests).

mod action;
mod bursts;
mod respond;
mod rule;
mod source;
mod test;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::diag::{Diagnostic, Diagnostics, Owner};
use super::interp;
use super::node::Pos;
use super::raw::FileConfig;
use crate::providers::{Origin, Secret, Source};
use crate::rules::{Rule, RuleSet, RuleTest};
use crate::template::{Template, Templates};

/// One parsed file, waiting to be compiled with the others.
pub struct ParsedFile {
    pub path: PathBuf,
    pub config: FileConfig,
}

/// Compile state shared by every file of one load.
struct Compiler {
    diags: Diagnostics,
    templates: Templates,
    secrets: Vec<Secret>,
    sources: Vec<Source>,
    rules: Vec<Rule>,
    tests: Vec<RuleTest>,
    source_names: HashMap<String, Origin>,
    source_paths: HashMap<String, (String, Origin)>,
    rule_names: HashMap<String, Origin>,
    /// Every `cancel:` action's target, checked once all rules are known.
    cancel_refs: Vec<CancelRef>,
    /// `respond:` of the sources that have one.
    source_responds: HashMap<String, crate::rules::Respond>,
    /// The `limits:` of every file, by name.
    limits: bursts::NamedLimits,
}

/// A rule named by a `cancel:` action, and where it was named.
struct CancelRef {
    file: PathBuf,
    owner: Option<Owner>,
    pos: Pos,
    rule: String,
}

/// Where diagnostics of the current item go.
struct Ctx<'a> {
    file: &'a Path,
    base: PathBuf,
    owner: Option<Owner>,
}

impl Ctx<'_> {
    fn origin(&self, pos: Pos) -> Origin {
        Origin {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
        }
    }
}

/// Compile parsed files into a rule set.
///
/// # Errors
/// Every error found, with the warnings, when any error was found.
pub fn compile(files: Vec<ParsedFile>) -> Result<(RuleSet, Diagnostics), Diagnostics> {
    let mut c = Compiler {
        diags: Diagnostics::default(),
        templates: Templates::new(),
        secrets: Vec::new(),
        sources: Vec::new(),
        rules: Vec::new(),
        tests: Vec::new(),
        source_names: HashMap::new(),
        source_paths: HashMap::new(),
        rule_names: HashMap::new(),
        cancel_refs: Vec::new(),
        source_responds: HashMap::new(),
        limits: bursts::NamedLimits::default(),
    };
    // Sources first, from every file, so a rule may name a source defined in
    // another file.
    for f in &files {
        for s in &f.config.sources {
            c.source(&f.path, s);
        }
    }
    // Limits too: a rule may name one defined in another file.
    for f in &files {
        c.named_limits(&f.path, &f.config.limits);
    }
    for f in &files {
        for r in &f.config.rules {
            c.rule(&f.path, r);
        }
    }
    // After every file's rules: a `cancel:` may name a rule defined later
    // or in another file.
    c.check_cancel_refs();
    c.check_respond_overlap();
    for f in &files {
        for t in &f.config.tests {
            c.test(&f.path, t);
        }
    }
    c.diags.sort();
    if c.diags.has_errors() {
        return Err(c.diags);
    }
    let mut set = RuleSet::new(c.sources, c.rules, c.tests, c.templates, c.secrets);
    set.source_responds = c.source_responds;
    Ok((set, c.diags))
}

fn has_group(action: &crate::rules::Action) -> bool {
    action.group.is_some() || action.then.iter().any(has_group)
}

fn base_of(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e} (write e.g. 30s, 5m, 1h)"))
}

impl Compiler {
    fn check_cancel_refs(&mut self) {
        for r in std::mem::take(&mut self.cancel_refs) {
            let ctx = Ctx {
                file: &r.file,
                base: base_of(&r.file),
                owner: r.owner.clone(),
            };
            if !self.rule_names.contains_key(&r.rule) {
                let mut known: Vec<&str> = self.rule_names.keys().map(String::as_str).collect();
                known.sort_unstable();
                let msg = format!(
                    "`cancel` names unknown rule {:?} (defined: {})",
                    r.rule,
                    known.join(", ")
                );
                self.error(&ctx, r.pos, msg);
                continue;
            }
            // A rule that failed to compile is not in `rules`; its own
            // errors say enough.
            let Some(target) = self.rules.iter().find(|x| x.name == r.rule) else {
                continue;
            };
            let grouped = [&target.actions, &target.on_failure, &target.on_cancel]
                .into_iter()
                .flatten()
                .any(has_group);
            if !grouped {
                let msg = format!(
                    "`cancel` names rule {:?}, which has no action with `group:`, so it never finds a delivery to cancel",
                    r.rule
                );
                self.warn(&ctx, r.pos, msg);
            }
        }
    }

    fn error(&mut self, ctx: &Ctx<'_>, pos: Pos, msg: impl Into<String>) {
        self.diags
            .errors
            .push(Diagnostic::new(ctx.file, pos, ctx.owner.as_ref(), msg));
    }

    fn warn(&mut self, ctx: &Ctx<'_>, pos: Pos, msg: impl Into<String>) {
        self.diags
            .warnings
            .push(Diagnostic::new(ctx.file, pos, ctx.owner.as_ref(), msg));
    }

    /// Resolve `${…}` references; the resolved values become secrets to redact.
    fn expand(&mut self, ctx: &Ctx<'_>, text: &str, pos: Pos) -> Option<String> {
        match interp::expand(text, &ctx.base) {
            Ok(e) => {
                self.secrets.extend(e.secrets.into_iter().map(Secret::new));
                Some(e.text)
            }
            Err(e) => {
                let at = locate_reference(ctx.file, pos, text, &e.reference).unwrap_or(pos);
                self.error(ctx, at, e.message);
                None
            }
        }
    }

    fn expand_spanned(&mut self, ctx: &Ctx<'_>, s: &Spanned<String>) -> Option<String> {
        self.expand(ctx, &s.value, Pos::of(s))
    }

    fn duration(&mut self, ctx: &Ctx<'_>, s: &Spanned<String>) -> Option<Duration> {
        let text = self.expand_spanned(ctx, s)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(msg) => {
                self.error(ctx, Pos::of(s), msg);
                None
            }
        }
    }

    fn template(&mut self, ctx: &Ctx<'_>, text: &str, pos: Pos) -> Option<Template> {
        let text = self.expand(ctx, text, pos)?;
        match self.templates.compile(&text) {
            Ok(t) => {
                self.templates.set_origin(&t, ctx.origin(pos));
                Some(t)
            }
            Err(e) => {
                self.error(ctx, pos, e.to_string());
                None
            }
        }
    }

    fn template_spanned(&mut self, ctx: &Ctx<'_>, s: &Spanned<String>) -> Option<Template> {
        self.template(ctx, &s.value, Pos::of(s))
    }
}

/// Where `reference` (as written, `${env:NAME}`) appears in `file`, looking
/// only in the stretch of text that can hold the value `value` that starts at
/// `start`: a block scalar puts it on a later line, quoting shifts its column.
/// `None` when the file cannot be read or the reference is not found there
/// verbatim (the caller then points at the value's start).
fn locate_reference(file: &Path, start: Pos, value: &str, reference: &str) -> Option<Pos> {
    let text = std::fs::read_to_string(file).ok()?;
    let line_start = if start.line <= 1 {
        0
    } else {
        text.match_indices('\n')
            .nth(usize::try_from(start.line).ok()? - 2)?
            .0
            + 1
    };
    let offset = line_start
        + text[line_start..]
            .char_indices()
            .nth(usize::try_from(start.column).ok()?.saturating_sub(1))?
            .0;
    // The raw value is the value plus quotes, escapes and, per line, its
    // indentation: a generous bound keeps the search inside it.
    let lines = value.lines().count() + 2;
    let window = value.len() * 2 + lines * (usize::try_from(start.column).ok()? + 8);
    let end = (offset + window).min(text.len());
    let end = (end..=text.len()).find(|&i| text.is_char_boundary(i))?;
    let found = offset + text[offset..end].find(reference)?;
    let before = &text[..found];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |i| i + 1)..]
        .chars()
        .count()
        + 1;
    Some(Pos {
        line: u32::try_from(line).ok()?,
        column: u32::try_from(column).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_references_are_located_where_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.yaml");
        let text = "a: \"x ${env:A} y\"\nb: |\n  one\n  two ${env:B}\nc: plain\n";
        std::fs::write(&file, text).unwrap();
        let at = |line, column| Pos { line, column };
        // A quoted scalar: the column of `${`, not of the quote.
        assert_eq!(
            locate_reference(&file, at(1, 4), "x ${env:A} y", "${env:A}"),
            Some(at(1, 7))
        );
        // A block scalar: the reference's own line.
        assert_eq!(
            locate_reference(&file, at(2, 4), "one\ntwo ${env:B}\n", "${env:B}"),
            Some(at(4, 7))
        );
        // Not in the value: no position, so the caller keeps the value's.
        assert_eq!(locate_reference(&file, at(5, 4), "plain", "${env:A}"), None);
        assert_eq!(
            locate_reference(&dir.path().join("gone.yaml"), at(1, 1), "x", "${env:A}"),
            None
        );
    }
}
