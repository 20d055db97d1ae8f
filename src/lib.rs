//! hookrouter: receive webhooks, prove where they came from, decide by YAML
//! rules what should happen, remember what was seen, and make it happen.
//!
//! # Layout
//! The load path turns rule files into an immutable [`rules::RuleSet`]:
//! `cli` → [`config`] (parse, `${…}`, compile, diagnostics) → [`rules`]
//! (with [`condition`] and [`template`]).
//!
//! The request path, one event at a time, data flowing one way:
//! `server` (ingress limits, routing by path) → [`providers`] (verify,
//! handshakes, event type and id; yields `Verified<Event>`) → [`rules`]
//! (index by source and type, then conditions) → [`store`] (one fsync'd
//! transaction: dedup key, event, deliveries) → `dispatch` (lease, render,
//! run, record, retry) → `actions` (http, shell, log).

pub mod actions;
pub mod admin;
pub mod app;
pub mod body;
pub mod cli;
pub mod condition;
pub mod config;
pub mod dispatch;
pub mod dryrun;
pub mod entropy;
pub mod envelope;
pub mod event;
// Test-only fault injection; absent from release builds.
#[cfg(debug_assertions)]
pub mod fault;
pub mod fuzzing;
pub mod ingest;
pub mod inspect;
pub mod metrics;
pub mod providers;
pub mod reload;
pub mod rules;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod template;
