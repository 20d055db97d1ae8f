//! Compiling a `rules:` entry: its name, the sources and events it
//! listens to, its `match:` conditions, `when:` template and dedup key. Its
//! actions are compiled by `action`, its `respond:` by `respond`.

use std::path::Path;

use super::{Compiler, Ctx, base_of, valid_name};
use crate::condition::{self, Condition, Op, PathCondition};
use crate::config::diag::Owner;
use crate::config::node::{Kind, Node, Pos};
use crate::config::raw::RuleConfig;
use crate::rules::{Action, EventPattern, Rule, SourceSel};

impl Compiler {
    pub(super) fn rule(&mut self, file: &Path, r: &RuleConfig) {
        let name = r.name.value.clone();
        let ctx = Ctx {
            file,
            base: base_of(file),
            owner: Some(Owner::Rule(name.clone())),
        };
        let name_pos = Pos::of(&r.name);
        let errors_before = self.diags.errors.len();
        if !valid_name(&name) {
            self.error(
                &ctx,
                name_pos,
                "a rule name may use only letters, digits, `-`, `_` and `.`",
            );
        }
        if let Some(first) = self.rule_names.get(&name) {
            let msg = format!("duplicate rule name, first defined at {first}");
            self.error(&ctx, name_pos, msg);
        } else {
            self.rule_names.insert(name.clone(), ctx.origin(name_pos));
        }

        let sources = self.source_sel(&ctx, &r.source);
        let events = self.event_patterns(&ctx, r.event.as_ref());
        let condition = r.match_.as_ref().and_then(|m| self.match_block(&ctx, m));
        let dedup = r
            .dedup
            .as_ref()
            .and_then(|d| self.template_spanned(&ctx, d));
        let when = r.when.as_ref().and_then(|w| self.template_spanned(&ctx, w));
        if r.actions.is_empty() {
            self.error(&ctx, name_pos, "a rule needs at least one action");
        }
        let actions: Vec<Action> = r
            .actions
            .iter()
            .filter_map(|a| self.action(&ctx, a))
            .collect();
        let on_failure: Vec<Action> = r
            .on_failure
            .iter()
            .filter_map(|a| self.action(&ctx, a))
            .collect();
        let on_cancel: Vec<Action> = r
            .on_cancel
            .iter()
            .filter_map(|a| self.action(&ctx, a))
            .collect();
        let respond = r.respond.as_ref().and_then(|x| self.respond(&ctx, x));
        let controls = self.controls(&ctx, r);
        if self.diags.errors.len() > errors_before {
            return;
        }
        self.rules.push(Rule {
            name,
            sources,
            events,
            condition,
            dedup,
            when,
            actions,
            on_failure,
            on_cancel,
            respond,
            controls,
            origin: ctx.origin(name_pos),
        });
    }

