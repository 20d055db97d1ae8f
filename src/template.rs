//! minijinja templates: parsed when rules load, rendered per delivery.
//!
//! Owns the template environment and its policy:
//! - Undefined values are **strict**: printing or iterating a value that
//!   does not exist, or reading an attribute of one, is a render error (the
//!   delivery fails with a message naming it) rather than an empty string
//!   quietly reaching a shell argument or a URL. Testing one is allowed, so
//!   optional fields are written `{{ x | default('none') }}`, `{% if x %}`,
//!   or `{{ a.b if a else 'none' }}`.
//! - Templates see only the context they are given (`body`, `headers`,
//!   `query`, `event`, `rule`, `failure`). There is no loader, so `include`
//!   and `import` fail, and no function reads files or the environment.
//! - Rendering is bounded by a fuel limit, so a template loop cannot stall a
//!   worker.
//!
//! Parse errors (`TemplateError::Parse`, at load) are kept apart from render
//! errors (`TemplateError::Render`, per event).

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use minijinja::{Environment, UndefinedBehavior};
use regex::Regex;
use serde_json::Value;

use crate::providers::Origin;

/// Work a single render may do before it is stopped.
const FUEL: u64 = 200_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("invalid template: {0}")]
    Parse(String),
    #[error("template failed: {0}")]
    Render(String),
}

/// A handle to a compiled template.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// No template syntax: used as is, with no render cost.
    Literal(String),
    /// Rendered to a string.
    Text(String),
    /// Exactly one `{{ expression }}`: keeps the value's JSON type.
    Typed(String),
}

/// A JSON body whose string leaves are templates.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonTemplate {
    Static(Value),
    /// A string leaf: `Typed` keeps the expression's JSON type.
    Leaf(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
    /// The whole body is one template string; its output must be JSON.
    Whole(Template),
}

/// Every template of a rule set, compiled once.
pub struct Templates {
    env: Environment<'static>,
    count: usize,
    /// Where each template was written, so a render error found by `check`
    /// points at it.
    origins: HashMap<String, Origin>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Templates({})", self.count)
    }
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

fn single_expression(src: &str) -> Option<&str> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^\s*\{\{-?(.*?)-?\}\}\s*$").unwrap_or_else(|_| unreachable!())
    });
    let inner = re.captures(src)?.get(1)?.as_str();
    (!inner.contains("}}") && !inner.contains("{{") && !inner.contains("{%")).then_some(inner)
}

fn has_syntax(src: &str) -> bool {
    src.contains("{{") || src.contains("{%") || src.contains("{#")
}

