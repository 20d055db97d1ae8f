//! The repository's paths and the rule files of `tests/fixtures/operate/`.
//!
//! Those rule files are copied into a fresh folder per test, so a test can
//! edit them while the server runs. Their rules log
//! `<rule>-fired[<event id>]`, so the log tells which rule ran for which
//! event.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use super::{Answer, Receiver};

/// The repository root, for `rules/` and `tests/fixtures/`.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// Copy `tests/fixtures/operate/<from>` to `dir/<to>`, replacing each
/// `(placeholder, value)`.
pub fn install(dir: &Path, from: &str, to: &str, replace: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(fixture(&format!("operate/{from}")))
        .unwrap_or_else(|e| panic!("read fixture operate/{from}: {e}"));
    for (k, v) in replace {
        text = text.replace(k, v);
    }
    super::write(dir, to, &text)
}

/// `line:col` of the JSONPath that does not parse in `extra-broken.yaml`.
pub fn bad_jsonpath_place(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read");
    let (line, col) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("$.commits[").map(|c| (i + 1, c + 1)))
        .expect("the bad JSONPath is in the fixture");
    format!("{line}:{col}")
}

/// A receiver that answers 200 after `delay`, and `drain.yaml` pointed at it
/// in a fresh folder.
pub fn slow_drain(delay: Duration) -> (Receiver, TempDir, PathBuf) {
    let receiver = Receiver::answering(Answer::status(200).delay(delay).echo(false));
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(
        dir.path(),
        "drain.yaml",
        "drain.yaml",
        &[("@RECEIVER@", &receiver.url(""))],
    );
    (receiver, dir, rules)
}
