//! Compiling a `tests:` entry (an example request and the rules it must
//! match, with checks on their rendered actions), checking that the source
//! and rules it names exist and that every check can be evaluated.

use std::path::Path;

use serde_json::Value;

use super::{Compiler, Ctx, base_of};
use crate::config::diag::Owner;
use crate::config::node::{Kind, Node, Pos};
use crate::config::raw::TestConfig;
use crate::rules::{ActionType, Check, ExpectedAction, ExpectedActions, FieldCheck, RuleTest};

impl Compiler {
    pub(super) fn test(&mut self, file: &Path, t: &TestConfig) {
        let ctx = Ctx {
            file,
            base: base_of(file),
            owner: Some(Owner::Test(t.name.value.clone())),
        };
        let mut ok = true;
        if !self.source_names.contains_key(&t.source.value) {
            let msg = format!("unknown source {:?}", t.source.value);
            self.error(&ctx, Pos::of(&t.source), msg);
            ok = false;
        }
        let mut expect = Vec::new();
        let mut expect_actions = Vec::new();
        for e in &t.expect {
            let Some((name, name_pos, actions)) = self.expect_entry(&ctx, e) else {
                ok = false;
                continue;
            };
            if !self.rule_names.contains_key(&name) {
                let msg = format!("expects unknown rule {name:?}");
                self.error(&ctx, name_pos, msg);
                ok = false;
                continue;
            }
            if let Some(actions) = actions {
                expect_actions.push(ExpectedActions {
                    rule: name.clone(),
                    actions,
                });
            }
            expect.push(name);
        }
        if !ok {
            return;
        }
        self.tests.push(RuleTest {
            name: t.name.value.clone(),
            source: t.source.value.clone(),
            headers: t
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            query: t
                .query
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            body: t
                .body
                .as_ref()
                .map_or(Value::Object(Default::default()), Node::to_json),
            expect,
            expect_actions,
            origin: ctx.origin(Pos::of(&t.name)),
        });
    }

    /// A rule name, or `{ rule, actions }`: the name, where it is written,
    /// and the action checks if any. `None` after reporting an error.
    fn expect_entry(
        &mut self,
        ctx: &Ctx<'_>,
        e: &Node,
    ) -> Option<(String, Pos, Option<Vec<ExpectedAction>>)> {
        let entries = match &e.kind {
            Kind::Str(name) => return Some((name.clone(), e.pos, None)),
            Kind::Map(entries) => entries,
            _ => {
                let msg = format!(
                    "an `expect:` entry is a rule name or {{ rule, actions }}, not {}",
                    e.type_name()
                );
                self.error(ctx, e.pos, msg);
                return None;
            }
        };
        let (mut rule, mut actions) = (None, None);
        let mut ok = true;
        for (k, v) in entries {
            match k.key_text().as_str() {
                "rule" => match v.as_str() {
                    Some(name) => rule = Some((name.to_owned(), v.pos)),
                    None => {
                        self.error(ctx, v.pos, "`rule` is a rule's name");
                        ok = false;
                    }
                },
                "actions" => match &v.kind {
                    Kind::Seq(items) => {
                        let out: Vec<Option<ExpectedAction>> =
                            items.iter().map(|i| self.expect_action(ctx, i)).collect();
                        actions = out.into_iter().collect::<Option<Vec<_>>>();
                        ok &= actions.is_some();
                    }
                    _ => {
                        self.error(ctx, v.pos, "`actions` is a list, one entry per action");
                        ok = false;
                    }
                },
                other => {
                    let msg = format!("unknown field `{other}`; expected `rule` or `actions`");
                    self.error(ctx, k.pos, msg);
                    ok = false;
                }
            }
        }
        let Some((name, pos)) = rule else {
            self.error(ctx, e.pos, "missing `rule`");
            return None;
        };
        ok.then_some((name, pos, Some(actions.unwrap_or_default())))
    }

