//! Compiling the burst and budget controls: the top-level `limits:`, and a
//! rule's `delay:`, `debounce:` and `limit:` (names from `limits:` or
//! inline `{ key, rate, over }`), into the rule's `Controls`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_saphyr::Spanned;

use super::{Compiler, Ctx, base_of, valid_name};
use crate::config::node::{Kind, Node, Pos};
use crate::config::raw::{LimitConfig, RuleConfig};
use crate::providers::Origin;
use crate::rules::{Controls, Debounce, Limit, OVER, Over, Rate};
use crate::template::Template;

/// The named limits of every file: the limit, or `None` when its
/// definition had errors (a rule naming it is then not told it is
/// unknown), with where it was defined.
pub(super) type NamedLimits = HashMap<String, (Option<Arc<Limit>>, Origin)>;

impl Compiler {
    pub(super) fn named_limits(&mut self, file: &Path, limits: &[LimitConfig]) {
        let ctx = Ctx {
            file,
            base: base_of(file),
            owner: None,
        };
        for l in limits {
            let name = l.name.value.clone();
            let pos = Pos::of(&l.name);
            if !valid_name(&name) {
                self.error(
                    &ctx,
                    pos,
                    format!("limit {name:?}: a limit name may use only letters, digits, `-`, `_` and `.`"),
                );
            }
            if let Some((_, first)) = self.limits.get(&name) {
                let msg = format!("limit {name:?}: duplicate limit name, first defined at {first}");
                self.error(&ctx, pos, msg);
                continue;
            }
            let errors = self.diags.errors.len();
            let key = l.key.as_ref().and_then(|k| self.template_spanned(&ctx, k));
            let rate = self.rate(&ctx, &l.rate.value, Pos::of(&l.rate), Some(&name));
            let over = self.over(&ctx, &l.over.value, Pos::of(&l.over), Some(&name));
            let limit = match (rate, over) {
                (Some(rate), Some(over)) if self.diags.errors.len() == errors => {
                    Some(Arc::new(Limit {
                        id: format!("n:{name}"),
                        name: Some(name.clone()),
                        key,
                        rate,
                        over,
                    }))
                }
                _ => None,
            };
            self.limits.insert(name, (limit, ctx.origin(pos)));
        }
    }

    /// The rule's `delay:`, `debounce:` and `limit:`; `None` when it has
    /// none (or they had errors, which are recorded).
    pub(super) fn controls(&mut self, ctx: &Ctx<'_>, r: &RuleConfig) -> Option<Box<Controls>> {
        let delay = r.delay.as_ref().and_then(|d| self.duration(ctx, d));
        let debounce = r.debounce.as_ref().and_then(|d| {
            let key = self.template_spanned(ctx, &d.key);
            let quiet = self.duration(ctx, &d.quiet);
            let max_wait = self.duration(ctx, &d.max_wait);
            let (quiet, max_wait) = (quiet?, max_wait?);
            if quiet.is_zero() {
                self.error(ctx, Pos::of(&d.quiet), "`debounce.quiet` must be longer than 0s");
                return None;
            }
            if max_wait < quiet {
                let msg = format!(
                    "`debounce.max_wait` ({}) is shorter than `quiet` ({}): a burst could never be quiet that long",
                    d.max_wait.value.trim(),
                    d.quiet.value.trim()
                );
                self.error(ctx, Pos::of(&d.max_wait), msg);
                return None;
            }
            Some(Debounce {
                key: key?,
                quiet,
                max_wait,
            })
        });
        let limits = r
            .limit
            .as_ref()
            .map(|node| self.rule_limits(ctx, &r.name, node))
            .unwrap_or_default();
        if delay.is_none() && debounce.is_none() && limits.is_empty() {
            return None;
        }
        Some(Box::new(Controls {
            delay,
            debounce,
            limits,
        }))
    }

