//! Test support: run the real binary, talk to it over HTTP, and stand in for
//! the services its actions call.
//!
//! This module runs one-shot commands (`check`, `test`, `schema`) and
//! captures their output, and holds the small helpers every file uses
//! (temporary files, ids, the clock, polling). The rest is one submodule per
//! job, all re-exported here so tests name everything `support::…`:
//!
//! | module | what it holds |
//! |---|---|
//! | `browser` | `Browser`: headless Chromium through chromedriver, one at a time; CSP, console log, axe-core |
//! | `server` | `Server`: `hookrouter serve` on `127.0.0.1:0`, its log, signals, the admin listener |
//! | `client` | `request`/`get` and the `Resp` they return, header lists |
//! | `github` | signed requests: any provider's headers, the GitHub push most tests send |
//! | `receiver` | `Receiver`: a local HTTP server that records requests and answers from a script |
//! | `fixtures` | the repository's paths and the rule files under `tests/fixtures/operate/` |

#![allow(dead_code)]

mod browser;
mod client;
mod fixtures;
mod github;
mod receiver;
mod server;

pub use browser::*;
pub use client::*;
pub use fixtures::*;
pub use github::*;
pub use receiver::*;
pub use server::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_hookrouter");

/// Run the binary with `args`; never inherits HOOKROUTER_* from the caller.
pub fn run(args: &[&str]) -> Output {
    run_in(&root(), args)
}

pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("HOOKROUTER_RULES")
        .env_remove("RUST_LOG")
        .output()
        .expect("run hookrouter")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Write `text` to `dir/name`, creating folders.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Unix time in seconds.
pub fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("seconds")
}

/// A fresh id per call (`<tag>-<pid>-<n>`), so no two requests of a test
/// run share one by accident.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
