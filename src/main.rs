//! The `hookrouter` binary: parse the command line and hand over to `cli`.

// The same panic lints as the library (see `lib.rs`).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::process::ExitCode;

// The request path allocates many small, short-lived values (JSON, headers,
// store rows) across threads; mimalloc handles that pattern with far less
// contention than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    hookrouter::cli::main()
}
