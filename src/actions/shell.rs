//! The `shell` action: start a process from an argv list, never a shell.
//!
//! Owns process policy: each rendered template is exactly one argument; the
//! child's environment is `PATH` plus what the rule lists (no secrets leak in
//! by inheritance); it runs in its own process group so a timeout kills it
//! and every child it started; stdout and stderr are kept up to a cap and
//! drained past it so the child never blocks on a full pipe. Exit 0 is
//! success.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command as Process;

use super::AttemptResult;
use super::render::Command;

/// PATH for children when the server's own PATH is unset.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Run `cmd`, waiting at most `timeout`.
pub async fn run(cmd: &Command, timeout: Duration, max_output: usize) -> AttemptResult {
    let Some((program, args)) = cmd.argv.split_first() else {
        return AttemptResult::fail(None, "empty argv".to_owned());
    };
    let mut p = Process::new(program);
    p.args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned()),
        )
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &cmd.workdir {
        p.current_dir(dir);
    }
    // Starting a process blocks the calling thread until the child has
    // exec'd (about a millisecond); on a blocking-pool thread that wait does
    // not hold up a runtime worker, and several starts overlap.
    let mut child = match tokio::task::spawn_blocking(move || p.spawn()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return AttemptResult::fail(None, format!("cannot start {program:?}: {e}")),
        Err(e) => return AttemptResult::fail(None, format!("cannot start {program:?}: {e}")),
    };
    let pgid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_task = tokio::spawn(read_capped(stdout, max_output));
    let err_task = tokio::spawn(read_capped(stderr, max_output));
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let status = match status {
        Ok(s) => s,
        Err(_) => {
            kill_group(pgid);
            let _ = child.wait().await;
            out_task.abort();
            err_task.abort();
            return AttemptResult::retry(
                None,
                format!(
                    "timed out after {}; process group killed",
                    humantime::format_duration(timeout)
                ),
                None,
            );
        }
    };
    // The pipes may be held open by grandchildren that outlive the child;
    // don't wait for them forever.
    let grace = Duration::from_secs(1);
    let stdout = tokio::time::timeout(grace, out_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let stderr = tokio::time::timeout(grace, err_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    kill_group(pgid);
    let output = describe_output(&stdout, &stderr);
    match status {
        Ok(s) if s.success() => AttemptResult::done(Some(0), output),
        Ok(s) => {
            let code = s.code();
            let what = match code {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".to_owned(),
            };
            let detail = if output.is_empty() {
                what
            } else {
                format!("{what}: {output}")
            };
            AttemptResult::retry(code, detail, None)
        }
        Err(e) => AttemptResult::fail(None, format!("waiting for the process failed: {e}")),
    }
}

fn kill_group(pgid: Option<u32>) {
    let Some(pid) = pgid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    // The group may already be gone; that is the outcome we want.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, cap: usize) -> Vec<u8> {
    let Some(mut reader) = reader else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend(buf.iter().take(n.min(room)));
            }
        }
    }
    kept
}

fn describe_output(stdout: &[u8], stderr: &[u8]) -> String {
    let mut parts = Vec::new();
    let out = String::from_utf8_lossy(stdout);
    let err = String::from_utf8_lossy(stderr);
    if !out.trim().is_empty() {
        parts.push(format!("stdout: {}", out.trim_end()));
    }
    if !err.trim().is_empty() {
        parts.push(format!("stderr: {}", err.trim_end()));
    }
    parts.join("\n")
}
