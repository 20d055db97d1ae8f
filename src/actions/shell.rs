//! The `shell` action: start a process from an argv list, never a shell.
//!
//! Owns process policy: each rendered template is exactly one argument; the
//! child's environment is `PATH` plus what the rule lists (no secrets leak in
//! by inheritance); it runs in its own process group, so stopping it (a
//! timeout or a cancel: SIGTERM, then SIGKILL after the grace) reaches every
//! child it started; `stdin:` is fed from its own task while stdout and
//! stderr are read, so no pipe fills up and blocks the other; stdout and
//! stderr are kept up to a cap and drained past it. Exit 0 is success.
//!
//! Also owns the `files:` directories: one private directory per attempt
//! under a base directory, removed after the attempt whatever its outcome.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command as Process};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::render::Command;
use super::{AttemptResult, Output};

/// PATH for children when the server's own PATH is unset.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// How long the pipes are still read after the child exits: grandchildren
/// may hold them open, and are not waited for.
const DRAIN: Duration = Duration::from_secs(1);

/// How often, during the grace, a stopped group is checked for members left.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// The bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// From SIGTERM to SIGKILL when the run is stopped.
    pub kill_grace: Duration,
    /// Bytes of stdout and of stderr kept.
    pub max_output: usize,
}

/// The base directory for `files:` next to the data file.
pub fn files_base(data: &Path) -> PathBuf {
    let dir = match data.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let base = dir.join("hookrouter-files");
    // Templates are given absolute paths, which still hold for a child
    // with its own `workdir`.
    std::path::absolute(&base).unwrap_or(base)
}

/// Create `base` (mode 0700) for the attempts' `files:` directories and
/// remove whatever is left in it. Attempts remove their own directories, so
/// only a process that was killed leaves any; call this before any attempt
/// runs, while holding the data file (so no other server is using it).
///
/// # Errors
/// `base` cannot be created, is not a directory, or an entry in it cannot be
/// removed.
pub fn prepare_files_base(base: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};

    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)?;
    // Not followed through a link: the files are written where it says.
    let meta = std::fs::symlink_metadata(base)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            base.display()
        )));
    }
    if meta.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o700))?;
    }
    for entry in std::fs::read_dir(base)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The path of a fresh directory for one attempt of `delivery` under
/// `base`. Not created here: the path is rendered into templates first.
pub fn attempt_dir(base: &Path, delivery: u64) -> PathBuf {
    // Unique within the process; the base is emptied at start, so no
    // earlier process's directory can be in the way.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    base.join(format!("d{delivery}-{n}"))
}

/// Removes an attempt's files directory when dropped, so it goes whatever
/// the way out (an error, a timeout, a cancel, the attempt's future being
/// dropped).
struct FilesDir(Option<PathBuf>);

impl Drop for FilesDir {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "Cannot remove an attempt's files.");
        }
    }
}

/// Create `cmd`'s files directory (0700) and write each file (0600).
async fn write_files(cmd: &Command) -> io::Result<FilesDir> {
    let Some(dir) = &cmd.files_dir else {
        return Ok(FilesDir(None));
    };
    let mut builder = tokio::fs::DirBuilder::new();
    builder.mode(0o700);
    builder.create(dir).await?;
    let guard = FilesDir(Some(dir.clone()));
    for (name, content) in &cmd.files {
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(name))
            .await?;
        f.write_all(content.as_bytes()).await?;
        f.flush().await?;
    }
    Ok(guard)
}

/// How a run that was started came to an end.
enum End {
    Exited(io::Result<std::process::ExitStatus>),
    TimedOut(Stop),
    Cancelled(Stop),
}

/// How a stopped process group went.
enum Stop {
    /// Every member was gone within the grace.
    Terminated,
    /// Some member was still there after the grace.
    Killed,
}

impl Stop {
    fn describe(&self, grace: Duration) -> String {
        match self {
            Stop::Terminated => "process group stopped by SIGTERM".to_owned(),
            Stop::Killed => format!(
                "process group killed after a {} grace",
                humantime::format_duration(grace)
            ),
        }
    }
}

