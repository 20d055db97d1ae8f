//! Integration tests: the real binary, real HTTP, real processes.

mod actions;
mod check;
mod crash;
mod dryrun;
mod fuzz_seeds;
mod operate;
mod providers;
mod schema;
mod serve;
mod standard_verifier;
mod support;
