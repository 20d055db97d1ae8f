//! Compiled `match` conditions and their evaluation against an event body.
//!
//! Owns the semantics of every operator: a JSONPath that selects several values
//! holds if any of them satisfies the operator; numbers compare as numbers; a
//! type mismatch is simply false, never an error. It also explains a failure
//! (which condition, which value was seen) for `hookrouter test` and the debug
//! log. Parsing YAML into conditions is `config::compile`'s job.

use std::cmp::Ordering;
use std::fmt;

use jsonpath_rust::parser::model::JpQuery;
use regex::Regex;
use serde_json::Value;

/// A compiled condition tree.
#[derive(Debug, Clone)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Path(PathCondition),
}

/// Operators applied to the values one JSONPath selects; all must hold.
#[derive(Debug, Clone)]
pub struct PathCondition {
    /// The JSONPath as written, for explanations.
    pub path: String,
    pub query: JpQuery,
    pub ops: Vec<Op>,
}

/// One operator and its operand.
#[derive(Debug, Clone)]
pub enum Op {
    Equals(Value),
    In(Vec<Value>),
    Regex(Regex),
    Contains(Value),
    StartsWith(String),
    Exists(bool),
    Cmp(CmpOp, Value),
}

/// The ordering operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// The operator names accepted in a rule file.
pub const OPERATORS: &[&str] = &[
    "equals",
    "in",
    "regex",
    "contains",
    "starts_with",
    "exists",
    "gt",
    "gte",
    "lt",
    "lte",
];

impl Op {
    /// Build an operator from its name and operand.
    ///
    /// # Errors
    /// An unknown operator, or an operand of the wrong type, as a message.
    pub fn compile(name: &str, operand: &Value) -> Result<Op, String> {
        let cmp = |op| match operand {
            Value::Number(_) | Value::String(_) => Ok(Op::Cmp(op, operand.clone())),
            other => Err(format!(
                "`{name}` needs a number or a string, found {}",
                json_type(other)
            )),
        };
        match name {
            "equals" => Ok(Op::Equals(operand.clone())),
            "in" => match operand {
                Value::Array(items) => Ok(Op::In(items.clone())),
                other => Err(format!("`in` needs a list, found {}", json_type(other))),
            },
            "regex" => match operand {
                Value::String(re) => Regex::new(re)
                    .map(Op::Regex)
                    .map_err(|e| format!("invalid regex {re:?}: {}", regex_error(&e))),
                other => Err(format!(
                    "`regex` needs a string, found {}",
                    json_type(other)
                )),
            },
            "contains" => Ok(Op::Contains(operand.clone())),
            "starts_with" => match operand {
                Value::String(s) => Ok(Op::StartsWith(s.clone())),
                other => Err(format!(
                    "`starts_with` needs a string, found {}",
                    json_type(other)
                )),
            },
            "exists" => match operand {
                Value::Bool(b) => Ok(Op::Exists(*b)),
                other => Err(format!(
                    "`exists` needs true or false, found {}",
                    json_type(other)
                )),
            },
            "gt" => cmp(CmpOp::Gt),
            "gte" => cmp(CmpOp::Gte),
            "lt" => cmp(CmpOp::Lt),
            "lte" => cmp(CmpOp::Lte),
            other => Err(format!(
                "unknown operator `{other}` (expected one of {})",
                OPERATORS.join(", ")
            )),
        }
    }

    /// Whether the operator holds for the values a path selected.
    pub fn holds(&self, selected: &[&Value]) -> bool {
        match self {
            Op::Exists(want) => selected.is_empty() != *want,
            _ => selected.iter().any(|v| self.holds_for(v)),
        }
    }