/// Run `cmd` within `limits`, stopping it early when `cancel` fires.
pub async fn run(cmd: &Command, limits: Limits, cancel: &CancellationToken) -> AttemptResult {
    let Some((program, args)) = cmd.argv.split_first() else {
        return AttemptResult::fail(None, "empty argv".to_owned());
    };
    let _files = match write_files(cmd).await {
        Ok(f) => f,
        Err(e) => {
            return AttemptResult::retry(None, format!("cannot write the files: {e}"), None);
        }
    };
    let mut p = Process::new(program);
    p.args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned()),
        )
        .envs(cmd.env.iter().map(|(k, v)| (k, v)))
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
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
    // The child called setpgid(0, 0): its pid is its group's id.
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw);
    let writer = match (child.stdin.take(), &cmd.stdin) {
        (Some(pipe), Some(input)) => Some(tokio::spawn(feed(pipe, input.clone().into_bytes()))),
        _ => None,
    };
    let out_task = tokio::spawn(read_capped(child.stdout.take(), limits.max_output));
    let err_task = tokio::spawn(read_capped(child.stderr.take(), limits.max_output));

    let end = tokio::select! {
        status = child.wait() => End::Exited(status),
        () = tokio::time::sleep(limits.timeout) => {
            End::TimedOut(stop_group(&mut child, pgid, limits.kill_grace).await)
        }
        () = cancel.cancelled() => {
            End::Cancelled(stop_group(&mut child, pgid, limits.kill_grace).await)
        }
    };
    let stdin_error = match (writer, &end) {
        (Some(w), End::Exited(_)) => {
            let abort = w.abort_handle();
            match tokio::time::timeout(DRAIN, w).await {
                Ok(Ok(Err(e))) => Some(e),
                Ok(_) => None,
                // Something the child left holds stdin open without reading
                // it; the child itself is done.
                Err(_) => {
                    abort.abort();
                    None
                }
            }
        }
        (Some(w), _) => {
            w.abort();
            None
        }
        (None, _) => None,
    };
    let stdout = drain(out_task).await;
    let stderr = drain(err_task).await;
    // Whatever the child left running in its group goes with it.
    signal_group(pgid, Signal::SIGKILL);
    let output = describe_output(&stdout, &stderr);
    let with_output = |what: String| {
        if output.is_empty() {
            what
        } else {
            format!("{what}: {output}")
        }
    };
    let captured = Output::Shell {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    let result = match end {
        End::Exited(Ok(s)) if s.success() => match stdin_error {
            None => AttemptResult::done(Some(0), output),
            Some(e) => AttemptResult::retry(
                Some(0),
                with_output(format!("writing stdin failed: {e}")),
                None,
            ),
        },
        End::Exited(Ok(s)) => {
            let code = s.code();
            let what = match code {
                Some(c) => format!("exit code {c}"),
                None => "killed by a signal".to_owned(),
            };
            AttemptResult::retry(code, with_output(what), None)
        }
        End::Exited(Err(e)) => {
            AttemptResult::fail(None, format!("waiting for the process failed: {e}"))
        }
        End::TimedOut(stop) => AttemptResult::retry(
            None,
            with_output(format!(
                "timed out after {}; {}",
                humantime::format_duration(limits.timeout),
                stop.describe(limits.kill_grace)
            )),
            None,
        ),
        End::Cancelled(stop) => AttemptResult::cancelled(with_output(format!(
            "cancelled; {}",
            stop.describe(limits.kill_grace)
        ))),
    };
    result.with_output(captured)
}

