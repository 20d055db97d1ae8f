//! `hookrouter::fuzzing::condition` under libFuzzer; see `src/fuzzing.rs` for
//! the input layout and the invariants it checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hookrouter::fuzzing::condition(data));