    fn holds_for(&self, v: &Value) -> bool {
        match self {
            Op::Equals(want) => json_eq(v, want),
            Op::In(items) => items.iter().any(|want| json_eq(v, want)),
            Op::Regex(re) => v.as_str().is_some_and(|s| re.is_match(s)),
            Op::Contains(want) => match (v, want) {
                (Value::String(s), Value::String(w)) => s.contains(w.as_str()),
                (Value::Array(items), _) => items.iter().any(|i| json_eq(i, want)),
                _ => false,
            },
            Op::StartsWith(prefix) => v.as_str().is_some_and(|s| s.starts_with(prefix.as_str())),
            Op::Exists(_) => true,
            Op::Cmp(op, want) => compare(v, want).is_some_and(|ord| match op {
                CmpOp::Gt => ord == Ordering::Greater,
                CmpOp::Gte => ord != Ordering::Less,
                CmpOp::Lt => ord == Ordering::Less,
                CmpOp::Lte => ord != Ordering::Greater,
            }),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Equals(v) => write!(f, "equals {v}"),
            Op::In(items) => write!(f, "in {}", Value::Array(items.clone())),
            Op::Regex(re) => write!(f, "regex {:?}", re.as_str()),
            Op::Contains(v) => write!(f, "contains {v}"),
            Op::StartsWith(s) => write!(f, "starts_with {s:?}"),
            Op::Exists(b) => write!(f, "exists {b}"),
            Op::Cmp(op, v) => {
                let name = match op {
                    CmpOp::Gt => "gt",
                    CmpOp::Gte => "gte",
                    CmpOp::Lt => "lt",
                    CmpOp::Lte => "lte",
                };
                write!(f, "{name} {v}")
            }
        }
    }
}

impl PathCondition {
    /// The values the path selects in `body`. A query that cannot be
    /// evaluated selects nothing.
    pub fn select<'a>(&self, body: &'a Value) -> Vec<&'a Value> {
        jsonpath_rust::query::js_path_process(&self.query, body)
            .map(|refs| refs.into_iter().map(|r| r.val()).collect())
            .unwrap_or_default()
    }
}

impl Condition {
    /// Whether the condition holds for `body`.
    pub fn eval(&self, body: &Value) -> bool {
        match self {
            Condition::All(items) => items.iter().all(|c| c.eval(body)),
            Condition::Any(items) => items.iter().any(|c| c.eval(body)),
            Condition::Not(inner) => !inner.eval(body),
            Condition::Path(pc) => {
                let selected = pc.select(body);
                pc.ops.iter().all(|op| op.holds(&selected))
            }
        }
    }

    /// `Ok` when the condition holds, otherwise why not: the failing
    /// condition and the value it saw.
    ///
    /// # Errors
    /// The explanation, when the condition does not hold.
    pub fn explain(&self, body: &Value) -> Result<(), String> {
        match self {
            Condition::All(items) => items.iter().try_for_each(|c| c.explain(body)),
            Condition::Any(items) => {
                let reasons: Vec<String> =
                    items.iter().filter_map(|c| c.explain(body).err()).collect();
                if reasons.len() < items.len() {
                    Ok(())
                } else {
                    Err(format!("none of `any` held: {}", reasons.join("; ")))
                }
            }
            Condition::Not(inner) => match inner.explain(body) {
                Ok(()) => Err(format!("`not` failed: {} held", inner.describe())),
                Err(_) => Ok(()),
            },
            Condition::Path(pc) => {
                let selected = pc.select(body);
                match pc.ops.iter().find(|op| !op.holds(&selected)) {
                    None => Ok(()),
                    Some(op) => Err(format!(
                        "{} {op}: saw {}",
                        pc.path,
                        describe_selection(&selected)
                    )),
                }
            }
        }
    }

    /// A short text of the condition, for explanations of `not`.
    pub fn describe(&self) -> String {
        match self {
            Condition::All(items) => {
                let parts: Vec<String> = items.iter().map(Condition::describe).collect();
                parts.join(" and ")
            }
            Condition::Any(items) => {
                let parts: Vec<String> = items.iter().map(Condition::describe).collect();
                format!("any({})", parts.join(", "))
            }
            Condition::Not(inner) => format!("not({})", inner.describe()),
            Condition::Path(pc) => {
                let ops: Vec<String> = pc.ops.iter().map(ToString::to_string).collect();
                format!("{} {}", pc.path, ops.join(", "))
            }
        }
    }
}

