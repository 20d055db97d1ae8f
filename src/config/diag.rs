//! Config diagnostics: one error or warning tied to a file, line and column.
//!
//! Owns `Diagnostic`, `Diagnostics` and their text and JSON renderings. Every
//! message names the file, the position of the offending value, and the rule
//! (or source, or test) it belongs to, so `check` output can be acted on
//! without opening the file first.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::node::Pos;

/// What a diagnostic belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Owner {
    Rule(String),
    Source(String),
    Test(String),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Rule(n) => write!(f, "rule {n:?}"),
            Owner::Source(n) => write!(f, "source {n:?}"),
            Owner::Test(n) => write!(f, "test {n:?}"),
        }
    }
}

/// One finding in a rule file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: &Path, pos: Pos, owner: Option<&Owner>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            owner: owner.cloned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0 means the finding is about the file as a whole (it is
        // missing or unreadable): no position to show.
        if self.line == 0 {
            write!(f, "{}: ", self.file.display())?;
        } else {
            write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        }
        if let Some(owner) = &self.owner {
            write!(f, "{owner}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Errors and warnings from loading a rule set, in file order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Diagnostics {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Sort by file then position so output is stable whatever order the
    /// checks ran in.
    pub fn sort(&mut self) {
        let key = |d: &Diagnostic| (d.file.clone(), d.line, d.column);
        self.errors.sort_by_key(key);
        self.warnings.sort_by_key(key);
    }

    /// The human rendering: errors, then warnings, then a count line.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_file_line_column_owner_message() {
        let pos = Pos {
            line: 9,
            column: 24,
        };
        let d = Diagnostic::new(
            Path::new("r.yaml"),
            pos,
            Some(&Owner::Rule("x".into())),
            "bad",
        );
        assert_eq!(d.to_string(), r#"r.yaml:9:24: rule "x": bad"#);
        let d = Diagnostic::new(
            Path::new("r.yaml"),
            pos,
            Some(&Owner::Test("t".into())),
            "bad",
        );
        assert_eq!(d.to_string(), r#"r.yaml:9:24: test "t": bad"#);
        let d = Diagnostic::new(Path::new("gone"), Pos::default(), None, "no such file");
        assert_eq!(d.to_string(), "gone: no such file");
    }
}