    fn rule_limits(
        &mut self,
        ctx: &Ctx<'_>,
        rule: &Spanned<String>,
        node: &Node,
    ) -> Vec<Arc<Limit>> {
        let Kind::Seq(items) = &node.kind else {
            let msg = format!(
                "`limit` must be a list of limit names or {{ key, rate, over }}, found {}",
                node.type_name()
            );
            self.error(ctx, node.pos, msg);
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match &item.kind {
                Kind::Str(name) => match self.limits.get(name) {
                    Some((Some(l), _)) => out.push(Arc::clone(l)),
                    Some((None, _)) => {}
                    None => {
                        let mut known: Vec<&str> = self.limits.keys().map(String::as_str).collect();
                        known.sort_unstable();
                        let defined = if known.is_empty() {
                            "none; add it under top-level `limits:`".to_owned()
                        } else {
                            known.join(", ")
                        };
                        let msg =
                            format!("`limit` names unknown limit {name:?} (defined: {defined})");
                        self.error(ctx, item.pos, msg);
                    }
                },
                Kind::Map(entries) => {
                    if let Some(l) = self.inline_limit(ctx, &rule.value, i, item.pos, entries) {
                        out.push(Arc::new(l));
                    }
                }
                _ => {
                    let msg = format!(
                        "a `limit` entry must be a limit name or {{ key, rate, over }}, found {}",
                        item.type_name()
                    );
                    self.error(ctx, item.pos, msg);
                }
            }
        }
        out
    }

    fn inline_limit(
        &mut self,
        ctx: &Ctx<'_>,
        rule: &str,
        index: usize,
        pos: Pos,
        entries: &[(Node, Node)],
    ) -> Option<Limit> {
        let (mut key, mut rate, mut over): (Option<Template>, Option<Rate>, Option<Over>) =
            (None, None, None);
        let mut ok = true;
        for (k, v) in entries {
            let field = k.key_text();
            let Some(text) = v.as_str().map(str::to_owned).or_else(|| match &v.kind {
                Kind::Int(n) => Some(n.to_string()),
                _ => None,
            }) else {
                let msg = format!("`limit.{field}` must be a string, found {}", v.type_name());
                self.error(ctx, v.pos, msg);
                ok = false;
                continue;
            };
            match field.as_str() {
                "key" => {
                    key = self.template(ctx, &text, v.pos);
                    ok &= key.is_some();
                }
                "rate" => {
                    rate = self.rate(ctx, &text, v.pos, None);
                    ok &= rate.is_some();
                }
                "over" => {
                    over = self.over(ctx, &text, v.pos, None);
                    ok &= over.is_some();
                }
                other => {
                    let msg =
                        format!("unknown field `{other}` in `limit` (expected key, rate, over)");
                    self.error(ctx, k.pos, msg);
                    ok = false;
                }
            }
        }
        if ok && rate.is_none() {
            self.error(ctx, pos, "an inline `limit` needs `rate` (e.g. 5/h)");
            ok = false;
        }
        if ok && over.is_none() {
            self.error(
                ctx,
                pos,
                "an inline `limit` needs `over: drop` or `over: delay`",
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        Some(Limit {
            id: format!("r:{rule}:{index}"),
            name: None,
            key,
            rate: rate?,
            over: over?,
        })
    }

    fn rate(&mut self, ctx: &Ctx<'_>, text: &str, pos: Pos, limit: Option<&str>) -> Option<Rate> {
        let text = self.expand(ctx, text, pos)?;
        match Rate::parse(&text) {
            Ok(r) => Some(r),
            Err(msg) => {
                let msg = match limit {
                    Some(name) => format!("limit {name:?}: {msg}"),
                    None => msg,
                };
                self.error(ctx, pos, msg);
                None
            }
        }
    }

    fn over(&mut self, ctx: &Ctx<'_>, text: &str, pos: Pos, limit: Option<&str>) -> Option<Over> {
        match text.trim() {
            "drop" => Some(Over::Drop),
            "delay" => Some(Over::Delay),
            other => {
                let prefix = limit.map(|n| format!("limit {n:?}: ")).unwrap_or_default();
                let msg = format!(
                    "{prefix}`over` must be one of {}, found {other:?}",
                    OVER.join(", ")
                );
                self.error(ctx, pos, msg);
                None
            }
        }
    }
}