impl Templates {
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        // Outputs go to URLs, JSON and argv, never to HTML.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        Templates {
            env,
            count: 0,
            origins: HashMap::new(),
        }
    }

    /// Remember where `t` was written. A literal has nothing to render, so
    /// it cannot fail and is not recorded.
    pub fn set_origin(&mut self, t: &Template, origin: Origin) {
        if let Template::Text(id) | Template::Typed(id) = t {
            self.origins.insert(id.clone(), origin);
        }
    }

    /// Where `t` was written, when the compiler recorded it.
    pub fn origin(&self, t: &Template) -> Option<&Origin> {
        match t {
            Template::Literal(_) => None,
            Template::Text(id) | Template::Typed(id) => self.origins.get(id),
        }
    }

    fn add(&mut self, src: String) -> Result<String, TemplateError> {
        let name = format!("t{}", self.count);
        self.env
            .add_template_owned(name.clone(), src)
            .map_err(|e| TemplateError::Parse(describe(&e)))?;
        self.count += 1;
        Ok(name)
    }

    /// Compile a template rendered to a string.
    ///
    /// # Errors
    /// `TemplateError::Parse` with minijinja's message.
    pub fn compile(&mut self, src: &str) -> Result<Template, TemplateError> {
        if !has_syntax(src) {
            return Ok(Template::Literal(src.to_owned()));
        }
        self.add(src.to_owned()).map(Template::Text)
    }

    /// Compile a JSON leaf: a string that is exactly one `{{ expression }}`
    /// keeps the expression's type; anything else renders to a string.
    ///
    /// # Errors
    /// `TemplateError::Parse` with minijinja's message.
    pub fn compile_typed(&mut self, src: &str) -> Result<Template, TemplateError> {
        match single_expression(src) {
            Some(expr) => {
                // Parse the expression alone first so the error names it.
                self.env
                    .compile_expression(expr)
                    .map_err(|e| TemplateError::Parse(describe(&e)))?;
                self.add(format!("{{{{ ({expr}) | tojson }}}}"))
                    .map(Template::Typed)
            }
            None => self.compile(src),
        }
    }

    /// Whether `t` reads the top-level variable `name` (such as `result`,
    /// which only some contexts have). A parse of the stored source, so for
    /// reports, not for every render.
    pub fn uses(&self, t: &Template, name: &str) -> bool {
        match t {
            Template::Literal(_) => false,
            Template::Text(id) | Template::Typed(id) => self
                .env
                .get_template(id)
                .is_ok_and(|tpl| tpl.undeclared_variables(false).contains(name)),
        }
    }

    /// Render to a string.
    ///
    /// # Errors
    /// `TemplateError::Render` naming what failed (an undefined value, a
    /// filter error, exhausted fuel).
    pub fn render(&self, t: &Template, ctx: &minijinja::Value) -> Result<String, TemplateError> {
        match t {
            Template::Literal(s) => Ok(s.clone()),
            Template::Text(name) | Template::Typed(name) => self
                .env
                .get_template(name)
                .and_then(|tpl| tpl.render(ctx))
                .map_err(|e| TemplateError::Render(describe(&e))),
        }
    }

    /// Render to a JSON value: `Typed` templates keep their type, others are
    /// strings.
    ///
    /// # Errors
    /// As `render`, or when a typed template does not produce JSON.
    pub fn render_value(
        &self,
        t: &Template,
        ctx: &minijinja::Value,
    ) -> Result<Value, TemplateError> {
        let text = self.render(t, ctx)?;
        match t {
            Template::Typed(_) => serde_json::from_str(&text)
                .map_err(|e| TemplateError::Render(format!("not JSON: {e}"))),
            _ => Ok(Value::String(text)),
        }
    }

    /// Render a JSON body.
    ///
    /// # Errors
    /// As `render`; a `Whole` template whose output is not JSON fails too.
    pub fn render_json(
        &self,
        t: &JsonTemplate,
        ctx: &minijinja::Value,
    ) -> Result<Value, TemplateError> {
        match t {
            JsonTemplate::Static(v) => Ok(v.clone()),
            JsonTemplate::Leaf(t) => self.render_value(t, ctx),
            JsonTemplate::Array(items) => items
                .iter()
                .map(|i| self.render_json(i, ctx))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            JsonTemplate::Object(entries) => entries
                .iter()
                .map(|(k, v)| Ok((k.clone(), self.render_json(v, ctx)?)))
                .collect::<Result<serde_json::Map<_, _>, TemplateError>>()
                .map(Value::Object),
            JsonTemplate::Whole(t) => {
                let value = self.render_value(t, ctx)?;
                // `"{{ body | tojson }}"` yields a JSON text; parse it so the
                // body is that JSON, not a string containing it.
                match value {
                    Value::String(text) => serde_json::from_str(&text).map_err(|e| {
                        TemplateError::Render(format!("`json` template did not render JSON: {e}"))
                    }),
                    other => Ok(other),
                }
            }
        }
    }
}

