//! Compiling `respond:` (on a rule or a source) and the warning when two
//! rules that can match one event both respond.
//!
//! The overlap test is static and conservative: it looks only at sources and
//! event patterns (never at `match:` or `when:`), so it warns whenever it
//! cannot rule out an event that both rules match.

use serde_saphyr::Spanned;

use super::{Compiler, Ctx};
use crate::config::diag::{Diagnostic, Owner};
use crate::config::node::Pos;
use crate::config::raw::RespondConfig;
use crate::rules::{EventPattern, HttpBody, Respond, Rule, SourceSel};

/// Headers the server frames the answer with itself; a template must not
/// contradict them.
const FRAMING: &[&str] = &["content-length", "transfer-encoding", "connection"];

impl Compiler {
    pub(super) fn respond(&mut self, ctx: &Ctx<'_>, r: &Spanned<RespondConfig>) -> Option<Respond> {
        let cfg = &r.value;
        let mut ok = true;
        let status = match &cfg.status {
            Some(s) if !(200..=299).contains(&s.value) => {
                let msg = format!(
                    "`respond.status` must be 2xx (the event was accepted), found {}",
                    s.value
                );
                self.error(ctx, Pos::of(s), msg);
                ok = false;
                0
            }
            Some(s) => s.value,
            None => 200,
        };
        let mut headers = Vec::new();
        for (name, value) in cfg.headers.iter().flatten() {
            let Ok(header) = http::HeaderName::from_bytes(name.as_bytes()) else {
                self.error(ctx, Pos::of(value), format!("invalid header name {name:?}"));
                ok = false;
                continue;
            };
            if FRAMING.contains(&header.as_str()) {
                let msg = format!("`respond` cannot set {name:?}: the server frames the answer");
                self.error(ctx, Pos::of(value), msg);
                ok = false;
                continue;
            }
            match self.template_spanned(ctx, value) {
                Some(t) => headers.push((header, t)),
                None => ok = false,
            }
        }
        let body = match (&cfg.json, &cfg.body) {
            (Some(_), Some(b)) => {
                self.error(ctx, Pos::of(b), "`json` and `body` are exclusive; keep one");
                ok = false;
                None
            }
            (Some(j), None) => {
                let body = self.json_body(ctx, j).map(HttpBody::Json);
                ok &= body.is_some();
                body
            }
            (None, Some(b)) => {
                let body = self.template_spanned(ctx, b).map(HttpBody::Raw);
                ok &= body.is_some();
                body
            }
            (None, None) => None,
        };
        // No body is allowed with these (RFC 9110 15.3.5 and 15.3.6).
        if body.is_some() && matches!(status, 204 | 205) {
            let pos = cfg.status.as_ref().map_or(Pos::of(r), Pos::of);
            let msg = format!("a {status} answer has no body; drop `json`/`body` or use 200");
            self.error(ctx, pos, msg);
            ok = false;
        }
        ok.then(|| Respond {
            status,
            headers,
            body,
            origin: ctx.origin(Pos::of(r)),
        })
    }

    /// Warns, at the later rule's `respond:`, for every two rules that both
    /// respond and can match one event: only the first answers.
    pub(super) fn check_respond_overlap(&mut self) {
        let responding: Vec<&Rule> = self.rules.iter().filter(|r| r.respond.is_some()).collect();
        let mut found = Vec::new();
        for (i, later) in responding.iter().enumerate() {
            for earlier in responding.iter().take(i) {
                if !can_overlap(earlier, later) {
                    continue;
                }
                let (Some(a), Some(b)) = (&earlier.respond, &later.respond) else {
                    continue;
                };
                let msg = format!(
                    "rule {:?} (respond at {}) and this rule both respond and can match the same event; only the first matched rule in load order answers, so this `respond` never does for such events",
                    earlier.name, a.origin
                );
                found.push(Diagnostic::new(
                    &b.origin.file,
                    Pos {
                        line: b.origin.line,
                        column: b.origin.column,
                    },
                    Some(&Owner::Rule(later.name.clone())),
                    msg,
                ));
            }
        }
        self.diags.warnings.extend(found);
    }
}

/// Whether some event could be matched by both rules, judging only by their
/// sources and event patterns.
fn can_overlap(a: &Rule, b: &Rule) -> bool {
    let sources = match (&a.sources, &b.sources) {
        (SourceSel::Any, _) | (_, SourceSel::Any) => true,
        (SourceSel::Named(x), SourceSel::Named(y)) => x.iter().any(|n| y.contains(n)),
    };
    sources
        && a.events
            .iter()
            .any(|p| b.events.iter().any(|q| patterns_overlap(p, q)))
}

/// Whether two event patterns can match one type. Every type a pattern
/// matches starts with its literal prefix, so two patterns whose prefixes
/// disagree are disjoint; anything else may overlap.
fn patterns_overlap(p: &EventPattern, q: &EventPattern) -> bool {
    match (p, q) {
        // `a` matches `a` and `a.…`: exact, not a plain string prefix.
        (EventPattern::Exact(x), EventPattern::Exact(y)) => {
            x == y || is_sub_type(x, y) || is_sub_type(y, x)
        }
        _ => {
            let (x, y) = (literal_prefix(p), literal_prefix(q));
            x.starts_with(y) || y.starts_with(x)
        }
    }
}

/// Whether `kind` is a sub-type of `parent` (`parent.…`).
fn is_sub_type(kind: &str, parent: &str) -> bool {
    kind.strip_prefix(parent)
        .is_some_and(|rest| rest.starts_with('.'))
}

fn literal_prefix(p: &EventPattern) -> &str {
    match p {
        EventPattern::Any => "",
        EventPattern::Exact(x) => x,
        EventPattern::Glob(g) => {
            let text = g.glob().glob();
            let end = text.find(['*', '?', '[', '{', '\\']).unwrap_or(text.len());
            text.get(..end).unwrap_or("")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(s: &str) -> EventPattern {
        EventPattern::Glob(globset::Glob::new(s).unwrap().compile_matcher())
    }

    #[test]
    fn overlap_is_judged_by_prefixes() {
        let exact = |s: &str| EventPattern::Exact(s.to_owned());
        assert!(patterns_overlap(&exact("a"), &exact("a")));
        assert!(patterns_overlap(&exact("a"), &exact("a.b")));
        assert!(!patterns_overlap(&exact("issue"), &exact("issues")));
        assert!(!patterns_overlap(&exact("push"), &exact("slash_command")));
        assert!(patterns_overlap(&EventPattern::Any, &exact("push")));
        assert!(patterns_overlap(
            &glob("charge.*"),
            &exact("charge.refunded")
        ));
        assert!(patterns_overlap(&glob("*.created"), &exact("push")));
        assert!(!patterns_overlap(&glob("charge.*"), &exact("invoice.paid")));
        assert!(!patterns_overlap(&glob("charge.*"), &glob("invoice.*")));
    }
}
