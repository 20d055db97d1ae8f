//! `Browser`: Debian's headless Chromium driven through its `chromedriver`
//! (WebDriver, with `fantoccini`), one at a time; and what the console's
//! browser tests read off a page: elements, the navigation's HTTP status,
//! Content-Security-Policy violations, the console log, axe-core's WCAG
//! findings and screenshots.
//!
//! `Browser::start` returns `None` after a printed notice when the driver or
//! the browser is missing, and panics instead under `CI`, so CI never passes
//! without running these tests. Tests in one binary run on parallel threads;
//! a process-wide lock held by `Browser` keeps to one browser at a time (two
//! Chromiums on two shared cores make each test slow and flaky).
//!
//! `Session` wraps the async client in blocking calls on a runtime of its
//! own, so tests mix it freely with the blocking helpers of `support`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::{agent_with_timeout, wait_until};

/// The Debian packages' paths (`chromium-driver`, `chromium`), named
/// explicitly so no other browser on `PATH` is picked up.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// axe-core, vendored from npm (see `tests/fixtures/axe/README.md`).
const AXE: &str = include_str!("../../fixtures/axe/axe.min.js");

/// The WCAG levels the console must meet: 2.0 and 2.1, A and AA.
const AXE_TAGS: [&str; 4] = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"];

/// Runs first in every document, before the page's own code, and is not
/// subject to the page's CSP (it comes through DevTools). Registering the
/// CSP listener this early catches violations raised while the page
/// parses, which a listener added after load would miss. It also keeps
/// each `EventSource` the page opens, so a test can wait until the page's
/// live stream is connected instead of sleeping.
const OBSERVER: &str = r"
window.__csp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__csp.push(e.effectiveDirective + ' blocked ' + (e.blockedURI || '(inline)') +
    ' at ' + (e.sourceFile || document.URL) + ':' + e.lineNumber);
}, true);
if (window.EventSource) {
  const Original = window.EventSource;
  window.__streams = [];
  const Observed = function (url, options) {
    const source = new Original(url, options);
    window.__streams.push(source);
    return source;
  };
  Observed.prototype = Original.prototype;
  Object.assign(Observed, { CONNECTING: 0, OPEN: 1, CLOSED: 2 });
  window.EventSource = Observed;
}
";

static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// A running `chromedriver`, and the lock that makes it the only one.
pub struct Browser {
    driver: Child,
    port: u16,
    rt: tokio::runtime::Runtime,
    _log: TempDir,
    _one: MutexGuard<'static, ()>,
}

impl Browser {
    /// Start chromedriver on a free port; `None` (after saying so) when the
    /// driver or the browser is not installed and `CI` is unset.
    pub fn start() -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but {CHROMEDRIVER} or {CHROMIUM} is missing: the browser tests must run under CI"
            );
            eprintln!(
                "skipped: browser not available (install Debian's chromium and chromium-driver)"
            );
            return None;
        }
        // A test that failed while holding the lock poisons it; the next
        // one still gets its turn.
        let one = ONE_BROWSER
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let log = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("browser runtime");
        // A port found free may be taken before chromedriver binds it:
        // try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!(
                    "--log-path={}",
                    log.path().join("driver.log").display()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver");
            let ready = wait_until(Duration::from_secs(20), || {
                if matches!(driver.try_wait(), Ok(Some(_))) {
                    return true;
                }
                driver_ready(port)
            });
            if ready && driver.try_wait().ok().flatten().is_none() {
                return Some(Browser {
                    driver,
                    port,
                    rt,
                    _log: log,
                    _one: one,
                });
            }
            let _ = driver.kill();
            let _ = driver.wait();
        }
        panic!(
            "chromedriver did not start; its log:\n{}",
            std::fs::read_to_string(log.path().join("driver.log")).unwrap_or_default()
        );
    }

    /// A new browser window (its own profile), JavaScript on.
    pub fn session(&self) -> Session<'_> {
        self.session_with(true)
    }

    /// A new browser window with JavaScript turned off by the content
    /// setting a managed profile would use.
    pub fn session_without_js(&self) -> Session<'_> {
        self.session_with(false)
    }

    fn session_with(&self, js: bool) -> Session<'_> {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut prefs = json!({});
        if !js {
            prefs["profile.managed_default_content_settings.javascript"] = json!(2);
        }
        // The background-networking flags matter: with no network but
        // loopback, Chromium otherwise stalls on its own update and sync
        // requests.
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1200,700".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args, "prefs": prefs },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let caps: serde_json::Map<String, Value> = match caps {
            Value::Object(m) => m,
            _ => unreachable!("an object"),
        };
        let url = format!("http://127.0.0.1:{}", self.port);
        let client = self
            .rt
            .block_on(async {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&url)
                    .await
            })
            .expect("a chromedriver session");
        let session = Session {
            rt: &self.rt,
            client: Some(client),
            js,
            _profile: profile,
        };
        if js {
            session.cdp(
                "Page.addScriptToEvaluateOnNewDocument",
                json!({ "source": OBSERVER }),
            );
        }
        session
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// chromedriver's `/status` says it takes sessions; `false` while it
/// does not answer yet.
fn driver_ready(port: u16) -> bool {
    let Ok(mut resp) = agent_with_timeout(Duration::from_secs(2))
        .get(format!("http://127.0.0.1:{port}/status"))
        .call()
    else {
        return false;
    };
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    serde_json::from_str::<Value>(&text).is_ok_and(|v| v["value"]["ready"] == true)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One browser window. Every call blocks until the browser answered; a
/// WebDriver error is a test failure, with the error in the message.
pub struct Session<'a> {
    rt: &'a tokio::runtime::Runtime,
    client: Option<Client>,
    js: bool,
    _profile: TempDir,
}