    /// `{ shell | http | log | cancel: { field: assertion, … } }`.
    fn expect_action(&mut self, ctx: &Ctx<'_>, node: &Node) -> Option<ExpectedAction> {
        let single = match &node.kind {
            Kind::Map(entries) if entries.len() == 1 => entries.first(),
            _ => None,
        };
        let Some((k, fields)) = single else {
            self.error(
                ctx,
                node.pos,
                "an expected action is one of `shell:`, `http:`, `log:`, `cancel:` with the fields to check",
            );
            return None;
        };
        let kind = match k.key_text().as_str() {
            "shell" => ActionType::Shell,
            "http" => ActionType::Http,
            "log" => ActionType::Log,
            "cancel" => ActionType::Cancel,
            other => {
                let msg = format!(
                    "unknown action type `{other}`; expected `shell`, `http`, `log` or `cancel`"
                );
                self.error(ctx, k.pos, msg);
                return None;
            }
        };
        let entries: &[(Node, Node)] = match &fields.kind {
            Kind::Map(entries) => entries,
            Kind::Null => &[],
            _ => {
                self.error(ctx, fields.pos, "the fields to check are a mapping");
                return None;
            }
        };
        let mut checks = Vec::new();
        let mut ok = true;
        for (name, value) in entries {
            let field = name.key_text();
            if !field_known(kind, &field) {
                let msg = format!(
                    "`{field}` is not a field of a {kind} action; expected {}",
                    fields_of(kind)
                );
                self.error(ctx, name.pos, msg);
                ok = false;
                continue;
            }
            match self.assertion(ctx, value) {
                Some(check) => checks.push(FieldCheck {
                    field,
                    check,
                    origin: ctx.origin(name.pos),
                }),
                None => ok = false,
            }
        }
        ok.then(|| ExpectedAction {
            kind,
            fields: checks,
            origin: ctx.origin(node.pos),
        })
    }

    /// A bare value (`equals`), or one of `{ equals | contains | regex }`.
    fn assertion(&mut self, ctx: &Ctx<'_>, node: &Node) -> Option<Check> {
        let text = |n: &Node| match &n.kind {
            Kind::Str(_) | Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) => Some(n.key_text()),
            _ => None,
        };
        if let Some(t) = text(node) {
            return Some(Check::Equals(t));
        }
        let single = match &node.kind {
            Kind::Map(entries) if entries.len() == 1 => entries.first(),
            _ => None,
        };
        let Some((k, v)) = single else {
            self.error(
                ctx,
                node.pos,
                "an assertion is a text (equals) or one of { equals | contains | regex: text }",
            );
            return None;
        };
        let Some(value) = text(v) else {
            self.error(
                ctx,
                v.pos,
                format!("expected a text, found {}", v.type_name()),
            );
            return None;
        };
        match k.key_text().as_str() {
            "equals" => Some(Check::Equals(value)),
            "contains" => Some(Check::Contains(value)),
            "regex" => match regex::Regex::new(&value) {
                Ok(re) => Some(Check::Regex(re)),
                Err(e) => {
                    let why = crate::condition::regex_error(&e);
                    self.error(ctx, v.pos, format!("invalid regex {value:?}: {why}"));
                    None
                }
            },
            other => {
                let msg = format!(
                    "unknown assertion `{other}`; expected `equals`, `contains` or `regex`"
                );
                self.error(ctx, k.pos, msg);
                None
            }
        }
    }
}

/// Whether a rendered action of type `kind` has `field`.
fn field_known(kind: ActionType, field: &str) -> bool {
    let named = |prefix: &str| {
        field
            .strip_prefix(prefix)
            .is_some_and(|name| !name.is_empty())
    };
    match kind {
        ActionType::Shell => {
            field == "argv"
                || field == "stdin"
                || named("env.")
                || field
                    .strip_prefix("argv[")
                    .and_then(|rest| rest.strip_suffix(']'))
                    .is_some_and(|n| n.parse::<usize>().is_ok())
        }
        ActionType::Http => matches!(field, "method" | "url" | "body") || named("headers."),
        ActionType::Log => field == "line",
        ActionType::Cancel => matches!(field, "rule" | "key"),
    }
}

fn fields_of(kind: ActionType) -> &'static str {
    match kind {
        ActionType::Shell => "`argv`, `argv[N]`, `stdin` or `env.NAME`",
        ActionType::Http => "`method`, `url`, `headers.NAME` or `body`",
        ActionType::Log => "`line`",
        ActionType::Cancel => "`rule` or `key`",
    }
}
