//! The command line: clap's definitions and the dispatch to `cmd::*`.
//!
//! Owns the flags, their environment variables and defaults, and the help
//! text. Each subcommand's work, output and exit code (0 ok, 1 invalid rules
//! or a failed check, 2 usage or I/O error) live in its file under `cmd/`;
//! this module turns parsed arguments into that command's plain options and
//! calls it. Nothing else in the crate imports it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::admin_guard::Authority;
use crate::cmd::{self, OutputFormat, check, inspect, migrate, serve, sign, test};
use crate::store::StoreUrl;
use crate::telemetry::LogFormat;

const AFTER_HELP: &str = "\
Examples:
  hookrouter --rules rules/                 serve the rules in rules/ on 0.0.0.0:9000
  hookrouter check --rules rules/           validate rules and run their tests
  hookrouter test --rules rules/ --source github --body push.json \\
      --header 'X-GitHub-Event: push'       show what a request would do

Exit codes: 0 ok, 1 invalid rules or failed check, 2 usage or I/O error,
3 a part the server needs stopped (serve; restart it).";

/// Receive webhooks, verify them, store them, and route them to actions by
/// YAML rules.
#[derive(Debug, Parser)]
#[command(
    name = "hookrouter",
    version,
    about,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve webhooks (the default command).
    #[command(
        after_help = "Example:\n  hookrouter serve --rules rules/ --listen 127.0.0.1:9000 --data /var/lib/hookrouter/hookrouter.redb"
    )]
    Serve(ServeArgs),
    /// Create or upgrade the store's schema, then exit (serve does it too); or copy a redb file's queue into PostgreSQL.
    #[command(
        after_help = "Examples:\n  hookrouter migrate --store postgres://hookrouter@db.internal:5432/hookrouter\n  hookrouter migrate --from redb:/var/lib/hookrouter/hookrouter.redb \\\n      --to postgres://hookrouter@db.internal:5432/hookrouter\n\nThe copy takes every event, the unfinished deliveries (with their attempts,\ndue times and attempt counts) and the live dedup keys; finished deliveries\nstay in the file. Stop the server first: the file is refused while one holds\nit. Running it again copies nothing twice."
    )]
    Migrate(MigrateArgs),
    /// Load and compile rules and run their embedded tests; no network, no data file.
    #[command(
        after_help = "Examples:\n  hookrouter check --rules rules/\n  hookrouter check --rules rules/ --format json --deny-warnings"
    )]
    Check(CheckArgs),
    /// Dry run one request: which rules match, exactly what each action would do, and why the others do not match.
    #[command(
        after_help = "Example:\n  hookrouter test --rules rules/ --source github --body push.json \\\n      --header 'X-GitHub-Event: push' --header 'X-GitHub-Delivery: 1'"
    )]
    Test(TestArgs),
    /// List stored events, or show one with its deliveries and attempts.
    #[command(
        after_help = "Examples:\n  hookrouter events --admin 127.0.0.1:9001\n  hookrouter events 01J9Z3Q4X8K2M5N6P7R8S9T0V1 --data hookrouter.redb --json"
    )]
    Events(EventsArgs),
    /// List deliveries: all, or those in one state (`dead`: gave up).
    #[command(
        after_help = "Examples:\n  hookrouter deliveries --state dead --admin 127.0.0.1:9001\n  hookrouter deliveries --state pending --json"
    )]
    Deliveries(DeliveriesArgs),
    /// Run an event's actions again (all, or one rule's).
    #[command(
        after_help = "Examples:\n  hookrouter replay 01J9Z3Q4X8K2M5N6P7R8S9T0V1 --admin 127.0.0.1:9001\n  hookrouter replay 01J9Z3Q4X8K2M5N6P7R8S9T0V1 --rule deploy-main --data hookrouter.redb"
    )]
    Replay(ReplayArgs),
    /// Cancel an event's waiting and running deliveries (all, or one rule's).
    #[command(
        after_help = "Examples:\n  hookrouter cancel 01J9Z3Q4X8K2M5N6P7R8S9T0V1 --admin 127.0.0.1:9001\n  hookrouter cancel 01J9Z3Q4X8K2M5N6P7R8S9T0V1 --rule review-pr --data hookrouter.redb"
    )]
    Cancel(CancelArgs),
    /// Print the headers a provider would send for a body, to try rules with curl.
    #[command(
        after_help = "Example (bash):\n  mapfile -t H < <(hookrouter sign --provider github --secret dev-secret --body push.json --id 1)\n  curl -X POST localhost:9000/hooks/github -H 'Content-Type: application/json' \\\n      -H 'X-GitHub-Event: push' \"${H[@]/#/-H}\" --data-binary @push.json"
    )]
    Sign(SignArgs),
    /// Print the JSON Schema of the rule format.
    #[command(after_help = "Example:\n  hookrouter schema > schemas/rules.schema.json")]
    Schema,
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  hookrouter completions bash > /etc/bash_completion.d/hookrouter"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where `events`, `deliveries` and `replay` read from.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// A running server's admin address (host:port or URL).
    #[arg(long, value_name = "URL", env = "HOOKROUTER_ADMIN_URL")]
    pub admin: Option<String>,
    /// Bearer token for the admin API.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "HOOKROUTER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// The data file, read directly when no --admin is given (and no server holds it).
    #[arg(
        long,
        value_name = "PATH",
        env = "HOOKROUTER_DATA",
        default_value = "hookrouter.redb"
    )]
    pub data: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl StoreArgs {
    fn target(&self) -> inspect::Target {
        match &self.admin {
            Some(url) => inspect::Target::Admin {
                url: url.clone(),
                token: self.admin_token.clone(),
            },
            None => inspect::Target::Data(self.data.clone()),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Show this event (its key, as printed by `events` and in the 202 answer).
    pub key: Option<String>,
    /// How many events to list, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DeliveriesArgs {
    /// The same as `--state dead`, kept for existing scripts.
    #[arg(long, conflicts_with = "state")]
    pub failed: bool,
    /// Only deliveries in this state: pending, leased, done, dead (gave up),
    /// skipped, superseded, cancelled, expired, coalesced or dropped.
    #[arg(long)]
    pub state: Option<String>,
    /// How many deliveries to list.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The event's key.
    pub key: String,
    /// Replay only this rule's actions.
    #[arg(long, value_name = "NAME")]
    pub rule: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct CancelArgs {
    /// The event's key.
    pub key: String,
    /// Cancel only this rule's deliveries.
    #[arg(long, value_name = "NAME")]
    pub rule: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SignArgs {
    /// The provider whose scheme to sign with.
    #[arg(long)]
    pub provider: String,
    /// The secret (as configured on the source).
    #[arg(long, env = "HOOKROUTER_SIGN_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The body to sign; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub body: PathBuf,
    /// The event or message id, where the scheme carries one.
    #[arg(long, default_value = "")]
    pub id: String,
    /// The public URL the provider calls (Twilio, Square sign it).
    #[arg(long, default_value = "http://localhost:9000/")]
    pub url: String,
}

/// Where the rules are.
#[derive(Debug, Clone, Args)]
pub struct RulesArg {
    /// A rule file, or a folder searched recursively for *.yaml and *.yml. Repeatable.
    #[arg(
        long = "rules",
        value_name = "PATH",
        env = "HOOKROUTER_RULES",
        value_delimiter = ','
    )]
    pub rules: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    /// Address for webhooks.
    #[arg(
        long,
        value_name = "ADDR",
        env = "HOOKROUTER_LISTEN",
        default_value = "0.0.0.0:9000"
    )]
    pub listen: String,
    /// The redb data file.
    #[arg(
        long,
        value_name = "PATH",
        env = "HOOKROUTER_DATA",
        default_value = "hookrouter.redb"
    )]
    pub data: PathBuf,
    /// Where events and deliveries are stored: redb:PATH (one server; the
    /// default, redb: with --data) or postgres://USER@HOST:PORT/DB (any
    /// number of replicas; ?sslmode=require|verify-full uses TLS). With
    /// postgres://, the shell actions' files directory is hookrouter-files
    /// in the working directory. --data PATH is short for --store
    /// redb:PATH, so the two are not given together.
    #[arg(
        long,
        value_name = "URL",
        env = "HOOKROUTER_STORE",
        hide_env_values = true,
        conflicts_with = "data"
    )]
    pub store: Option<StoreUrl>,
    /// PostgreSQL: how long a delivery's lease lasts unless renewed (it is
    /// renewed while it runs); a dead replica's deliveries are taken over
    /// this long after it stopped.
    #[arg(long, value_name = "DURATION", env = "HOOKROUTER_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_ttl: std::time::Duration,
    /// PostgreSQL: the most a call to the database may take; slower or
    /// down, webhooks are answered 503 with Retry-After and /readyz fails.
    #[arg(long, value_name = "DURATION", env = "HOOKROUTER_STORE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub store_timeout: std::time::Duration,
    /// Address of the admin API and metrics; off unless given. It answers
    /// only requests addressed to its own address, localhost, a loopback
    /// address or an --admin-host name (else 421), and refuses changes sent
    /// by a web page of another site (403).
    #[arg(long, value_name = "ADDR", env = "HOOKROUTER_ADMIN")]
    pub admin: Option<String>,
    /// Bearer token required by the admin API.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "HOOKROUTER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// A further name the admin listener answers to, as host or host:port
    /// (with a port, only that port); for a reverse proxy or a load
    /// balancer that calls it by name. Repeatable, or comma-separated in
    /// HOOKROUTER_ADMIN_HOST.
    #[arg(
        long = "admin-host",
        value_name = "NAME",
        env = "HOOKROUTER_ADMIN_HOST",
        value_delimiter = ','
    )]
    pub admin_hosts: Vec<Authority>,
    /// Turn off the web console the admin listener serves under /ui/.
    #[arg(long, env = "HOOKROUTER_NO_CONSOLE")]
    pub no_console: bool,
    /// Log format.
    #[arg(
        long,
        value_enum,
        env = "HOOKROUTER_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Log filter: a level (info, debug) or RUST_LOG-style directives.
    #[arg(
        long,
        value_name = "FILTER",
        env = "HOOKROUTER_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
    /// How long running actions may take to finish on shutdown.
    #[arg(long, value_name = "DURATION", env = "HOOKROUTER_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: std::time::Duration,
    /// Largest request body accepted.
    #[arg(long, value_name = "BYTES", env = "HOOKROUTER_MAX_BODY", default_value_t = 10 * 1024 * 1024)]
    pub max_body: usize,
    /// How long a client may take to send the request line and headers;
    /// a slower connection is closed.
    #[arg(long, value_name = "DURATION", env = "HOOKROUTER_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: std::time::Duration,
    /// How long a client may take to send the body once the headers are in;
    /// a slower one is answered 408.
    #[arg(long, value_name = "DURATION", env = "HOOKROUTER_BODY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_timeout: std::time::Duration,
    /// Most webhook connections open at once; further clients wait to be
    /// accepted until one closes.
    #[arg(
        long,
        value_name = "N",
        env = "HOOKROUTER_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    pub max_connections: u32,
    /// How long a delivered event's id is remembered for deduplication.
    #[arg(long, value_name = "DURATION", env = "HOOKROUTER_DEDUP_WINDOW", default_value = "7d", value_parser = humantime::parse_duration)]
    pub dedup_window: std::time::Duration,
    /// How long events and their finished deliveries are kept; never shorter
    /// than the dedup window.
    #[arg(long, value_name = "DURATION", env = "HOOKROUTER_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub retention: std::time::Duration,
    /// Actions running at once, across all rules.
    #[arg(
        long,
        value_name = "N",
        env = "HOOKROUTER_WORKERS",
        default_value_t = 64
    )]
    pub workers: usize,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The store: redb:PATH or postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        value_name = "URL",
        env = "HOOKROUTER_STORE",
        hide_env_values = true,
        required_unless_present = "from"
    )]
    pub store: Option<StoreUrl>,
    /// Copy this redb file's queue (redb:PATH) into --to, instead of --store.
    #[arg(long, value_name = "redb:PATH", requires = "to")]
    pub from: Option<StoreUrl>,
    /// The PostgreSQL database --from is copied into (its schema is applied first).
    #[arg(long, value_name = "URL", requires = "from")]
    pub to: Option<StoreUrl>,
    /// The most a call to the database may take.
    #[arg(long, value_name = "DURATION", env = "HOOKROUTER_STORE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub store_timeout: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Fail (exit 1) on warnings too.
    #[arg(long)]
    pub deny_warnings: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub rules: RulesArg,
    /// The source the request arrives at.
    #[arg(long, value_name = "NAME")]
    pub source: String,
    /// The request body; `-` reads standard input.
    #[arg(long, value_name = "FILE")]
    pub body: PathBuf,
    /// A request header, `Name: value`. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    pub headers: Vec<String>,
    /// A query parameter, `name=value`. Repeatable.
    #[arg(long = "query", value_name = "PARAM")]
    pub query: Vec<String>,
    /// Check the signature too.
    #[arg(long)]
    pub verify: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

