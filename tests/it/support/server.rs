//! `Server`: `hookrouter serve` started on `127.0.0.1:0`, its address read
//! from its log, killed on drop; and the calls tests make on a running one
//! (signals, the admin listener, what its log says ran).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{BIN, Resp, get, request, root, wait_until};

/// A running `hookrouter serve`.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub admin: Option<String>,
    pub log: Arc<Mutex<String>>,
    pub data: PathBuf,
}

/// Options for starting a server.
#[derive(Clone)]
pub struct ServerOpts {
    pub rules: PathBuf,
    pub data: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub admin: bool,
}

impl ServerOpts {
    pub fn new(rules: &Path, data: &Path) -> Self {
        ServerOpts {
            rules: rules.to_path_buf(),
            data: data.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            admin: false,
        }
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_owned());
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
    /// Add each of `args`, in order.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }
    pub fn start(self) -> Server {
        Server::start_with(self)
    }
}

impl Server {
    pub fn start(rules: &Path, data: &Path) -> Server {
        ServerOpts::new(rules, data).start()
    }

    pub fn start_with(opts: ServerOpts) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--rules")
            .arg(&opts.rules)
            .arg("--listen")
            .arg("127.0.0.1:0");
        // `--store` and `--data` are refused together. A server given
        // `--store` runs in the data file's folder instead, which then holds
        // its shell actions' files directory.
        let dir = if opts.args.iter().any(|a| a == "--store") {
            opts.data
                .parent()
                .map_or_else(root, std::path::Path::to_path_buf)
        } else {
            cmd.arg("--data").arg(&opts.data);
            root()
        };
        cmd.args(&opts.args)
            .current_dir(dir)
            .env_remove("HOOKROUTER_RULES")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if opts.admin {
            cmd.arg("--admin").arg("127.0.0.1:0");
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start hookrouter serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, Option<String>)>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut sent = false;
                let mut addr = None;
                let mut admin = None;
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    // Text logs carry `key=value`; `--log-format json` logs
                    // carry the same fields in an object.
                    let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
                    let get = |key: &str| match &json {
                        Some(v) => v[key].as_str().map(str::to_owned),
                        None => field(&line, &format!("{key}=")),
                    };
                    if let Some(a) = get("admin_addr") {
                        admin = Some(a);
                    }
                    if line.contains("Listening for webhooks.") {
                        addr = get("addr");
                    }
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                    if !sent && addr.is_some() {
                        let _ = tx.send((addr.clone().unwrap(), admin.clone()));
                        sent = true;
                    }
                }
            });
        }
        let (addr, admin) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            admin,
            log,
            data: opts.data,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.as_deref().expect("started with admin")
        )
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the log contains `needle` `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.log().matches(needle).count() >= count)
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for exit.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request("POST", &self.url(path), headers, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_owned())
}

/// Start a server whose data file is in a fresh tempdir. `rules` gives the
/// rule file or folder to serve, given that tempdir (so a test can write its
/// rules there first); `opts` adds to the options.
pub fn start_fresh(
    rules: impl FnOnce(&Path) -> PathBuf,
    opts: impl FnOnce(ServerOpts) -> ServerOpts,
) -> (TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = rules(dir.path());
    let server = opts(ServerOpts::new(&rules, &dir.path().join("data.redb"))).start();
    (dir, server)
}

/// GET `path` on the admin listener, with `token` as a bearer token if given.
pub fn admin_get(server: &Server, path: &str, token: Option<&str>) -> Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    get(&server.admin_url(path), &headers)
}

/// The admin listener's `/metrics` text; it must answer 200.
pub fn metrics_text(server: &Server, token: Option<&str>) -> String {
    let resp = admin_get(server, "/metrics", token);
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.body
}

pub fn send_signal(server: &Server, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, sig).expect("send signal");
}

/// Ids in `<tag>-fired[<id>]` log lines, with how often each appears.
pub fn fired_counts(logs: &[String], tag: &str) -> BTreeMap<String, usize> {
    let needle = format!("{tag}-fired[");
    let mut out = BTreeMap::new();
    for log in logs {
        for line in log.lines() {
            if let Some(start) = line.find(&needle) {
                let rest = &line[start + needle.len()..];
                if let Some(end) = rest.find(']') {
                    *out.entry(rest[..end].to_owned()).or_insert(0) += 1;
                }
            }
        }
    }
    out
}
