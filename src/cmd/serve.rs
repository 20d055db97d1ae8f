//! `hookrouter serve`: wiring the long-running pieces together.
//!
//! Owns startup (logging, rules, store, listener), the signal policy (SIGTERM
//! or SIGINT drains: stop accepting, finish in-flight requests and commits,
//! give running actions `--grace`; a second signal exits at once), and the
//! order of shutdown. The pieces themselves live in `server`, `dispatch` and
//! `store`; `supervisor` ends the process when one of them stops on its own.
//! Its options come as a plain [`Config`], which `cli` fills from flags and
//! environment variables.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::actions;
use crate::admin::{self, Admin};
use crate::admin_guard::{Authority, Guard};
use crate::clock;
use crate::config;
use crate::console::{self, Console};
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::reload::{ReloadStatus, Reloader};
use crate::server::{self, Ingress, Limits};
use crate::store::{PgOptions, Store, StoreUrl};
use crate::telemetry::{self, LogFormat};

/// Everything `serve` is configured with; see `hookrouter serve --help`
/// for what each means and its default.
#[derive(Debug, Clone)]
pub struct Config {
    pub rules: Vec<PathBuf>,
    pub listen: String,
    pub data: PathBuf,
    /// Where the store is; `redb:` with `data` unless `--store` said.
    pub store: StoreUrl,
    pub lease_ttl: Duration,
    pub store_timeout: Duration,
    pub admin: Option<String>,
    pub admin_token: Option<String>,
    pub admin_hosts: Vec<Authority>,
    /// Serve the console under `/ui/` on the admin listener.
    pub console: bool,
    pub log_format: LogFormat,
    pub log_level: String,
    pub grace: Duration,
    pub max_body: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: u32,
    pub dedup_window: Duration,
    pub retention: Duration,
    pub workers: usize,
}
use crate::entropy;
use crate::supervisor::{self, Supervisor};