/// Write `input` to the child's stdin, then close it. A child that exits
/// (or closes stdin) without reading all of it is its own business: the
/// broken pipe is not an error.
async fn feed(mut pipe: tokio::process::ChildStdin, input: Vec<u8>) -> io::Result<()> {
    let written = pipe.write_all(&input).await;
    drop(pipe);
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// SIGTERM to the group, up to `grace` for every member to exit, then
/// SIGKILL to whatever is left. Returns once the child is reaped.
async fn stop_group(child: &mut Child, pgid: Option<nix::unistd::Pid>, grace: Duration) -> Stop {
    let deadline = Instant::now() + grace;
    signal_group(pgid, Signal::SIGTERM);
    let stop = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(_) => loop {
            // The child is gone; what it started may still be cleaning up.
            if !group_alive(pgid).await {
                break Stop::Terminated;
            }
            if Instant::now() >= deadline {
                break Stop::Killed;
            }
            tokio::time::sleep(GROUP_POLL.min(deadline - Instant::now())).await;
        },
        Err(_) => Stop::Killed,
    };
    signal_group(pgid, Signal::SIGKILL);
    let _ = child.wait().await;
    stop
}

fn signal_group(pgid: Option<nix::unistd::Pid>, signal: Signal) {
    if let Some(pgid) = pgid {
        // The group may already be gone; that is the outcome we want.
        let _ = nix::sys::signal::killpg(pgid, signal);
    }
}

/// Whether a process that can still act is left in the group. Zombies do
/// not count: they are done, but stay members until their parent reaps
/// them, and the parent of an orphan (init, or whatever runs as PID 1 in a
/// container) may take its time.
async fn group_alive(pgid: Option<nix::unistd::Pid>) -> bool {
    let Some(pgid) = pgid else {
        return false;
    };
    if nix::sys::signal::killpg(pgid, None).is_err() {
        return false;
    }
    tokio::task::spawn_blocking(move || live_member(pgid.as_raw()))
        .await
        .unwrap_or(Some(true))
        // Without /proc, a member of any kind counts.
        .unwrap_or(true)
}

/// Whether `/proc` lists a process of group `pgid` that is not a zombie;
/// `None` when `/proc` cannot be read.
fn live_member(pgid: i32) -> Option<bool> {
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(entries.flatten().any(|entry| {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            // Gone since the listing.
            return false;
        };
        // "pid (comm) state ppid pgrp …"; comm may hold spaces and parens.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
        group == Some(pgid) && !matches!(state, Some("Z" | "X"))
    }))
}

