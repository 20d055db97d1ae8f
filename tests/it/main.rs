//! Integration tests: the real binary, driven from outside.
