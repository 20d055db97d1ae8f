//! Test support: run the real binary, talk to it over HTTP, and stand in for
//! the services its actions call.
//!
//! `Hookrouter` runs one-shot commands (`check`, `test`, `schema`) and
//! captures their output. `Server` starts `hookrouter serve` on
//! `127.0.0.1:0`, reads the bound address from its log, and kills it on
//! drop. `Receiver` is a local HTTP server that records requests and answers
//! with scripted statuses.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_hookrouter");

/// The repository root, for `rules/` and `tests/fixtures/`.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// Run the binary with `args`; never inherits HOOKROUTER_* from the caller.
pub fn run(args: &[&str]) -> Output {
    run_in(&root(), args)
}

pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("HOOKROUTER_RULES")
        .env_remove("RUST_LOG")
        .output()
        .expect("run hookrouter")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Write `text` to `dir/name`, creating folders.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Unix time in seconds.
pub fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("seconds")
}

/// A fresh id per call (`<tag>-<pid>-<n>`), so no two requests of a test
/// run share one by accident.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Poll `f` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

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
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(&opts.data)
            .args(&opts.args)
            .current_dir(root())
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

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// One HTTP request; statuses are returned, never errors.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.to_vec()).expect("request");
    let mut resp = agent().run(req).expect("send request");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Resp {
        status,
        headers,
        body,
    }
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers, b"")
}

/// The headers `provider` would send for `body`, signed with `secret`.
pub fn signed_headers(
    provider: &str,
    secret: &str,
    body: &[u8],
    id: &str,
) -> Vec<(String, String)> {
    let settings = hookrouter::providers::ProviderSettings {
        secrets: vec![hookrouter::providers::Secret::new(secret)],
        ..Default::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    hookrouter::providers::sign(provider, &settings, body, id, now, "http://localhost/")
        .expect("sign")
}

pub fn as_refs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    /// The request line and headers, as text.
    pub fn head(&self) -> String {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.url);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A scripted answer: status, extra headers, a delay before answering, and
/// whether the body echoes the request's head.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
    pub echo: bool,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Answer {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            echo: false,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// Answer with the request line and headers as the body.
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }
}

/// A local HTTP server (hyper, one task per connection, keep-alive) that
/// records every request and answers from a script, then with its default
/// answer once the script runs out.
pub struct Receiver {
    pub addr: String,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::answering(Answer::status(200))
    }

    pub fn start_on(addr: &str) -> Receiver {
        Self::serve(addr, Answer::status(200))
    }

    /// A receiver whose every answer is `default` unless scripted.
    pub fn answering(default: Answer) -> Receiver {
        Self::serve("127.0.0.1:0", default)
    }

    fn serve(addr: &str, default: Answer) -> Receiver {
        let listener = std::net::TcpListener::bind(addr).expect("receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Mutex<VecDeque<Answer>>> = Arc::new(Mutex::new(VecDeque::new()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        {
            let requests = requests.clone();
            let script = script.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    loop {
                        let stream = tokio::select! {
                            _ = &mut stop_rx => break,
                            r = listener.accept() => match r {
                                Ok((s, _)) => s,
                                Err(_) => continue,
                            },
                        };
                        let requests = requests.clone();
                        let script = script.clone();
                        let default = default.clone();
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let requests = requests.clone();
                                let script = script.clone();
                                let default = default.clone();
                                async move {
                                    Ok::<_, std::convert::Infallible>(
                                        answer(req, &requests, &script, &default).await,
                                    )
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            });
        }
        Receiver {
            addr,
            requests,
            script,
            stop: Some(stop_tx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Queue answers for the next requests.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.script.lock().unwrap().extend(answers);
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.count() >= n)
    }

    /// Each request's line and headers, as text.
    pub fn heads(&self) -> Vec<String> {
        self.requests().iter().map(Recorded::head).collect()
    }

    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.requests().into_iter().map(|r| r.body).collect()
    }
}

async fn answer(
    req: hyper::Request<hyper::body::Incoming>,
    requests: &Mutex<Vec<Recorded>>,
    script: &Mutex<VecDeque<Answer>>,
    default: &Answer,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt as _;
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        url: parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at,
    };
    let plan = script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| default.clone());
    let text = if plan.echo {
        format!("refused; you sent:\n{}", recorded.head())
    } else {
        "ok".to_owned()
    };
    requests.lock().unwrap().push(recorded);
    tokio::time::sleep(plan.delay).await;
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
    *resp.status_mut() = hyper::StatusCode::from_u16(plan.status).unwrap_or(hyper::StatusCode::OK);
    for (k, v) in &plan.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
