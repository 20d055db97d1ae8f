//! The `hookrouter` binary: parse the command line and hand over to `cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    hookrouter::cli::main()
}