/// minijinja's message and detail, without the internal template name
/// (`t12`) its `Display` appends; the line is kept when the template spans
/// several.
fn describe(e: &minijinja::Error) -> String {
    let mut msg = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line()
        && line > 1
    {
        msg.push_str(&format!(" (line {line} of the template)"));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> minijinja::Value {
        minijinja::Value::from(minijinja::value::Serde(json!({
            "body": {"repo": "acme/api", "amount": 1200, "after": "abcdef123456", "obj": {"a": [1, 2]}},
            "event": {"id": "e1", "type": "push"},
        })))
    }

    #[test]
    fn literal_needs_no_engine() {
        let mut t = Templates::new();
        let tpl = t.compile("plain text").unwrap();
        assert_eq!(tpl, Template::Literal("plain text".into()));
        assert_eq!(t.render(&tpl, &ctx()).unwrap(), "plain text");
    }

    #[test]
    fn renders_fields_and_slices() {
        let mut t = Templates::new();
        let tpl = t
            .compile("deploy {{ body.repo }}@{{ body.after[:7] }}")
            .unwrap();
        assert_eq!(t.render(&tpl, &ctx()).unwrap(), "deploy acme/api@abcdef1");
    }

    #[test]
    fn undefined_is_strict() {
        let mut t = Templates::new();
        let tpl = t.compile("x={{ body.missing }}").unwrap();
        let err = t.render(&tpl, &ctx()).unwrap_err();
        assert!(matches!(err, TemplateError::Render(_)), "{err}");
        let tpl = t.compile("x={{ body.missing | default('none') }}").unwrap();
        assert_eq!(t.render(&tpl, &ctx()).unwrap(), "x=none");
        let tpl = t.compile("x={{ body.missing.deeper }}").unwrap();
        assert!(t.render(&tpl, &ctx()).is_err());
        let tpl = t
            .compile("x={{ body.missing.deeper if body.missing else 'none' }}")
            .unwrap();
        assert_eq!(t.render(&tpl, &ctx()).unwrap(), "x=none");
    }

    #[test]
    fn no_file_or_environment_access() {
        let mut t = Templates::new();
        let tpl = t.compile("{{ env }}").unwrap();
        assert!(t.render(&tpl, &ctx()).is_err());
        let tpl = t.compile("{% include '/etc/passwd' %}").unwrap();
        assert!(t.render(&tpl, &ctx()).is_err());
    }

    #[test]
    fn parse_errors_are_reported_at_load() {
        let mut t = Templates::new();
        let err = t.compile("{{ body.repo ").unwrap_err();
        assert!(matches!(err, TemplateError::Parse(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "invalid template: syntax error: unexpected end of input, expected end of variable block"
        );
        let err = t.compile("line one\n{{ body.repo }\n").unwrap_err();
        assert!(
            err.to_string().ends_with(" (line 2 of the template)"),
            "{err}"
        );
        let tpl = t.compile("x={{ body.missing }}").unwrap();
        let err = t.render(&tpl, &ctx()).unwrap_err().to_string();
        assert!(!err.contains("(in t"), "{err}");
        assert!(t.compile_typed("{{ body. }}").is_err());
    }

    #[test]
    fn typed_leaves_keep_json_types() {
        let mut t = Templates::new();
        let jt = JsonTemplate::Object(vec![
            (
                "amount".into(),
                JsonTemplate::Leaf(t.compile_typed("{{ body.amount }}").unwrap()),
            ),
            (
                "obj".into(),
                JsonTemplate::Leaf(t.compile_typed("{{ body.obj }}").unwrap()),
            ),
            (
                "s".into(),
                JsonTemplate::Leaf(t.compile_typed("n={{ body.amount }}").unwrap()),
            ),
            ("k".into(), JsonTemplate::Static(json!(3))),
        ]);
        let out = t.render_json(&jt, &ctx()).unwrap();
        assert_eq!(
            out,
            json!({"amount": 1200, "obj": {"a": [1, 2]}, "s": "n=1200", "k": 3})
        );
    }

    #[test]
    fn whole_json_template() {
        let mut t = Templates::new();
        let jt = JsonTemplate::Whole(t.compile_typed("{{ body | tojson }}").unwrap());
        let out = t.render_json(&jt, &ctx()).unwrap();
        assert_eq!(out["repo"], "acme/api");
        let jt = JsonTemplate::Whole(t.compile_typed("{{ body }}").unwrap());
        assert_eq!(t.render_json(&jt, &ctx()).unwrap()["amount"], 1200);
        let jt = JsonTemplate::Whole(t.compile_typed("not {{ body.repo }}").unwrap());
        assert!(t.render_json(&jt, &ctx()).is_err());
    }

    #[test]
    fn uses_names_the_variables_a_template_reads() {
        let mut t = Templates::new();
        let tpl = t.compile("{{ result.json.x }} {{ body.a }}").unwrap();
        assert!(t.uses(&tpl, "result"));
        assert!(t.uses(&tpl, "body"));
        assert!(!t.uses(&tpl, "files"));
        let tpl = t.compile_typed("{{ result is defined }}").unwrap();
        assert!(t.uses(&tpl, "result"));
        let tpl = t
            .compile("{% set result = 1 %}{{ result }} {{ files['a'] }}")
            .unwrap();
        assert!(!t.uses(&tpl, "result"), "a variable set inside is not read");
        assert!(t.uses(&tpl, "files"));
        assert!(!t.uses(&Template::Literal("{{ result }}".into()), "result"));
    }

    #[test]
    fn runaway_loops_run_out_of_fuel() {
        let mut t = Templates::new();
        let tpl = t
            .compile(
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            )
            .unwrap();
        assert!(t.render(&tpl, &ctx()).is_err());
    }
}
