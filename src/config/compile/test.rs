//! Compiling a `tests:` entry (an example request and the rules it must
//! match), checking that the source and rules it names exist.

use std::path::Path;

use serde_json::Value;

use super::{Compiler, Ctx, base_of};
use crate::config::diag::Owner;
use crate::config::node::{Node, Pos};
use crate::config::raw::TestConfig;
use crate::rules::RuleTest;

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
        for e in &t.expect {
            if !self.rule_names.contains_key(&e.value) {
                let msg = format!("expects unknown rule {:?}", e.value);
                self.error(&ctx, Pos::of(e), msg);
                ok = false;
            }
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
            expect: t.expect.iter().map(|e| e.value.clone()).collect(),
            origin: ctx.origin(Pos::of(&t.name)),
        });
    }
}
