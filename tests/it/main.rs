//! Integration tests: the real binary, real HTTP, real processes.

mod support;