fn describe_selection(selected: &[&Value]) -> String {
    const MAX: usize = 120;
    let text = match selected {
        [] => return "nothing (path not found)".to_owned(),
        [one] => one.to_string(),
        many => Value::Array(many.iter().map(|v| (*v).clone()).collect()).to_string(),
    };
    if text.len() > MAX {
        let cut = (0..=MAX)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        format!("{}…", &text[..cut])
    } else {
        text
    }
}

/// Equality where numbers compare by value (1 == 1.0) and everything else
/// structurally.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// Numbers by value, strings lexically; any other pairing has no order.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => Some(i.cmp(&j)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Compile a JSONPath.
///
/// # Errors
/// The parser's message, on one line.
pub fn compile_path(path: &str) -> Result<JpQuery, String> {
    jsonpath_rust::parser::parse_json_path(path)
        .map_err(|e| format!("invalid JSONPath: {}", path_error(&e.to_string())))
}

/// The parser's multi-line report (` --> 1:11`, the path, a caret,
/// `= expected selector`) as one line: `expected selector at character 11`.
fn path_error(text: &str) -> String {
    let column = text
        .lines()
        .find_map(|l| l.split_once("--> ").map(|(_, at)| at))
        .and_then(|at| at.split_once(':'))
        .map(|(_, col)| col.trim());
    let what = text.lines().find_map(|l| l.trim().strip_prefix("= "));
    match (what, column) {
        (Some(what), Some(col)) => format!("{what} at character {col}"),
        _ => one_line(text),
    }
}

