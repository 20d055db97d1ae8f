//! The parts `serve` cannot run without, and what happens when one stops.
//!
//! Owns the rule: when the store writer, the dispatcher, the ingress or
//! admin listener, the rule reloader or the pruner ends (returns or panics)
//! before it was asked to stop, the process ends too. The first such stop is
//! logged as one error line, the normal shutdown begins (the same drain as
//! SIGTERM), and `serve` exits with [`EXIT_CODE`], so systemd's
//! `Restart=on-failure` or a Kubernetes restart policy starts a fresh
//! process. Staying up would be worse: without its writer the server answers
//! every webhook 503 while `/healthz` says it is alive.
//!
//! It does not own the shutdown order, which stays in `cmd::serve`.

use std::any::Any;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The exit code of `serve` after a part it needs stopped.
pub const EXIT_CODE: u8 = 3;

/// Watches the parts of one `serve`.
pub struct Supervisor {
    shutdown: CancellationToken,
    failed: Mutex<Option<String>>,
}

impl Supervisor {
    /// A supervisor that begins the shutdown by cancelling `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Supervisor {
            shutdown,
            failed: Mutex::new(None),
        })
    }

    /// Records that `part` stopped for `reason`, says so, and begins the
    /// shutdown. Only the first failure is logged: the parts that stop
    /// because of it are not news.
    pub fn fail(&self, part: &str, reason: &str) {
        {
            let mut failed = match self.failed.lock() {
                Ok(f) => f,
                Err(p) => p.into_inner(),
            };
            if failed.is_some() {
                return;
            }
            *failed = Some(format!("{part}: {reason}"));
        }
        tracing::error!(
            part,
            reason,
            exit_code = EXIT_CODE,
            "The {part} stopped; exiting so a supervisor can restart the process."
        );
        self.shutdown.cancel();
    }

    /// Whether a part failed.
    pub fn failed(&self) -> bool {
        match self.failed.lock() {
            Ok(f) => f.is_some(),
            Err(p) => p.into_inner().is_some(),
        }
    }

    /// Watches the task `part`, which should run until `until` is cancelled.
    /// A panic, or an end before `until` was cancelled, is a failure. The
    /// returned handle ends when the task does.
    pub fn watch(
        self: &Arc<Self>,
        part: &'static str,
        until: CancellationToken,
        task: JoinHandle<()>,
    ) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let reason = match task.await {
                Ok(()) if until.is_cancelled() => return,
                Ok(()) => "it ended without being asked to".to_owned(),
                Err(e) if e.is_panic() => panic_message(&*e.into_panic()),
                Err(_) => "it was cancelled".to_owned(),
            };
            this.fail(part, &reason);
        })
    }
}

/// The text a panic was raised with.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_part_that_ends_early_begins_the_shutdown() {
        let shutdown = CancellationToken::new();
        let sup = Supervisor::new(shutdown.clone());
        let until = CancellationToken::new();
        sup.watch("dispatcher", until, tokio::spawn(async {}))
            .await
            .expect("watch");
        assert!(shutdown.is_cancelled());
        assert!(sup.failed());
    }

    #[tokio::test]
    async fn a_part_asked_to_stop_is_no_failure() {
        let shutdown = CancellationToken::new();
        let sup = Supervisor::new(shutdown.clone());
        let until = CancellationToken::new();
        until.cancel();
        sup.watch("dispatcher", until, tokio::spawn(async {}))
            .await
            .expect("watch");
        assert!(!shutdown.is_cancelled());
        assert!(!sup.failed());
    }

    #[tokio::test]
    async fn a_panic_is_a_failure_even_while_stopping() {
        let shutdown = CancellationToken::new();
        let sup = Supervisor::new(shutdown.clone());
        let until = CancellationToken::new();
        until.cancel();
        let task = tokio::spawn(async { panic!("boom") });
        sup.watch("admin listener", until, task)
            .await
            .expect("watch");
        assert!(sup.failed());
        assert_eq!(panic_message(&"x"), "panicked: x");
    }
}
