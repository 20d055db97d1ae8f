//! Faults injected on purpose, so tests can watch the server fail the way it
//! would in production. Compiled only with debug assertions (the builds
//! `cargo test` runs); a release build has none of this and ignores the
//! variable.
//!
//! Owns `HOOKROUTER_FAULT`, read once:
//! - `writer-panic-after:N`: the store writer takes N event commits, then
//!   panics on receiving the next one.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const VAR: &str = "HOOKROUTER_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    WriterPanicAfter(u64),
}

fn fault() -> Fault {
    static FAULT: OnceLock<Fault> = OnceLock::new();
    *FAULT.get_or_init(|| parse(std::env::var(VAR).ok().as_deref()))
}

fn parse(value: Option<&str>) -> Fault {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Fault::None;
    };
    match value
        .strip_prefix("writer-panic-after:")
        .and_then(|n| n.parse().ok())
    {
        Some(n) => Fault::WriterPanicAfter(n),
        None => {
            tracing::warn!(value, "Unknown {VAR}; no fault injected.");
            Fault::None
        }
    }
}

/// Called by the store writer for each command it receives.
// Panicking the writer thread is the fault this injects.
#[allow(clippy::panic)]
pub fn writer_received(is_commit: bool) {
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    if let Fault::WriterPanicAfter(n) = fault()
        && is_commit
        && COMMITS.fetch_add(1, Ordering::Relaxed) >= n
    {
        panic!("fault injected by {VAR}: writer-panic-after:{n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_writer_fault() {
        assert_eq!(parse(None), Fault::None);
        assert_eq!(parse(Some("")), Fault::None);
        assert_eq!(
            parse(Some("writer-panic-after:3")),
            Fault::WriterPanicAfter(3)
        );
        assert_eq!(parse(Some("writer-panic-after:x")), Fault::None);
        assert_eq!(parse(Some("something-else")), Fault::None);
    }
}
