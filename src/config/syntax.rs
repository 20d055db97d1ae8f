//! The YAML syntax pass that runs over a rule file before it is deserialized.
//!
//! Owns deciding whether a file is well-formed YAML and, when it is not, the
//! line and column to blame. serde-saphyr 2.2 deserializes while it parses, so
//! a struct can end, and report a missing field, before the parser has reached
//! the line that ended it: a key indented one space less than its siblings
//! closes its mapping, the rule misses that key, and the parser's own error on
//! the next event is never read. Reading the parser's whole event stream first
//! puts the syntax error, on the misindented line, ahead of any shape error.
//!
//! It also moves tab-in-indentation errors onto the tab: granit-parser 2.2
//! (the parser inside serde-saphyr) marks some of them at the plain scalar or
//! block scalar header before the tab, a line too early.

use serde_saphyr::granit_parser::{ErrorKind, Event, Parser, ScanError, StructureStyle};

use super::node::Pos;

/// Why a file is not well-formed YAML, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

const TAB_MESSAGE: &str = "tab used as indentation; YAML indents with spaces only";

/// Run the YAML parser over all of `text` and report its first error.
///
/// This is the parser serde-saphyr drives, with the indentation and BOM rules
/// of the loader's own options. Its resource limits are the parser's
/// defaults, which are no stricter than serde-saphyr's budget, so this pass
/// rejects nothing the deserializer would accept; the budget itself is still
/// enforced by the deserializer.
///
/// # Errors
/// The parser's first error, positioned as described in the module docs.
pub fn check(text: &str) -> Result<(), SyntaxError> {
    let loader = super::yaml_options();
    let options = serde_saphyr::granit_parser::options! {
        strict_indentation: loader.strict_indentation,
        bom_inside_document_as_content: loader.bom_inside_document_as_content,
        // Comment events are not needed to find errors; comments are still
        // scanned and validated without them.
        emit_comments: false,
    };
    // The column of each open collection, `None` for a flow one: what the
    // scanner measures indentation against when it rejects a tab.
    let mut open: Vec<Option<usize>> = Vec::new();
    for item in Parser::new_from_str_with_options(text, options) {
        match item {
            Ok((Event::SequenceStart(style, ..) | Event::MappingStart(style, ..), span)) => {
                open.push(matches!(style, StructureStyle::Block).then(|| span.start.col()));
            }
            Ok((Event::SequenceEnd | Event::MappingEnd, _)) => {
                open.pop();
            }
            Ok(_) => {}
            Err(e) => return Err(locate(text, &e, &open)),
        }
    }
    Ok(())
}

fn locate(text: &str, e: &ScanError, open: &[Option<usize>]) -> SyntaxError {
    let mark = e.marker();
    let tab = match e.kind() {
        // Marked at the start of the scalar whose continuation line holds the
        // tab; that line is the first after it with a tab left of the
        // scalar's indentation, since any earlier line with content there
        // would have ended the scalar instead.
        ErrorKind::TabInPlainScalar => {
            let limit = plain_scalar_indent(open, mark.col());
            lines(text)
                .skip(mark.line())
                .find_map(|(line, l)| indenting_tab(l, limit).map(|col| (line, col)))
        }
        // Marked at the content after the tabs, on the right line.
        ErrorKind::TabInBlockIndentation
        | ErrorKind::TabNotAllowed
        | ErrorKind::TabInIndentation => lines(text)
            .nth(mark.line().saturating_sub(1))
            .and_then(|(line, l)| indenting_tab(l, usize::MAX).map(|col| (line, col))),
        // Marked at the `|` or `>`; the tab opens the line after the header.
        ErrorKind::TabAtBlockScalarStart => lines(text)
            .nth(mark.line())
            .filter(|(_, l)| l.starts_with('\t'))
            .map(|(line, _)| (line, 0)),
        _ => None,
    };
    match tab {
        Some((line, col)) => SyntaxError {
            pos: pos(line, col),
            message: TAB_MESSAGE.to_owned(),
        },
        None => SyntaxError {
            pos: pos(mark.line(), mark.col()),
            message: e.info(),
        },
    }
}