/// A chromedriver command the WebDriver protocol has no name for, sent to
/// this session: `path` is under `/session/{id}/`.
#[derive(Debug)]
struct Extension {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for Extension {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

impl Session<'_> {
    fn client(&self) -> &Client {
        self.client.as_ref().expect("open session")
    }

    fn block<T, E: std::fmt::Debug>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, E>>,
    ) -> T {
        match self.rt.block_on(fut) {
            Ok(v) => v,
            Err(e) => panic!("browser: {what}: {e:?}"),
        }
    }

    /// A DevTools command, through chromedriver.
    fn cdp(&self, cmd: &str, params: Value) -> Value {
        let ext = Extension {
            path: "goog/cdp/execute",
            body: json!({ "cmd": cmd, "params": params }),
        };
        self.block(cmd, self.client().issue_cmd(ext))
    }

    /// Load `url` and wait for the page to finish loading.
    pub fn goto(&self, url: &str) {
        self.block(&format!("goto {url}"), self.client().goto(url));
    }

    pub fn refresh(&self) {
        self.block("refresh", self.client().refresh());
    }

    pub fn current_url(&self) -> String {
        self.block("current url", self.client().current_url())
            .to_string()
    }

    /// Run `script` as a function body in the page; its return value.
    /// WebDriver scripts are not subject to the page's CSP.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.block(
            &format!("execute {script}"),
            self.client().execute(script, args),
        )
    }

    /// Poll `script` (a function body returning a boolean) until it
    /// returns true or `timeout` passes.
    pub fn wait_js(&self, timeout: Duration, script: &str) -> bool {
        let start = Instant::now();
        loop {
            if self.execute(script, vec![]) == Value::Bool(true) {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the page has a live `EventSource` connected (its
    /// response head arrived); false if none is within `timeout`.
    pub fn wait_stream_open(&self, timeout: Duration) -> bool {
        self.wait_js(
            timeout,
            "return (window.__streams || []).some(s => s.readyState === 1);",
        )
    }

    /// The HTTP status the current document was served with (Navigation
    /// Timing; needs JavaScript on in this session).
    pub fn status(&self) -> u16 {
        let v = self.execute(
            "const n = performance.getEntriesByType('navigation')[0]; return n ? n.responseStatus : 0;",
            vec![],
        );
        u16::try_from(v.as_u64().unwrap_or(0)).unwrap_or(0)
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> usize {
        let v = self.execute(
            "return document.querySelectorAll(arguments[0]).length;",
            vec![json!(css)],
        );
        usize::try_from(v.as_u64().unwrap_or(0)).unwrap_or(0)
    }

    /// The visible text of each element matching `css`, in document order.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let elements = self.block(
            &format!("find {css}"),
            self.client().find_all(Locator::Css(css)),
        );
        elements
            .iter()
            .map(|e| self.block("text", e.text()))
            .collect()
    }

    /// The visible text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let e = self.block(
            &format!("find {css}"),
            self.client().find(Locator::Css(css)),
        );
        self.block("text", e.text())
    }

    /// An attribute of the first element matching `css`.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        let e = self.block(
            &format!("find {css}"),
            self.client().find(Locator::Css(css)),
        );
        self.block("attr", e.attr(name))
    }

    /// The whole page's visible text.
    pub fn page_text(&self) -> String {
        self.text("body")
    }

    /// Click the first element matching `css` (as a person would: WebDriver
    /// scrolls it into view and sends a real click).
    pub fn click(&self, css: &str) {
        let e = self.block(
            &format!("find {css}"),
            self.client().find(Locator::Css(css)),
        );
        self.block(&format!("click {css}"), e.click());
    }

    /// Type `text` into the first element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.block(
            &format!("find {css}"),
            self.client().find(Locator::Css(css)),
        );
        self.block("clear", e.clear());
        self.block(&format!("type into {css}"), e.send_keys(text));
    }

    /// The session's cookies for the current page, as `(name, value,
    /// http_only, same_site)`; HttpOnly ones included (WebDriver sees them).
    pub fn cookies(&self) -> Vec<(String, String, bool, String)> {
        self.block("cookies", self.client().get_all_cookies())
            .into_iter()
            .map(|c| {
                (
                    c.name().to_owned(),
                    c.value().to_owned(),
                    c.http_only().unwrap_or(false),
                    c.same_site().map(|s| s.to_string()).unwrap_or_default(),
                )
            })
            .collect()
    }

    /// What went wrong on the current document: Content-Security-Policy
    /// violations, from the listener installed before the page ran
    /// (JavaScript sessions) and from the browser's console log (every
    /// session), and uncaught script errors from that log. Reading the log
    /// drains it, so each call reports what happened since the last.
    pub fn page_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.js {
            match self.execute("return window.__csp || null;", vec![]) {
                Value::Array(list) => {
                    out.extend(
                        list.iter()
                            .map(|x| format!("CSP: {}", x.as_str().unwrap_or("?"))),
                    );
                }
                _ => out.push(format!(
                    "the CSP listener did not run on {}",
                    self.current_url()
                )),
            }
        }
        out.extend(
            self.console_log()
                .into_iter()
                .filter(|l| l.contains("Content Security Policy") || l.contains("Uncaught")),
        );
        out
    }

    /// The browser console's entries since the last read, as
    /// `LEVEL message` lines.
    pub fn console_log(&self) -> Vec<String> {
        let ext = Extension {
            path: "se/log",
            body: json!({ "type": "browser" }),
        };
        let v = self.block("browser log", self.client().issue_cmd(ext));
        v.as_array()
            .map(|list| {
                list.iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e["level"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// axe-core's WCAG 2.0/2.1 A and AA violations on the current page,
    /// one line each (rule, impact, help, the offending markup). axe is
    /// injected through WebDriver, since the console's CSP forbids a
    /// script the console does not serve itself.
    pub fn axe(&self) -> Vec<String> {
        // axe and the run that uses it go in one script, so a document
        // that changes between two calls cannot lose it.
        let script = format!(
            r"{AXE}
;const done = arguments[arguments.length - 1];
window.axe.run(document, {{ runOnly: {{ type: 'tag', values: arguments[0] }} }})
  .then(r => done(r.violations.map(v => v.id + ' (' + v.impact + '): ' + v.help + ' — ' +
     v.nodes.map(n => n.html).join(' | '))))
  .catch(e => done(['axe failed: ' + e]));
"
        );
        let v = self.block(
            "axe",
            self.client().execute_async(&script, vec![json!(AXE_TAGS)]),
        );
        v.as_array()
            .map(|l| {
                l.iter()
                    .map(|x| x.as_str().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_else(|| vec![format!("axe returned {v}")])
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        self.block("screenshot", self.client().screenshot())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.rt.block_on(client.close());
        }
    }
}

/// A tiny HTTP server on another port of loopback, so on another origin
/// than the console: it answers every request with one fixed HTML page and
/// the extra `headers` (a hostile page for the CSRF test, pages the
/// harness checks itself against).
pub struct Site {
    pub addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Site {
    pub fn serve(html: &str, headers: &[(&str, &str)]) -> Site {
        use std::io::{Read as _, Write as _};
        let listener = TcpListener::bind("127.0.0.1:0").expect("site listener");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut head =
            String::from("HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            html.len()
        ));
        let answer = format!("{head}{html}").into_bytes();
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            // Read the head; the page is the same whatever
                            // was asked.
                            let mut buf = [0u8; 8192];
                            let mut got = Vec::new();
                            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                                match s.read(&mut buf) {
                                    Ok(0) | Err(_) => break,
                                    Ok(n) => got.extend_from_slice(&buf[..n]),
                                }
                            }
                            let _ = s.write_all(&answer);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        }
        Site { addr, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