    fn source_sel(&mut self, ctx: &Ctx<'_>, node: &Node) -> SourceSel {
        let items: Vec<&Node> = match &node.kind {
            Kind::Str(s) if s == "*" => return SourceSel::Any,
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut names = Vec::new();
        for item in items {
            match item.as_str() {
                Some("*") => return SourceSel::Any,
                Some(n) if self.source_names.contains_key(n) => names.push(n.to_owned()),
                Some(n) => {
                    let mut known: Vec<&str> =
                        self.source_names.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    let msg = format!("unknown source {n:?} (defined: {})", known.join(", "));
                    self.error(ctx, item.pos, msg);
                }
                None => {
                    let msg = format!(
                        "`source` must be a name, a list of names or \"*\", found {}",
                        item.type_name()
                    );
                    self.error(ctx, item.pos, msg);
                }
            }
        }
        SourceSel::Named(names)
    }

    fn event_patterns(&mut self, ctx: &Ctx<'_>, node: Option<&Node>) -> Vec<EventPattern> {
        let Some(node) = node else {
            return vec![EventPattern::Any];
        };
        let items: Vec<&Node> = match &node.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut out = Vec::new();
        for item in items {
            let Some(text) = item.as_str() else {
                let msg = format!(
                    "`event` must be a glob or a list of globs, found {}",
                    item.type_name()
                );
                self.error(ctx, item.pos, msg);
                continue;
            };
            if text == "*" || text == "**" {
                out.push(EventPattern::Any);
            } else if text.contains(['*', '?', '[', '{']) {
                match globset::Glob::new(text) {
                    Ok(g) => out.push(EventPattern::Glob(g.compile_matcher())),
                    Err(e) => {
                        let msg = format!("invalid event glob {text:?}: {}", e.kind());
                        self.error(ctx, item.pos, msg);
                    }
                }
            } else if text.is_empty() {
                self.error(ctx, item.pos, "an event pattern cannot be empty");
            } else {
                out.push(EventPattern::Exact(text.to_owned()));
            }
        }
        out
    }

    /// A `match:` mapping: every entry must hold.
    fn match_block(&mut self, ctx: &Ctx<'_>, node: &Node) -> Option<Condition> {
        let Kind::Map(entries) = &node.kind else {
            let msg = format!(
                "`match` must be a mapping of JSONPath to condition, found {}",
                node.type_name()
            );
            self.error(ctx, node.pos, msg);
            return None;
        };
        let mut all = Vec::new();
        let mut ok = true;
        for (key, value) in entries {
            match self.match_entry(ctx, key, value) {
                Some(c) => all.push(c),
                None => ok = false,
            }
        }
        ok.then_some(Condition::All(all))
    }

    fn match_entry(&mut self, ctx: &Ctx<'_>, key: &Node, value: &Node) -> Option<Condition> {
        let Some(k) = key.as_str() else {
            let msg = format!("a match key must be a string, found {}", key.type_name());
            self.error(ctx, key.pos, msg);
            return None;
        };
        match k {
            "all" | "any" => {
                let Kind::Seq(items) = &value.kind else {
                    let msg = format!(
                        "`{k}` needs a list of conditions, found {}",
                        value.type_name()
                    );
                    self.error(ctx, value.pos, msg);
                    return None;
                };
                let mut children = Vec::new();
                let mut ok = true;
                for item in items {
                    match self.match_block(ctx, item) {
                        Some(c) => children.push(c),
                        None => ok = false,
                    }
                }
                if !ok {
                    return None;
                }
                Some(if k == "all" {
                    Condition::All(children)
                } else {
                    Condition::Any(children)
                })
            }
            "not" => self
                .match_block(ctx, value)
                .map(|c| Condition::Not(Box::new(c))),
            path if path.starts_with('$') => {
                let query = match condition::compile_path(path) {
                    Ok(q) => Some(q),
                    Err(msg) => {
                        self.error(ctx, key.pos, format!("condition {path:?}: {msg}"));
                        None
                    }
                };
                let ops = self.operators(ctx, path, value)?;
                Some(Condition::Path(PathCondition {
                    path: path.to_owned(),
                    query: query?,
                    ops,
                }))
            }
            other => {
                let msg = format!(
                    "match key {other:?} is neither a JSONPath (start it with `$`) nor one of all, any, not"
                );
                self.error(ctx, key.pos, msg);
                None
            }
        }
    }

    /// A bare value means equals; a mapping lists operators, all of which
    /// must hold.
    fn operators(&mut self, ctx: &Ctx<'_>, path: &str, value: &Node) -> Option<Vec<Op>> {
        let Kind::Map(entries) = &value.kind else {
            return Some(vec![Op::Equals(value.to_json())]);
        };
        if entries.is_empty() {
            let msg = format!(
                "condition {path:?}: an empty mapping has no operator (write `equals: {{}}` to compare with an empty object)"
            );
            self.error(ctx, value.pos, msg);
            return None;
        }
        let mut ops = Vec::new();
        let mut ok = true;
        for (op_key, operand) in entries {
            let name = op_key.key_text();
            let pos = if condition::OPERATORS.contains(&name.as_str()) {
                operand.pos
            } else {
                op_key.pos
            };
            match Op::compile(&name, &operand.to_json()) {
                Ok(op) => ops.push(op),
                Err(msg) => {
                    self.error(ctx, pos, format!("condition {path:?}: {msg}"));
                    ok = false;
                }
            }
        }
        ok.then_some(ops)
    }
}