/// Lines with their 1-based numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l))
}

/// The column a plain scalar starting at `col` must keep its continuation
/// lines at: one past the innermost block collection the scanner still has
/// open there. A scalar that starts a line has already closed every block
/// collection indented past it, even if the parser has not yet said so.
fn plain_scalar_indent(open: &[Option<usize>], col: usize) -> usize {
    let in_flow = matches!(open.last(), Some(None));
    open.iter()
        .rev()
        .flatten()
        .find(|&&c| in_flow || c <= col)
        .map_or(0, |c| c + 1)
}

/// The 0-based column of the first tab before column `limit` in the leading
/// whitespace of `line`, when content other than a comment follows it.
/// Blank and comment-only lines may hold tabs anywhere.
fn indenting_tab(line: &str, limit: usize) -> Option<usize> {
    let lead = line.len() - line.trim_start_matches([' ', '\t']).len();
    let rest = &line[lead..];
    if rest.is_empty() || rest.starts_with('#') {
        return None;
    }
    line[..lead].find('\t').filter(|&col| col < limit)
}

fn pos(line: usize, col: usize) -> Pos {
    Pos {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: u32::try_from(col.saturating_add(1)).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> (u32, u32, String) {
        let e = check(text).unwrap_err();
        (e.pos.line, e.pos.column, e.message)
    }

    fn tab(line: u32, column: u32) -> (u32, u32, String) {
        (line, column, TAB_MESSAGE.to_owned())
    }

    #[test]
    fn well_formed_yaml_passes() {
        for text in [
            "a: 1\n",
            "a:\n- x\n- y\n",
            "a: [x,\n\ty]\n",
            "a: x\n\n\t\nb: y\n",
            "a:\n  b: x\n\t# note\n  c: y\n",
            "a: long\n  \tcontinued\nb: y\n",
            "a: |\n  \tcontent\n",
        ] {
            assert_eq!(check(text), Ok(()), "{text:?}");
        }
    }

    #[test]
    fn misindented_key_is_reported_on_its_line() {
        let text = "rules:\n  - name: r\n    source: a\n   actions:\n      - log: x\n";
        assert_eq!(
            at(text),
            (
                4,
                4,
                "while parsing a block collection, did not find expected '-' indicator".to_owned()
            )
        );
    }

    #[test]
    fn tabs_in_indentation_are_reported_at_the_tab() {
        // After a plain scalar: the parser marks the scalar on the line above.
        assert_eq!(at("a: x\n\tb: y\n"), tab(2, 1));
        assert_eq!(at("a:\n  - x\n\t- y\n"), tab(3, 1));
        assert_eq!(at("- a\n\t- b\n"), tab(2, 1));
        // A continuation line may hold a tab right of the indentation; the
        // error is on the later line whose tab is left of it.
        assert_eq!(at("a: x\n  \tmore\n\tb: y\n"), tab(3, 1));
        // A scalar starting a line has closed the deeper mapping above it.
        // Its continuation may then hold a tab at column 3, which is right of
        // `e` but left of `c`.
        assert_eq!(at("a:\n  b:\n    c: d\n  e\n   \tmore\n \tf\n"), tab(6, 2));
        // After a quoted scalar or a bare key: the parser marks the content.
        assert_eq!(at("a: \"x\"\n\tb: y\n"), tab(2, 1));
        assert_eq!(at("a:\n  - b: \"x\"\n  \tc: y\n"), tab(3, 3));
        assert_eq!(at("a:\n\tb: y\n"), tab(2, 1));
        // The first line of a block scalar: the parser marks the `|`.
        assert_eq!(at("a: |\n\tfoo\n"), tab(2, 1));
    }
}
