//! Rule files for the benchmarks: `n` rules spread over 100 sources and 100
//! event types, written once into a temporary directory.

use std::fmt::Write as _;
use std::path::Path;

pub const SOURCES: usize = 100;
pub const TYPES: usize = 100;
/// Rules per file, so a large set is several files as in a real deployment.
const PER_FILE: usize = 100;

/// Rule `i` listens to source `s{i % 100}` and type `t{(i / 100) % 100}`, so
/// every (source, type) pair gets `n / 10_000` rules (at least one for the
/// pair `s0`/`t0`) and the routed event always has a candidate to evaluate.
pub fn write_rules(dir: &Path, n: usize) {
    let mut sources = String::from("sources:\n");
    for s in 0..SOURCES {
        writeln!(
            sources,
            "  - name: s{s}\n    provider: github\n    secret: bench-secret-{s}"
        )
        .unwrap();
    }
    std::fs::write(dir.join("00-sources.yaml"), sources).unwrap();

    for (file, start) in (0..n).step_by(PER_FILE).enumerate() {
        let mut text = String::from("rules:\n");
        for i in start..(start + PER_FILE).min(n) {
            let source = i % SOURCES;
            let kind = (i / SOURCES) % TYPES;
            writeln!(
                text,
                "  - name: rule-{i}\n    source: s{source}\n    event: t{kind}\n    match:\n      $.ref: refs/heads/main\n      $.repository.private: {{ equals: false }}\n    actions:\n      - log: \"rule {i}: {{{{ body.repository.full_name }}}} {{{{ body.after[:7] }}}}\""
            )
            .unwrap();
        }
        std::fs::write(dir.join(format!("rules-{file:04}.yaml")), text).unwrap();
    }
}
