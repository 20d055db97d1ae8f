//! hookrouter: receive webhooks, prove where they came from, decide by YAML
//! rules what should happen, remember what was seen, and make it happen.
//!
//! # Layout
//! The command line: `main.rs` → [`cli`] (clap's types and the dispatch;
//! nothing imports it) → [`cmd`] (one file per subcommand: `serve`, `check`,
//! `test`, `inspect`, `sign`).
//!
//! The load path turns rule files into an immutable [`rules::RuleSet`]:
//! [`config`] (parse, `${…}`, compile, diagnostics) → [`rules`] (with
//! [`condition`] and [`template`]; its sources are [`providers::Source`]).
//! [`reload`] runs it again when the files change.
//!
//! The request path, one event at a time, data flowing one way:
//! [`server`] (ingress limits, routing by path; read body, admit, ingest) →
//! [`providers`] (admission: verify, handshakes, envelope; yields
//! `Verified<Event>`) → [`ingest`] (route by [`rules`], plan deliveries) →
//! [`store`] (one durable transaction: dedup key, event, deliveries; redb by
//! default, PostgreSQL with `--store postgres://…`) →
//! [`dispatch`] (lease, run, record, retry) → [`actions`] (render, then
//! http, shell, log).
//!
//! Beside it: [`admin`] (health, metrics and the events API, behind
//! [`admin_guard`]; the web pages of [`console`] under `/ui/`) shares
//! [`http_util`] (accept loop, JSON replies) with `server`; [`ops`] holds
//! the operations on stored deliveries (replay, listing) that `admin`,
//! `console` and `cmd::inspect` run; [`dryrun`] takes a request through the
//! same admission and routing without running anything, for `cmd::test`,
//! `cmd::check` and the console's event page; [`supervisor`] ends
//! `cmd::serve` when one of its long-running parts stops on its own. Leaves:
//! [`event`], [`body`], [`clock`], [`entropy`], [`metrics`], [`telemetry`].
//! `fault` injects failures in debug builds, for tests; `fuzzing` holds the
//! fuzz harnesses.
//!
//! # Dependencies
//! Imports go one way: no module imports one that imports it back
//! (`python3 scripts/module-cycles.py` checks). From the bottom up: the
//! leaves and `http_util`; `event`; `providers` and `store`; `rules` and
//! `metrics`; `actions` and `config`; `dispatch`, `dryrun` and `reload`;
//! `ingest`; `ops` and `server`; `console`; `admin`; `cmd`; `cli`.
//!
//! One edge runs ahead of the data on purpose: `ingest` hands the
//! deliveries it committed already leased to `dispatch` as a
//! `dispatch::Claim`, so that an event arriving while workers are free skips
//! a trip through the store's queue. `dispatch` imports nothing of `ingest`.

// Nothing a sender, a rule file or a remote reply holds may panic the
// process, so the lints that could hide a panic are errors outside tests.
// Panics belong only in tests, the fuzz harnesses and `fault`.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod actions;
pub mod admin;
pub mod admin_guard;
pub mod body;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod condition;
pub mod config;
pub mod console;
pub mod dispatch;
pub mod dryrun;
pub mod entropy;
pub mod event;
// Test-only fault injection; absent from release builds.
#[cfg(debug_assertions)]
pub mod fault;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http_util;
pub mod ingest;
pub mod metrics;
pub mod ops;
pub mod providers;
pub mod reload;
pub mod rules;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod template;