/// The regex crate's multi-line syntax report (pattern, caret, `error: …`)
/// reduced to its last line; the pattern is quoted by the caller.
pub(crate) fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(|| one_line(&text), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(p: &str, ops: Vec<Op>) -> Condition {
        Condition::Path(PathCondition {
            path: p.to_owned(),
            query: compile_path(p).unwrap(),
            ops,
        })
    }

    fn op(name: &str, v: Value) -> Op {
        Op::compile(name, &v).unwrap()
    }

    fn body() -> Value {
        json!({
            "ref": "refs/heads/main",
            "n": 5,
            "f": 2.5,
            "nul": null,
            "tags": ["a", "b"],
            "commits": [
                {"modified": ["src/x.rs", "deploy/app.yaml"]},
                {"modified": ["README.md"]}
            ],
            "obj": {"k": 1}
        })
    }

    #[test]
    fn equals_scalars_and_numbers() {
        let b = body();
        assert!(path("$.ref", vec![op("equals", json!("refs/heads/main"))]).eval(&b));
        assert!(!path("$.ref", vec![op("equals", json!("refs/heads/dev"))]).eval(&b));
        assert!(path("$.n", vec![op("equals", json!(5.0))]).eval(&b));
        assert!(path("$.obj", vec![op("equals", json!({"k": 1.0}))]).eval(&b));
        // A type mismatch is false, not an error.
        assert!(!path("$.n", vec![op("equals", json!("5"))]).eval(&b));
    }

    #[test]
    fn nulls_and_missing_paths() {
        let b = body();
        assert!(path("$.nul", vec![op("equals", Value::Null)]).eval(&b));
        assert!(path("$.nul", vec![op("exists", json!(true))]).eval(&b));
        assert!(!path("$.missing", vec![op("equals", Value::Null)]).eval(&b));
        assert!(path("$.missing", vec![op("exists", json!(false))]).eval(&b));
        assert!(!path("$.missing", vec![op("exists", json!(true))]).eval(&b));
        assert!(!path("$.missing", vec![op("gt", json!(1))]).eval(&b));
    }

    #[test]
    fn in_regex_starts_with() {
        let b = body();
        assert!(path("$.ref", vec![op("in", json!(["x", "refs/heads/main"]))]).eval(&b));
        assert!(!path("$.ref", vec![op("in", json!(["x"]))]).eval(&b));
        assert!(path("$.ref", vec![op("regex", json!("^refs/heads/"))]).eval(&b));
        assert!(!path("$.n", vec![op("regex", json!("5"))]).eval(&b));
        assert!(path("$.ref", vec![op("starts_with", json!("refs/"))]).eval(&b));
        assert!(!path("$.n", vec![op("starts_with", json!("5"))]).eval(&b));
    }

    #[test]
    fn contains_on_strings_and_lists() {
        let b = body();
        assert!(path("$.ref", vec![op("contains", json!("heads"))]).eval(&b));
        assert!(path("$.tags", vec![op("contains", json!("b"))]).eval(&b));
        assert!(!path("$.tags", vec![op("contains", json!("c"))]).eval(&b));
        assert!(!path("$.n", vec![op("contains", json!("5"))]).eval(&b));
    }

    #[test]
    fn multi_value_selection_holds_if_any_value_does() {
        let b = body();
        let c = path(
            "$.commits[*].modified[*]",
            vec![op("contains", json!("deploy/"))],
        );
        assert!(c.eval(&b));
        let c = path(
            "$.commits[*].modified[*]",
            vec![op("equals", json!("README.md"))],
        );
        assert!(c.eval(&b));
        let c = path(
            "$.commits[*].modified[*]",
            vec![op("contains", json!("nope"))],
        );
        assert!(!c.eval(&b));
        let err = c.explain(&b).unwrap_err();
        assert!(err.contains("src/x.rs"), "{err}");
    }

    #[test]
    fn comparisons() {
        let b = body();
        assert!(path("$.n", vec![op("gt", json!(4))]).eval(&b));
        assert!(!path("$.n", vec![op("gt", json!(5))]).eval(&b));
        assert!(path("$.n", vec![op("gte", json!(5))]).eval(&b));
        assert!(path("$.f", vec![op("lt", json!(3))]).eval(&b));
        assert!(path("$.f", vec![op("lte", json!(2.5))]).eval(&b));
        assert!(!path("$.ref", vec![op("gt", json!(1))]).eval(&b));
        assert!(path("$.ref", vec![op("gt", json!("refs/a"))]).eval(&b));
        // Several operators on one path must all hold.
        assert!(path("$.n", vec![op("gte", json!(1)), op("lte", json!(10))]).eval(&b));
        assert!(!path("$.n", vec![op("gte", json!(1)), op("lte", json!(4))]).eval(&b));
    }

    #[test]
    fn combinators_and_explanations() {
        let b = body();
        let yes = path("$.n", vec![op("equals", json!(5))]);
        let no = path("$.n", vec![op("equals", json!(6))]);
        assert!(Condition::Any(vec![no.clone(), yes.clone()]).eval(&b));
        assert!(!Condition::All(vec![no.clone(), yes.clone()]).eval(&b));
        assert!(Condition::Not(Box::new(no.clone())).eval(&b));
        assert!(!Condition::Not(Box::new(yes.clone())).eval(&b));
        let why = Condition::All(vec![yes.clone(), no.clone()])
            .explain(&b)
            .unwrap_err();
        assert_eq!(why, "$.n equals 6: saw 5");
        let why = Condition::Not(Box::new(yes)).explain(&b).unwrap_err();
        assert!(why.starts_with("`not` failed"), "{why}");
        let why = Condition::Any(vec![no]).explain(&b).unwrap_err();
        assert!(why.starts_with("none of `any` held"), "{why}");
    }

    #[test]
    fn operand_errors() {
        assert!(Op::compile("regex", &json!("((")).is_err());
        assert!(Op::compile("in", &json!("x")).is_err());
        assert!(Op::compile("exists", &json!("yes")).is_err());
        assert!(Op::compile("gt", &json!([1])).is_err());
        assert!(Op::compile("nope", &json!(1)).is_err());
        assert!(compile_path("$..[").is_err());
        assert!(compile_path("ref").is_err());
    }

    #[test]
    fn operand_errors_read_on_one_line() {
        let err = Op::compile("regex", &json!("^acme/(api")).unwrap_err();
        assert_eq!(err, r#"invalid regex "^acme/(api": unclosed group"#);
        let err = compile_path("$.commits[").unwrap_err();
        assert_eq!(err, "invalid JSONPath: expected selector at character 11");
        let err = Op::compile("endswith", &json!("x")).unwrap_err();
        assert!(
            err.starts_with("unknown operator `endswith` (expected one of equals,"),
            "{err}"
        );
    }
}
