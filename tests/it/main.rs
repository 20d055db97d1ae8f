//! Integration tests: the real binary, real HTTP, real processes.

mod actions;
mod check;
mod crash;
mod dryrun;
mod fuzz_seeds;
mod hostile;
mod liveness;
mod operate;
mod providers;
mod schema;
mod serve;
mod soak;
mod standard_verifier;
mod support;
