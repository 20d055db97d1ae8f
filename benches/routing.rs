//! Routing one event through rule sets of 10, 1,000 and 10,000 rules.
//!
//! The index narrows the rules to those of the event's source and type before
//! any condition runs, so the cost should barely grow with the rule count:
//! the target is that 10,000 rules cost at most twice what 10 do.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hookrouter::config;
use hookrouter::event::Event;
use serde_json::json;

mod common;

fn event() -> Event {
    Event {
        id: "evt_1".to_owned(),
        kind: "t0.created".to_owned(),
        source: "s0".to_owned(),
        provider: "github".to_owned(),
        received_at: "2025-01-01T00:00:00.000Z".to_owned(),
        headers: BTreeMap::from([("x-github-event".to_owned(), "t0".to_owned())]),
        query: BTreeMap::new(),
        body: json!({
            "ref": "refs/heads/main",
            "after": "0123456789abcdef0123456789abcdef01234567",
            "repository": {"full_name": "acme/api", "private": false},
            "commits": [{"id": "c1", "modified": ["src/lib.rs"]}],
        })
        .into(),
    }
}

fn routing(c: &mut Criterion) {
    let event = event();
    let mut group = c.benchmark_group("route");
    for n in [10, 1_000, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        common::write_rules(dir.path(), n);
        let loaded = config::load(&[dir.path().to_path_buf()]).unwrap_or_else(|d| panic!("{d}"));
        let rules = loaded.rules;
        assert_eq!(rules.rules.len(), n);
        let shared = std::sync::Arc::new(event.clone());
        let when_ctx = |rule: &hookrouter::rules::Rule| {
            hookrouter::actions::render::context(&shared, &rule.name, None)
        };
        let matched = rules.route(&event, when_ctx);
        assert!(!matched.is_empty(), "{n}: the event matches no rule");
        group.bench_with_input(BenchmarkId::from_parameter(n), &rules, |b, rules| {
            b.iter(|| rules.route(black_box(&event), when_ctx).len());
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