async fn drain(task: tokio::task::JoinHandle<Vec<u8>>) -> Vec<u8> {
    let abort = task.abort_handle();
    match tokio::time::timeout(DRAIN, task).await {
        Ok(Ok(kept)) => kept,
        _ => {
            abort.abort();
            Vec::new()
        }
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Instant;

    use serde_json::json;

    use super::*;
    use crate::actions::{self, Job, Verdict};
    use crate::event::Event;
    use crate::providers::Origin;
    use crate::rules::{Action, ActionKind, HttpAction, RetryPolicy, RuleSet, ShellAction};
    use crate::template::Templates;

    const TWO_MIB: usize = 2 * 1024 * 1024;

    /// Waiting in short sleeps rather than one long one: a TERM that lands
    /// while the shell is forking a `sleep` is lost to that `sleep` (the
    /// fork resets the trap before exec), and a long one would then outlive
    /// the trap and be killed only after the grace.
    const LOOP: &str = "while :; do sleep 0.05; done\n";

    fn command(argv: &[&str]) -> Command {
        Command {
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            workdir: None,
            stdin: None,
            files_dir: None,
            files: Vec::new(),
        }
    }

    fn limits(timeout: Duration, kill_grace: Duration) -> Limits {
        Limits {
            timeout,
            kill_grace,
            max_output: 64 * 1024,
        }
    }

    /// A script in `dir`, run by `sh`, so the tests need no quoting games.
    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, body).expect("write script");
        path.display().to_string()
    }

    async fn wait_for(path: &Path) {
        let until = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(Instant::now() < until, "{} never appeared", path.display());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// One shell action through the whole attempt path: render (with the
    /// `files` map), write the files, run.
    struct Attempt {
        set: RuleSet,
        action: Action,
    }

    impl Attempt {
        fn new(argv: &[&str], stdin: Option<&str>, files: &[(&str, &str)]) -> Attempt {
            let mut t = Templates::new();
            let mut tpl = |s: &str| t.compile(s).expect("template");
            let shell = ShellAction {
                argv: argv.iter().map(|a| tpl(a)).collect(),
                env: Vec::new(),
                workdir: None,
                max_output: TWO_MIB,
                stdin: stdin.map(&mut tpl),
                files: files
                    .iter()
                    .map(|(n, c)| ((*n).to_owned(), tpl(c)))
                    .collect(),
            };
            let action = Action {
                kind: ActionKind::Shell(shell),
                retry: RetryPolicy::NONE,
                timeout: Duration::from_secs(20),
                concurrency: None,
                when: None,
                group: None,
                kill_grace: Duration::from_secs(10),
                then: Vec::new(),
                start_within: None,
                origin: Origin {
                    file: PathBuf::from("test.yaml"),
                    line: 1,
                    column: 1,
                },
            };
            Attempt {
                set: RuleSet::new(Vec::new(), Vec::new(), Vec::new(), t, Vec::new()),
                action,
            }
        }

        /// An HTTP action, to `url`, in the same harness.
        fn http(url: &str) -> Attempt {
            let mut attempt = Attempt::new(&["true"], None, &[]);
            let mut t = Templates::new();
            attempt.action.kind = ActionKind::Http(HttpAction {
                method: http::Method::POST,
                url: t.compile(url).expect("template"),
                headers: Vec::new(),
                body: None,
                sign: None,
            });
            attempt.set = RuleSet::new(Vec::new(), Vec::new(), Vec::new(), t, Vec::new());
            attempt
        }

        async fn run(&self, body: serde_json::Value, base: &Path) -> AttemptResult {
            self.run_until(body, base, &CancellationToken::new()).await
        }

        async fn run_until(
            &self,
            body: serde_json::Value,
            base: &Path,
            cancel: &CancellationToken,
        ) -> AttemptResult {
            let event = Arc::new(Event {
                id: "e-1".to_owned(),
                kind: "push".to_owned(),
                source: "gh".to_owned(),
                provider: "github".to_owned(),
                received_at: "2025-01-01T00:00:00.000Z".to_owned(),
                headers: BTreeMap::new(),
                query: BTreeMap::new(),
                body: body.into(),
            });
            let ctx = actions::render::context(&event, "r", None);
            let job = Job {
                action: &self.action,
                context: &ctx,
                rule: "r",
                event_id: "e-1",
                event_key: "k",
                delivery: 7,
                cancel,
                files_dir: base,
            };
            actions::run(&self.set, &actions::http::client(), job).await
        }
    }

    fn stdout(r: &AttemptResult) -> &str {
        match &r.output {
            Output::Shell { stdout, .. } => stdout,
            other => panic!("no shell output: {other:?}"),
        }
    }

    fn stderr(r: &AttemptResult) -> &str {
        match &r.output {
            Output::Shell { stderr, .. } => stderr,
            other => panic!("no shell output: {other:?}"),
        }
    }

    #[tokio::test]
    async fn two_mib_of_stdin_reach_wc_whole_while_the_child_fills_stdout() {
        // The child writes 1 MiB to stdout before it reads stdin at all:
        // feeding stdin and reading stdout one after the other would block
        // both sides on full pipes until the timeout.
        let mut cmd = command(&["sh", "-c", "head -c 1048576 /dev/zero; wc -c >&2"]);
        cmd.stdin = Some("x".repeat(TWO_MIB));
        let mut l = limits(Duration::from_secs(20), Duration::from_secs(1));
        l.max_output = TWO_MIB;
        let never = CancellationToken::new();
        let r = tokio::time::timeout(Duration::from_secs(60), run(&cmd, l, &never))
            .await
            .expect("deadlocked");
        assert_eq!(r.verdict, Verdict::Done, "{}", r.detail);
        assert_eq!(stderr(&r).trim(), TWO_MIB.to_string());
        assert_eq!(stdout(&r).len(), 1024 * 1024);
    }

    #[tokio::test]
    async fn a_child_that_never_reads_stdin_succeeds() {
        for argv in [&["true"][..], &["sh", "-c", "exec 0<&-; sleep 0.2"][..]] {
            let mut cmd = command(argv);
            cmd.stdin = Some("x".repeat(TWO_MIB));
            let r = run(
                &cmd,
                limits(Duration::from_secs(20), Duration::from_secs(1)),
                &CancellationToken::new(),
            )
            .await;
            assert_eq!(r.verdict, Verdict::Done, "{argv:?}: {}", r.detail);
            assert_eq!(r.status, Some(0));
        }
    }

    #[tokio::test]
    async fn without_stdin_the_child_reads_an_empty_dev_null() {
        let r = run(
            &command(&["wc", "-c"]),
            limits(Duration::from_secs(20), Duration::from_secs(1)),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(r.verdict, Verdict::Done, "{}", r.detail);
        assert_eq!(stdout(&r).trim(), "0");
    }

    #[tokio::test]
    async fn the_prompt_on_stdin_stays_out_of_the_command_line() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let attempt = Attempt::new(
            &["sh", "-c", "tr '\\0' ' ' < /proc/$$/cmdline; echo; cat"],
            Some("PROMPT-{{ body.secret }}"),
            &[],
        );
        let r = attempt
            .run(json!({"secret": "swordfish-42"}), tmp.path())
            .await;
        assert_eq!(r.verdict, Verdict::Done, "{}", r.detail);
        let (cmdline, input) = stdout(&r).split_once('\n').expect("two parts");
        assert!(cmdline.starts_with("sh -c"), "{cmdline}");
        assert!(!cmdline.contains("swordfish-42"), "{cmdline}");
        assert_eq!(input, "PROMPT-swordfish-42");
    }

    #[tokio::test]
    async fn files_are_private_rendered_with_their_paths_and_removed() {
        use std::os::unix::fs::PermissionsExt as _;

        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("hookrouter-files");
        prepare_files_base(&base).expect("base");
        let attempt = Attempt::new(
            &[
                "sh",
                "-c",
                "stat -c %a \"$(dirname \"$1\")\" \"$1\"; cat \"$1\"; echo; cat \"$2\"",
                "sh",
                "{{ files['event.json'] }}",
                "{{ files['note.txt'] }}",
            ],
            Some("{{ files['event.json'] }}"),
            &[
                ("event.json", "{{ body | tojson }}"),
                ("note.txt", "me: {{ files['note.txt'] }}"),
            ],
        );
        let r = attempt.run(json!({"n": 1}), &base).await;
        assert_eq!(r.verdict, Verdict::Done, "{}", r.detail);
        let lines: Vec<&str> = stdout(&r).lines().collect();
        let [dir_mode, file_mode, content, note] = lines.as_slice() else {
            panic!("unexpected output: {lines:?}");
        };
        assert_eq!(*dir_mode, "700");
        assert_eq!(*file_mode, "600");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(content).expect("json"),
            json!({"n": 1})
        );
        let path = note.strip_prefix("me: ").expect("note");
        assert!(Path::new(path).is_absolute(), "{path}");
        assert!(path.starts_with(base.to_str().expect("utf-8")), "{path}");
        // Gone afterwards, directory and all; the base stays, private.
        assert!(!Path::new(path).exists(), "{path} left behind");
        assert_eq!(std::fs::read_dir(&base).expect("base").count(), 0);
        let mode = std::fs::metadata(&base).expect("base").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[tokio::test]
    async fn files_are_removed_after_a_timeout_and_leftovers_at_start() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("hookrouter-files");
        // What a killed process leaves: a directory with a file, and a file.
        std::fs::create_dir_all(base.join("d1-0")).expect("leftover");
        std::fs::write(base.join("d1-0").join("event.json"), "{}").expect("leftover");
        std::fs::write(base.join("stray"), "").expect("leftover");
        prepare_files_base(&base).expect("base");
        assert_eq!(std::fs::read_dir(&base).expect("base").count(), 0);

        let mut attempt = Attempt::new(
            &[
                "sh",
                "-c",
                "echo \"$1\"; exec sleep 30",
                "sh",
                "{{ files.f }}",
            ],
            None,
            &[("f", "x")],
        );
        attempt.action.timeout = Duration::from_millis(300);
        attempt.action.kill_grace = Duration::from_millis(100);
        let r = attempt.run(json!({}), &base).await;
        assert!(matches!(r.verdict, Verdict::Retry { .. }), "{r:?}");
        assert!(
            r.detail.starts_with("timed out after 300ms"),
            "{}",
            r.detail
        );
        let path = stdout(&r).trim();
        assert!(path.starts_with(base.to_str().expect("utf-8")), "{path}");
        assert!(!Path::new(path).exists(), "{path} left behind");
        assert_eq!(std::fs::read_dir(&base).expect("base").count(), 0);
    }

    #[tokio::test]
    async fn cancel_sends_sigterm_to_the_whole_group() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        // The grandchild is started by the child and is in its group.
        let grandchild = script(
            d,
            "grandchild.sh",
            &format!(
                "trap 'echo term > {d}/grandchild; exit 0' TERM\ntouch {d}/grandchild-ready\n{LOOP}",
                d = d.display()
            ),
        );
        let child = script(
            d,
            "child.sh",
            &format!(
                "trap 'echo term > {d}/child; exit 0' TERM\nsh {grandchild} &\ntouch {d}/child-ready\n{LOOP}",
                d = d.display()
            ),
        );
        let cancel = CancellationToken::new();
        let cmd = command(&["sh", &child]);
        let grace = Duration::from_secs(10);
        let running = tokio::spawn({
            let cancel = cancel.clone();
            async move { run(&cmd, limits(Duration::from_secs(30), grace), &cancel).await }
        });
        wait_for(&d.join("child-ready")).await;
        wait_for(&d.join("grandchild-ready")).await;
        let started = Instant::now();
        cancel.cancel();
        let r = running.await.expect("join");
        assert!(r.cancelled, "{r:?}");
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(read(&d.join("child")), "term");
        assert_eq!(read(&d.join("grandchild")), "term");
        // Everyone left on SIGTERM: no waiting out the grace.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(r.detail.contains("stopped by SIGTERM"), "{}", r.detail);
    }

    #[tokio::test]
    async fn a_group_ignoring_sigterm_is_killed_after_the_grace() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        // `sleep` inherits the ignored TERM.
        let child = script(
            d,
            "child.sh",
            &format!("trap '' TERM\ntouch {}/ready\nsleep 30\n", d.display()),
        );
        let cancel = CancellationToken::new();
        let cmd = command(&["sh", &child]);
        let grace = Duration::from_millis(700);
        let running = tokio::spawn({
            let cancel = cancel.clone();
            async move { run(&cmd, limits(Duration::from_secs(30), grace), &cancel).await }
        });
        wait_for(&d.join("ready")).await;
        let started = Instant::now();
        cancel.cancel();
        let r = running.await.expect("join");
        let took = started.elapsed();
        assert!(r.cancelled, "{r:?}");
        assert!(took >= grace, "killed before the grace: {took:?}");
        assert!(took < grace + Duration::from_secs(3), "{took:?}");
        assert!(
            r.detail.contains("killed after a 700ms grace"),
            "{}",
            r.detail
        );
    }

    #[tokio::test]
    async fn a_timeout_sends_sigterm_and_uses_the_same_grace() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let d = tmp.path();
        let timeout = Duration::from_millis(300);
        let grace = Duration::from_millis(700);

        // A child that cleans up on SIGTERM gets to.
        let polite = script(
            d,
            "polite.sh",
            &format!(
                "trap 'echo term > {}/polite; exit 0' TERM\n{LOOP}",
                d.display()
            ),
        );
        let r = run(
            &command(&["sh", &polite]),
            limits(timeout, grace),
            &CancellationToken::new(),
        )
        .await;
        assert!(!r.cancelled);
        assert!(matches!(r.verdict, Verdict::Retry { .. }), "{r:?}");
        assert_eq!(read(&d.join("polite")), "term");
        assert!(r.detail.contains("stopped by SIGTERM"), "{}", r.detail);

        // One that ignores it is killed after the grace.
        let started = Instant::now();
        let r = run(
            &command(&["sh", "-c", "trap '' TERM; sleep 30"]),
            limits(timeout, grace),
            &CancellationToken::new(),
        )
        .await;
        let took = started.elapsed();
        assert!(matches!(r.verdict, Verdict::Retry { .. }), "{r:?}");
        assert!(took >= timeout + grace, "{took:?}");
        assert!(took < timeout + grace + Duration::from_secs(3), "{took:?}");
        assert!(
            r.detail
                .starts_with("timed out after 300ms; process group killed after a 700ms grace"),
            "{}",
            r.detail
        );
    }

    #[tokio::test]
    async fn result_context_has_json_only_when_the_output_parses() {
        let l = limits(Duration::from_secs(20), Duration::from_secs(1));
        let never = CancellationToken::new();
        let r = run(
            &command(&["sh", "-c", "echo '{\"result\":\"hi\"}'; echo oops >&2"]),
            l,
            &never,
        )
        .await;
        let ctx = r.result_context();
        assert_eq!(ctx["json"], json!({"result": "hi"}));
        assert_eq!(ctx["status"], json!(0));
        assert_eq!(ctx["stdout"], json!("{\"result\":\"hi\"}\n"));
        assert_eq!(ctx["stderr"], json!("oops\n"));
        assert_eq!(ctx["body"], json!(""));

        let r = run(&command(&["sh", "-c", "echo not json; exit 3"]), l, &never).await;
        let ctx = r.result_context();
        assert!(ctx.get("json").is_none(), "{ctx}");
        assert_eq!(ctx["status"], json!(3));
        assert_eq!(ctx["stdout"], json!("not json\n"));

        // An HTTP answer: the body is what is parsed.
        let http = AttemptResult::done(Some(200), String::new()).with_output(Output::Http {
            body: "[1,2]".to_owned(),
        });
        let ctx = http.result_context();
        assert_eq!(ctx["json"], json!([1, 2]));
        assert_eq!(ctx["status"], json!(200));
        assert_eq!(ctx["stdout"], json!(""));
    }

    #[tokio::test]
    async fn a_cancelled_http_call_is_dropped() {
        use std::io::Read as _;

        // A receiver that takes the request and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            tx.send(()).expect("send");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut buf = [0u8; 1024];
            // Read until the client hangs up.
            let closed = loop {
                match conn.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => {}
                    Err(_) => break false,
                }
            };
            tx.send(()).expect("send");
            closed
        });
        let tmp = tempfile::tempdir().expect("tempdir");
        let cancel = CancellationToken::new();
        let attempt = Attempt::http(&url);
        let running = {
            let cancel = cancel.clone();
            let path = tmp.path().to_path_buf();
            async move { attempt.run_until(json!({}), &path, &cancel).await }
        };
        let running = tokio::spawn(running);
        tokio::task::spawn_blocking(move || {
            rx.recv().expect("connected");
            cancel.cancel();
            rx.recv_timeout(Duration::from_secs(10)).expect("hung up");
        })
        .await
        .expect("join");
        let r = running.await.expect("join");
        assert!(r.cancelled, "{r:?}");
        assert_eq!(r.detail, "cancelled; request dropped");
    }
}
