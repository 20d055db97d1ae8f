//! Loading and compiling 1,000 rules from YAML files (target: under 200 ms).
//!
//! The files are written once; each iteration reads, parses and compiles
//! them all, as `hookrouter serve` does at start and on reload.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hookrouter::config;

mod common;

fn load(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    common::write_rules(dir.path(), 1_000);
    let paths = vec![dir.path().to_path_buf()];
    let loaded = config::load(&paths).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(loaded.rules.rules.len(), 1_000);

    let mut group = c.benchmark_group("load");
    group.sample_size(20);
    group.bench_function("1000_rules", |b| {
        b.iter(|| config::load(black_box(&paths)).map(|l| l.rules.rules.len()));
    });
    group.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
