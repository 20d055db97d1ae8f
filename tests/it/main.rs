//! Integration tests: the real binary, real HTTP, real processes.
//!
//! One file per behaviour:
//!
//! | behaviour | file |
//! |---|---|
//! | `check`: rule files, their errors and warnings, `--format json` | `check.rs` |
//! | `test`: the dry run of one request against the rules | `dryrun.rs` |
//! | `schema`: the JSON Schema of rule files, kept up to date | `schema.rs` |
//! | `--help` and shell completions | `cli_help.rs` |
//! | ingest: signed requests accepted and run, bad signatures refused, bad input | `serve.rs` |
//! | deduplication: repeats answered `duplicate`, across restarts and prunes | `dedup.rs` |
//! | every provider through the server: signatures, handshakes, rotation, skew, `sign` | `providers.rs` |
//! | every provider against the published test vectors (no server) | `vectors.rs` |
//! | fuzz seeds replayed, every provider fuzzed | `fuzz_seeds.rs` |
//! | hostile clients: slow, flooding, huge, malformed, JSON bombs | `hostile.rs` |
//! | actions: HTTP retries and signing, shell, `on_failure`, replay, concurrency | `actions.rs` |
//! | agent controls: cancel by hand, cancelled runs across `kill -9`, replay | `agent.rs` |
//! | agent controls: groups, `then:`, `stdin:`, `start_within:`, the `cancel:` action | `agent_groups.rs` |
//! | bursts and budgets: `debounce:`, `limit:` (drop, delay, 429 pauses), across `kill -9` | `bursts.rs` |
//! | a Standard Webhooks verifier written from the spec, used by `actions.rs` | `standard_verifier.rs` |
//! | the bounded worker pool | `workers.rs` |
//! | hot reload: watcher, SIGHUP, failed reloads | `reload.rs` |
//! | `respond:`: the sender's answer, duplicates, render errors, 503, `check`'s warning | `respond.rs` |
//! | the admin listener: probes, metrics, the token | `admin.rs` |
//! | the admin listener answers only its own names; cross-site writes refused | `admin_guard.rs` |
//! | the console under `/ui/`: headers, login cookie, CSRF, escaping, replay, live streams | `console.rs` |
//! | logs: secrets kept out, JSON lines carrying the event id | `logging.rs` |
//! | log fields and the events API print plain values, never Rust debug text | `log_fields.rs` |
//! | retention: pruning, and the dedup window it keeps | `retention.rs` |
//! | shutdown: draining on SIGTERM, the second signal | `shutdown.rs` |
//! | `kill -9` right after a 202 and mid-burst | `crash.rs` |
//! | `kill -9` during a stream of events, a few times over | `soak.rs` |
//! | the PostgreSQL store: one server, two replicas, `migrate` | `postgres.rs` |
//! | the console in headless Chromium: login, live rows, replay, hostile data, CSP, CSRF, axe | `browser.rs` |
//! | store faults: PostgreSQL stopped, a replica `kill -9`ed, `--store` refusals, status and metrics of the store | `pg_faults.rs` |
//! | `migrate --from redb:…`: a redb queue copied, then run on PostgreSQL | `pg_migrate.rs` |
//!
//! Helpers shared by these files (starting the server, signed requests,
//! the receiver that stands in for services) are in `support/`.

mod actions;
mod admin;
mod admin_guard;
mod agent;
mod agent_groups;
mod browser;
mod bursts;
mod check;
mod cli_help;
mod console;
mod crash;
mod dedup;
mod dryrun;
mod fuzz_seeds;
mod hostile;
mod liveness;
mod log_fields;
mod logging;
mod pg_faults;
mod pg_migrate;
mod postgres;
mod providers;
mod reload;
mod respond;
mod retention;
mod schema;
mod serve;
mod shutdown;
mod soak;
mod standard_verifier;
mod support;
mod vectors;
mod workers;