/// Run the server until a signal stops it.
pub fn run(args: &Config) -> ExitCode {
    if let Err(code) = super::require_rules(&args.rules) {
        return code;
    }
    telemetry::init(args.log_format, &args.log_level);
    raise_open_files_limit();
    let loaded = match config::load(&args.rules) {
        Ok(l) => l,
        Err(d) => {
            for e in &d.errors {
                tracing::error!(diagnostic = %e, "Invalid rules.");
            }
            // The plain lines are for people; with JSON logs every line of
            // stderr stays a JSON object.
            if args.log_format == LogFormat::Text {
                eprint!("{}", d.render_text());
            }
            return ExitCode::from(1);
        }
    };
    for w in &loaded.warnings {
        tracing::warn!(diagnostic = %w, "Rule warning.");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(serve(args, loaded))
}

async fn serve(args: &Config, loaded: config::Loaded) -> ExitCode {
    // Event keys and retry jitter come from generators seeded now, so a root
    // without a random source stops the server here, not on its first event.
    let seed = match entropy::seed() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start.");
            return ExitCode::from(2);
        }
    };
    let opts = PgOptions {
        lease_ttl: args.lease_ttl,
        timeout: args.store_timeout,
    };
    let store = match Store::open_url(&args.store, opts).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(store = %args.store.describe(), error = %e, "Cannot open the store.");
            return ExitCode::from(2);
        }
    };
    // Only now, holding the data file: another server on the same file
    // cannot have got this far, so nothing in the base is in use.
    let files_dir = actions::shell::files_base(match &args.store {
        StoreUrl::Redb(path) => path,
        StoreUrl::Postgres(_) => &args.data,
    });
    if let Err(e) = actions::shell::prepare_files_base(&files_dir) {
        tracing::warn!(path = %files_dir.display(), error = %e, "Cannot prepare the directory for shell actions' files; actions with files: will fail.");
    }
    let listener = match bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %args.listen, error = %e, "Cannot listen.");
            return ExitCode::from(2);
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| args.listen.clone(), |a| a.to_string());
    let admin_token = args.admin_token.clone().filter(|t| !t.is_empty());
    let admin_listener = match &args.admin {
        Some(a) => match bind_admin(a).await {
            Ok((l, a)) => {
                // Before "Listening for webhooks.": once that line is out,
                // every listener is up and its address has been logged.
                tracing::info!(admin_addr = %a, auth = admin_token.is_some(), "Admin API listening.");
                if admin_token.is_none() && !a.ip().to_canonical().is_loopback() {
                    tracing::warn!(
                        admin_addr = %a,
                        "Admin API on a non-loopback address without --admin-token: anyone who can reach it can read stored events and replay them."
                    );
                }
                Some((l, a))
            }
            Err(e) => {
                tracing::error!(addr = %a, error = %e, "Cannot listen for the admin API.");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    metrics.record_reload(true, clock::now_secs());
    let reload_status = Arc::new(ReloadStatus::default());
    let rules = Arc::new(ArcSwap::from_pointee(loaded.rules));

    // Signal handlers and the rule watcher are in place before the line
    // below announces the server: a signal or an edit right after it is
    // handled, never lost or fatal.
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(install_signals(), shutdown.clone()));
    let supervisor = Supervisor::new(shutdown.clone());

    // The writer is meant to outlive everything that writes; it ending
    // before `closing` is a failure.
    let closing = CancellationToken::new();
    let writer_watch = tokio::spawn({
        let (store, supervisor, closing) = (store.clone(), supervisor.clone(), closing.clone());
        async move {
            tokio::select! {
                why = store.writer_stopped() => supervisor.fail("store writer", &why),
                () = closing.cancelled() => {}
            }
        }
    });

    let reloader = Reloader {
        paths: args.rules.clone(),
        rules: rules.clone(),
        status: reload_status.clone(),
        metrics: metrics.clone(),
    };
    supervisor.watch(
        "rule reloader",
        shutdown.clone(),
        reloader.start(shutdown.clone()),
    );

    {
        let set = rules.load();
        tracing::info!(
            addr = %addr,
            sources = set.sources.len(),
            rules = set.rules.len(),
            data = %args.data.display(),
            store = %args.store.describe(),
            "Listening for webhooks."
        );
    }

    // Ingest says here which events it committed; the console's live rows
    // listen.
    let (committed, _) = tokio::sync::broadcast::channel(1024);
    let console = match (&admin_listener, args.console) {
        (Some(_), true) => match Console::new(console::Parts {
            rules: rules.clone(),
            store: store.clone(),
            reload: reload_status.clone(),
            store_name: args.store.describe(),
            token: admin_token.clone(),
            committed: committed.clone(),
            shutdown: shutdown.clone(),
        }) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::error!(error = %e, "Cannot start the console.");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let admin_task = admin_listener.map(|(l, bound)| {
        let admin = Arc::new(Admin {
            rules: rules.clone(),
            store: store.clone(),
            token: admin_token,
            metrics: metrics.clone(),
            reload: reload_status.clone(),
            guard: Guard::new(bound, args.admin_hosts.clone()),
            console,
        });
        supervisor.watch(
            "admin listener",
            shutdown.clone(),
            tokio::spawn(admin::run(l, admin, shutdown.clone())),
        )
    });

    let retention = args.retention.max(args.dedup_window);
    if retention > args.retention {
        tracing::warn!(
            retention = %humantime::format_duration(retention),
            "Retention raised to the dedup window, so duplicates stay recognisable."
        );
    }
    supervisor.watch(
        "pruner",
        shutdown.clone(),
        tokio::spawn(prune_loop(store.clone(), retention, shutdown.clone())),
    );

    let dispatcher = Dispatcher::new(
        rules.clone(),
        store.clone(),
        metrics.clone(),
        args.workers,
        seed,
        files_dir,
    );
    let dispatch_stop = CancellationToken::new();
    let dispatch_task = supervisor.watch(
        "dispatcher",
        dispatch_stop.clone(),
        tokio::spawn(dispatcher.clone().run(dispatch_stop.clone(), args.grace)),
    );

    let ingress = Arc::new(Ingress {
        rules: rules.clone(),
        store: store.clone(),
        dispatcher,
        limits: Limits {
            max_body: args.max_body,
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            max_connections: usize::try_from(args.max_connections).unwrap_or(10_000),
            dedup_window: args.dedup_window,
            ..Limits::default()
        },
        metrics: metrics.clone(),
        committed,
    });
    let ingress_task = supervisor.watch(
        "webhook listener",
        shutdown.clone(),
        tokio::spawn(server::run(listener, ingress, shutdown.clone())),
    );
    // A signal or a failed part; either way the same drain follows.
    shutdown.cancelled().await;
    let _ = ingress_task.await;
    tracing::info!("Stopped accepting; draining actions.");
    dispatch_stop.cancel();
    let _ = dispatch_task.await;
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    closing.cancel();
    let _ = writer_watch.await;
    if let Err(e) = store.close().await {
        if supervisor.failed() {
            // Already said: the writer had stopped.
            tracing::debug!(error = %e, "Closing the data file failed.");
        } else {
            supervisor.fail("store writer", &e.to_string());
        }
    }
    if supervisor.failed() {
        tracing::info!("Stopped after a failure.");
        return ExitCode::from(supervisor::EXIT_CODE);
    }
    tracing::info!("Stopped.");
    ExitCode::SUCCESS
}

/// Prune old events and expired dedup keys now and then. The store prunes
/// in small chunks between other writes, so ingest never waits long.
async fn prune_loop(store: Store, retention: std::time::Duration, shutdown: CancellationToken) {
    let every = (retention / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(3600),
    );
    let keep_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        let now = clock::now_ms();
        match store.prune(now, keep_ms).await {
            Ok(stats) if stats.events > 0 || stats.dedup_keys > 0 => {
                tracing::info!(
                    events = stats.events,
                    deliveries = stats.deliveries,
                    dedup_keys = stats.dedup_keys,
                    "Pruned old data."
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Pruning failed; will try again."),
        }
    }
}

type Signals = (tokio::signal::unix::Signal, tokio::signal::unix::Signal);

/// Take over SIGTERM and SIGINT now (needs a runtime context).
fn install_signals() -> Option<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => {
            tracing::error!("Cannot install signal handlers.");
            None
        }
    }
}

/// Listen with a deep accept backlog: the default (128) drops connection
/// attempts during a burst, which senders see as timeouts.
async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    const BACKLOG: u32 = 4096;
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the address resolved to nothing")))
}

/// The admin listener and the address it is bound to, which its `Host`
/// check accepts.
async fn bind_admin(addr: &str) -> std::io::Result<(TcpListener, std::net::SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let a = l.local_addr()?;
    Ok((l, a))
}

/// First SIGTERM/SIGINT: drain. Second: exit now.
async fn watch_signals(signals: Option<Signals>, shutdown: CancellationToken) {
    let Some((mut term, mut int)) = signals else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("Shutting down; a second signal exits at once.");
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("Second signal; exiting now.");
    std::process::exit(130);
}

/// Each connection is a file descriptor: allow as many as the hard limit.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(error = %e, "Cannot raise the open-file limit.");
    }
}