impl ServeArgs {
    fn config(self) -> serve::Config {
        serve::Config {
            rules: self.rules.rules,
            listen: self.listen,
            store: self
                .store
                .unwrap_or_else(|| StoreUrl::Redb(self.data.clone())),
            data: self.data,
            lease_ttl: self.lease_ttl,
            store_timeout: self.store_timeout,
            admin: self.admin,
            admin_token: self.admin_token,
            admin_hosts: self.admin_hosts,
            console: !self.no_console,
            log_format: self.log_format,
            log_level: self.log_level,
            grace: self.grace,
            max_body: self.max_body,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_connections: self.max_connections,
            dedup_window: self.dedup_window,
            retention: self.retention,
            workers: self.workers,
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // std's hash maps draw their keys from the same sources as
    // `crate::entropy` and panic without one: say so plainly, and first.
    if let Err(e) = crate::entropy::seed() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve(cli.serve));
    match command {
        Command::Serve(a) => serve::run(&a.config()),
        Command::Check(a) => check::run(&check::Options {
            rules: a.rules.rules,
            format: a.format,
            deny_warnings: a.deny_warnings,
        }),
        Command::Test(a) => test::run(&test::Options {
            rules: a.rules.rules,
            source: a.source,
            body: a.body,
            headers: a.headers,
            query: a.query,
            verify: a.verify,
            format: a.format,
        }),
        Command::Events(a) => {
            inspect::events(&a.store.target(), a.key.as_deref(), a.limit, a.store.json)
        }
        Command::Deliveries(a) => inspect::deliveries(
            &a.store.target(),
            a.failed,
            a.state.as_deref(),
            a.limit,
            a.store.json,
        ),
        Command::Replay(a) => {
            inspect::replay(&a.store.target(), &a.key, a.rule.as_deref(), a.store.json)
        }
        Command::Cancel(a) => {
            inspect::cancel(&a.store.target(), &a.key, a.rule.as_deref(), a.store.json)
        }
        Command::Migrate(a) => match (&a.from, &a.to, &a.store) {
            (Some(from), Some(to), _) => migrate::copy(from, to, a.store_timeout),
            (_, _, Some(store)) => migrate::run(store, a.store_timeout),
            _ => cmd::usage_error("pass --store URL, or --from redb:PATH --to postgres://…"),
        },
        Command::Sign(a) => sign::run(&sign::Options {
            provider: a.provider,
            secret: a.secret,
            body: a.body,
            id: a.id,
            url: a.url,
        }),
        Command::Schema => {
            println!("{}", cmd::schema_json());
            ExitCode::SUCCESS
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "hookrouter", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

/// `--store` values are parsed by [`StoreUrlParser`] wherever a flag takes a
/// [`StoreUrl`].
impl clap::builder::ValueParserFactory for StoreUrl {
    type Parser = StoreUrlParser;

    fn value_parser() -> Self::Parser {
        StoreUrlParser
    }
}

/// Parses a `--store` value. Its error, unlike clap's usual one, does not
/// repeat the value: a `postgres://` URL may carry a password.
#[derive(Debug, Clone, Copy)]
pub struct StoreUrlParser;

impl clap::builder::TypedValueParser for StoreUrlParser {
    type Value = StoreUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<StoreUrl, clap::Error> {
        let name = arg.map_or_else(|| "--store".to_owned(), ToString::to_string);
        let refuse = |why: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '{name}': {why}"),
            )
            .format(&mut cmd.clone())
        };
        let text = value.to_str().ok_or_else(|| refuse("not UTF-8"))?;
        text.parse::<StoreUrl>().map_err(|why| refuse(&why))
    }
}
