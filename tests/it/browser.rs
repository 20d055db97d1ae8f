//! The console (`/ui/` on the admin listener) in a real browser: headless
//! Chromium through chromedriver (`support::Browser`), against the real
//! binary with `--admin` on `127.0.0.1:0`, `--admin-token`, and a real
//! receiver behind an HTTP action.
//!
//! Covered: the login and its cookie, live rows, a failing delivery's
//! attempts and the dead-letter list, replay with JavaScript on and off,
//! hostile data shown as text, no CSP violation on any page, a cross-origin
//! form refused, a foreign `Host` refused, axe-core's WCAG A/AA checks on
//! every page, and SIGTERM with a live page open. The markup hooks the
//! tests use (ids, classes) are the console's stable contract.
//!
//! Without chromedriver and Chromium the tests print a notice and pass;
//! under `CI` they fail instead. One browser runs at a time.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::support::{
    Answer, Browser, Receiver, Server, ServerOpts, Session, Site, admin_get, as_refs, get, request,
    root, run, signed_headers, stdout, unique, wait_until, write,
};

const SECRET: &str = "console-test-secret";
const TOKEN: &str = "console-test-admin-token";
const WAIT: Duration = Duration::from_secs(20);

/// Markup a hostile sender puts in every field it controls. None holds a
/// quote inside, so each survives JSON's escaping as the same text.
const SCRIPT: &str = "<script>window.__pwned=1</script>";
const IMG: &str = "<img src=x onerror=window.__pwned=2>";
const SVG: &str = "\"><svg onload=window.__pwned=3>";
/// What of `SVG` a JSON string shows unchanged (its quote is escaped).
const SVG_TEXT: &str = "><svg onload=window.__pwned=3>";

/// Elements that data must never become, and attributes that run script.
const FOREIGN: &str = "img, svg, iframe, object, embed, [onerror], [onload], script:not([src])";

/// A server with the console and a token, its rules, and the receiver its
/// HTTP action calls.
struct Console {
    dir: TempDir,
    receiver: Receiver,
    server: Server,
}

impl Console {
    /// Rule `notify` sends every event of source `gh` to the receiver,
    /// trying `attempts` times `backoff` apart; rule `on-release` matches
    /// only releases, so it shows as "did not match" for the rest.
    fn start(attempts: u32, backoff: &str, extra: &[&str]) -> Console {
        let receiver = Receiver::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = write(
            dir.path(),
            "rules.yaml",
            &format!(
                r#"sources:
  - name: gh
    provider: github
    secret: {SECRET}
rules:
  - name: notify
    source: gh
    actions:
      - http:
          url: "{url}/hook"
          json: {{ id: "{{{{ event.id }}}}" }}
        retry: {{ attempts: {attempts}, backoff: {backoff}, max_backoff: {backoff} }}
  - name: on-release
    source: gh
    event: release
    actions:
      - log: "release"
"#,
                url = receiver.url("")
            ),
        );
        let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
            .admin()
            .args(&["--admin-token", TOKEN])
            .args(extra)
            .start();
        Console {
            dir,
            receiver,
            server,
        }
    }

    fn ui(&self, path: &str) -> String {
        self.server.admin_url(path)
    }

    /// POST a signed GitHub event of type `kind`; its key.
    fn send(&self, kind: &str, body: &Value) -> String {
        let body = body.to_string().into_bytes();
        let mut headers = signed_headers("github", SECRET, &body, &unique("console"));
        headers.push(("X-GitHub-Event".into(), kind.into()));
        headers.push(("Content-Type".into(), "application/json".into()));
        self.post(&headers, &body)
    }

    fn post(&self, headers: &[(String, String)], body: &[u8]) -> String {
        let resp = self.server.post("/hooks/gh", &as_refs(headers), body);
        assert_eq!(resp.status, 202, "{resp:?}\nlog:\n{}", self.server.log());
        resp.json()["key"].as_str().expect("key").to_owned()
    }

    /// The event as the admin API shows it.
    fn event(&self, key: &str) -> Value {
        admin_get(&self.server, &format!("/api/events/{key}"), Some(TOKEN)).json()
    }

    /// The event's deliveries, once every one of them is in a final state
    /// (`done` or `dead`) and there are at least `n`.
    fn settled(&self, key: &str, n: usize) -> Vec<Value> {
        let mut last = Value::Null;
        let ok = wait_until(WAIT, || {
            last = self.event(key);
            let list = deliveries(&last);
            list.len() >= n
                && list
                    .iter()
                    .all(|d| d["state"] == "done" || d["state"] == "dead")
        });
        assert!(
            ok,
            "deliveries did not settle: {last:#}\nlog:\n{}",
            self.server.log()
        );
        deliveries(&last)
    }
}

fn deliveries(ev: &Value) -> Vec<Value> {
    ev["deliveries"].as_array().cloned().unwrap_or_default()
}

/// Log `session` in through the login form, as a person would.
fn login(session: &Session, c: &Console) {
    session.goto(&c.ui("/ui/login"));
    session.type_into("#token", TOKEN);
    session.click("#login [type=submit]");
    assert!(
        wait_until(WAIT, || session.current_url().ends_with("/ui/")),
        "login did not land on /ui/: {}",
        session.current_url()
    );
}

/// The row of the events table for `key`, as a CSS selector.
fn row(key: &str) -> String {
    format!("#event-rows tr.event-row[data-key=\"{key}\"]")
}

/// One row of an attempts table, its cells found by their column headers.
#[derive(Debug, Clone, serde::Deserialize)]
struct Attempt {
    status: String,
    excerpt: String,
    next_retry: String,
}

/// Each attempt row on the current event page, in document order.
fn attempts(session: &Session) -> Vec<Attempt> {
    let v = session.execute(
        r"const out = [];
        for (const t of document.querySelectorAll('table.attempts')) {
          const heads = Array.from(t.querySelectorAll('thead th')).map(h => h.innerText.trim().toLowerCase());
          const col = re => heads.findIndex(h => re.test(h));
          const status = col(/status/), excerpt = col(/output|error|excerpt|response/), next = col(/next/);
          for (const r of t.querySelectorAll('tr.attempt')) {
            const cell = i => (i >= 0 && r.cells[i]) ? r.cells[i].innerText.trim() : '(no such column)';
            out.push({ status: cell(status), excerpt: cell(excerpt), next_retry: cell(next) });
          }
        }
        return out;",
        vec![],
    );
    serde_json::from_value(v).expect("attempt rows")
}

/// A next-retry cell that names a time: not empty, not "none" (or "none:
/// dead" and the like), not a dash.
fn names_a_time(cell: &str) -> bool {
    let c = cell.trim().to_lowercase();
    !c.is_empty()
        && !c.starts_with("none")
        && !["-", "—", "dead", "(no such column)"].contains(&c.as_str())
}

#[test]
fn browser_harness_sees_csp_violations_script_errors_and_axe_findings() {
    // The checks the other tests rely on must be able to fail: a page that
    // breaks its own CSP, throws, and has an unlabelled input and an image
    // without text.
    let Some(browser) = Browser::start() else {
        return;
    };
    let bad = Site::serve(
        "<!doctype html><html><head><title>bad</title></head><body>\
         <script>throw new Error('boom')</script>\
         <img src=/x.png><input type=text></body></html>",
        &[("Content-Security-Policy", "script-src 'self'")],
    );
    let s = browser.session();
    s.goto(&bad.url("/"));
    let problems = s.page_problems();
    assert!(
        problems.iter().any(|p| p.starts_with("CSP: script-src")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("Content Security Policy")),
        "the console log shows it too: {problems:?}"
    );
    let findings = s.axe();
    assert!(
        findings.iter().any(|f| f.starts_with("image-alt")),
        "{findings:?}"
    );
    assert!(
        findings.iter().any(|f| f.starts_with("label")),
        "{findings:?}"
    );
    // Without the CSP the inline script runs and throws.
    let throws = Site::serve(
        "<!doctype html><title>t</title><script>throw new Error('boom')</script>",
        &[],
    );
    s.goto(&throws.url("/"));
    let problems = s.page_problems();
    assert!(
        problems.iter().any(|p| p.contains("Uncaught")),
        "{problems:?}"
    );
    drop(s);

    // A session without JavaScript really runs none.
    let on = Site::serve(
        "<!doctype html><title>t</title><p id=p>off</p>\
         <script>document.getElementById('p').textContent = 'on'</script>",
        &[],
    );
    let s = browser.session();
    s.goto(&on.url("/"));
    assert_eq!(s.text("#p"), "on");
    drop(s);
    let s = browser.session_without_js();
    s.goto(&on.url("/"));
    assert_eq!(s.text("#p"), "off");
}

#[test]
fn browser_auth_login_page_wrong_token_and_cookie_not_for_api() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let c = Console::start(1, "100ms", &[]);
    let s = browser.session();

    // No cookie: every page sends the browser to the login page.
    for path in ["/ui/", "/ui/status", "/ui/deliveries"] {
        s.goto(&c.ui(path));
        assert!(
            s.current_url().contains("/ui/login"),
            "{path} did not redirect to the login page: {}",
            s.current_url()
        );
    }

    // A wrong token: 401 and no cookie.
    s.type_into("#token", "not-the-token");
    s.click("#login [type=submit]");
    assert!(
        wait_until(WAIT, || s.status() == 401),
        "status {}: {}",
        s.status(),
        s.page_text()
    );
    let cookies = s.cookies();
    assert!(
        cookies
            .iter()
            .all(|(name, ..)| name != "hookrouter_session"),
        "{cookies:?}"
    );
    assert!(!s.page_text().contains(TOKEN));

    // The right one: the events page, and an HttpOnly, SameSite=Strict
    // session cookie.
    login(&s, &c);
    assert_eq!(s.status(), 200);
    assert!(s.count("#events") == 1, "{}", s.page_text());
    let cookies = s.cookies();
    let (_, value, http_only, same_site) = cookies
        .iter()
        .find(|(name, ..)| name == "hookrouter_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"))
        .clone();
    assert!(http_only, "{cookies:?}");
    assert_eq!(same_site, "Strict", "{cookies:?}");
    assert_ne!(value, TOKEN, "the cookie is not the token itself");

    // The cookie opens the console but never the API, which stays
    // bearer-only.
    let cookie = format!("hookrouter_session={value}");
    let ui = get(&c.ui("/ui/"), &[("Cookie", &cookie)]);
    assert_eq!(ui.status, 200, "{ui:?}");
    let api = get(&c.ui("/api/events"), &[("Cookie", &cookie)]);
    assert_eq!(api.status, 401, "{api:?}");
    let bearer = format!("Bearer {TOKEN}");
    let api = get(&c.ui("/api/events"), &[("Authorization", &bearer)]);
    assert_eq!(api.status, 200, "{api:?}");
    // And the browser itself, cookie in hand, gets 401 from the API.
    s.goto(&c.ui("/api/events"));
    assert_eq!(s.status(), 401);
}

/// `hookrouter sign`'s `Name: value` lines.
fn cli_sign(dir: &Path, body: &[u8], id: &str) -> Vec<(String, String)> {
    let file = dir.join(format!("{id}.json"));
    std::fs::write(&file, body).expect("body file");
    let out = run(&[
        "sign",
        "--provider",
        "github",
        "--secret",
        SECRET,
        "--body",
        file.to_str().expect("utf-8 path"),
        "--id",
        id,
    ]);
    assert!(out.status.success(), "{out:?}");
    stdout(&out)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn browser_live_row_arrives_without_reload() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let c = Console::start(1, "100ms", &[]);
    let s = browser.session();
    login(&s, &c);
    // A mark on this document: a reload would drop it.
    s.execute("window.__sameDocument = true;", vec![]);
    let rows_before = s.count("#event-rows tr.event-row");
    let live_before = s.text("#live");
    assert!(
        s.wait_stream_open(WAIT),
        "the page's live stream did not open"
    );

    let id = unique("live");
    let body = json!({ "ref": "refs/heads/main", "note": id }).to_string();
    let mut headers = cli_sign(c.dir.path(), body.as_bytes(), &id);
    headers.push(("X-GitHub-Event".into(), "push".into()));
    headers.push(("Content-Type".into(), "application/json".into()));
    let key = c.post(&headers, body.as_bytes());
    let sent = Instant::now();

    // The issue's bound: the row is there within 2 s of the 202.
    let shown = s.wait_js(
        Duration::from_secs(2),
        &format!(
            "return document.querySelector('{}') !== null;",
            row(&key).replace('\'', "\\'")
        ),
    );
    assert!(
        shown,
        "no live row for {key} within 2 s ({:?}); rows: {:?}\nlog:\n{}",
        sent.elapsed(),
        s.texts("#event-rows tr"),
        c.server.log()
    );
    assert_eq!(
        s.execute("return window.__sameDocument === true;", vec![]),
        json!(true),
        "the page reloaded"
    );
    assert_eq!(s.count("#event-rows tr.event-row"), rows_before + 1);
    // Newest first, with its source and type, linking to its page.
    let first = s.attr("#event-rows tr.event-row", "data-key");
    assert_eq!(first.as_deref(), Some(key.as_str()));
    let text = s.text(&row(&key));
    assert!(text.contains("gh") && text.contains("push"), "{text}");
    let href = s
        .attr(&format!("{} a", row(&key)), "href")
        .unwrap_or_default();
    assert!(href.ends_with(&format!("/ui/events/{key}")), "{href}");
    // The live region announced it.
    assert!(
        s.wait_js(
            WAIT,
            &format!(
                "return document.getElementById('live').innerText !== {};",
                json!(live_before)
            )
        ),
        "the live region said nothing new: {:?}",
        s.text("#live")
    );
    assert!(s.page_problems().is_empty(), "{:?}", s.page_problems());
}

#[test]
fn browser_failing_delivery_shows_attempts_then_dead_letter() {
    let Some(browser) = Browser::start() else {
        return;
    };
    // Five seconds (±20%) between tries: time enough to load the event page
    // between two of them and see the next retry still ahead.
    let c = Console::start(3, "5s", &[]);
    c.receiver
        .script((0..3).map(|_| Answer::status(500).body("upstream broke: E42")));
    let s = browser.session();
    login(&s, &c);
    let key = c.send("push", &json!({ "ref": "refs/heads/main" }));
    let page = c.ui(&format!("/ui/events/{key}"));

    // After the first try: one attempt, its status and excerpt, and when
    // the next one is due; not dead yet.
    assert!(c.receiver.wait_count(1, WAIT));
    let mut seen = Vec::new();
    let ok = wait_until(WAIT, || {
        s.goto(&page);
        seen = attempts(&s);
        !seen.is_empty()
    });
    assert!(ok, "no attempt on the event page: {}", s.page_text());
    assert_eq!(
        c.receiver.count(),
        1,
        "the second try came before the page showed the first"
    );
    assert_eq!(seen.len(), 1, "{seen:?}");
    let a = &seen[0];
    assert!(a.status.contains("500"), "{a:?}");
    assert!(a.excerpt.contains("upstream broke: E42"), "{a:?}");
    assert!(names_a_time(&a.next_retry), "{a:?}");
    let states = s.texts("section.rule[data-rule=\"notify\"] span.state");
    assert!(!states.iter().any(|t| t == "dead"), "{states:?}");

    // After the third: dead, three attempts with statuses and excerpts.
    c.settled(&key, 1);
    s.goto(&page);
    let seen = attempts(&s);
    assert_eq!(seen.len(), 3, "{seen:?}\n{}", s.page_text());
    for a in &seen {
        assert!(a.status.contains("500"), "{a:?}");
        assert!(a.excerpt.contains("upstream broke: E42"), "{a:?}");
    }
    // The first two name when the next try was due; the last, none.
    assert!(
        seen[..2].iter().all(|a| names_a_time(&a.next_retry)),
        "{seen:?}"
    );
    assert!(!names_a_time(&seen[2].next_retry), "{seen:?}");
    let states = s.texts("section.rule[data-rule=\"notify\"] span.state");
    assert!(states.iter().any(|t| t == "dead"), "{states:?}");
    assert_eq!(c.receiver.count(), 3);

    // And in the dead-letter list, first on the deliveries page.
    s.goto(&c.ui("/ui/deliveries"));
    assert!(
        s.count(&format!("#dead a[href$=\"/ui/events/{key}\"]")) >= 1,
        "{}",
        s.page_text()
    );
    let order = s.execute(
        "const d = document.getElementById('dead'), a = document.getElementById('deliveries');
         return !!(d && (!a || (d.compareDocumentPosition(a) & Node.DOCUMENT_POSITION_FOLLOWING)));",
        vec![],
    );
    assert_eq!(order, json!(true), "dead letters come first");
}

/// An event whose one delivery died after one 500.
fn dead_event(c: &Console) -> String {
    c.receiver.script([Answer::status(500).body("down")]);
    let key = c.send("push", &json!({ "ref": "refs/heads/main" }));
    let list = c.settled(&key, 1);
    assert_eq!(list[0]["state"], "dead", "{list:?}");
    key
}

#[test]
fn browser_replay_delivers_once_more_with_and_without_javascript() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let c = Console::start(1, "100ms", &[]);
    let key = dead_event(&c);
    assert_eq!(c.receiver.count(), 1);
    let page = c.ui(&format!("/ui/events/{key}"));

    // The receiver answers 200 from now on. With JavaScript: click Replay.
    {
        let s = browser.session();
        login(&s, &c);
        s.goto(&page);
        assert_eq!(attempts(&s).len(), 1);
        s.click("form.replay button[type=submit]");
        assert!(c.receiver.wait_count(2, WAIT), "no replay delivered");
        c.settled(&key, 2);
        // Exactly once more.
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(c.receiver.count(), 2);
        // The history is kept: the dead try and the new one.
        s.goto(&page);
        let seen = attempts(&s);
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.iter().any(|a| a.status.contains("500")), "{seen:?}");
        assert!(seen.iter().any(|a| a.status.contains("200")), "{seen:?}");
        let states = s.texts("span.state");
        assert!(states.iter().any(|t| t == "dead"), "{states:?}");
        assert!(s.page_problems().is_empty(), "{:?}", s.page_problems());
    }

    // Without JavaScript the same button posts the form and the answer
    // brings the browser back to the event page.
    let s = browser.session_without_js();
    login(&s, &c);
    s.goto(&page);
    s.click("form.replay button[type=submit]");
    assert!(c.receiver.wait_count(3, WAIT), "no replay delivered");
    assert!(
        wait_until(WAIT, || {
            let url = s.current_url();
            url.contains(&format!("/ui/events/{key}")) && !url.contains("/replay")
        }),
        "{}",
        s.current_url()
    );
    c.settled(&key, 3);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.receiver.count(), 3);
    s.goto(&page);
    assert_eq!(s.count("table.attempts tr.attempt"), 3);
}

/// Checks on the current page that hostile data stayed text: nothing of
/// it became an element, no script of it ran, and it reads as written.
fn assert_inert(s: &Session, what: &str, shows: &[&str]) {
    assert_eq!(
        s.execute("return typeof window.__pwned;", vec![]),
        json!("undefined"),
        "{what}: a payload ran"
    );
    let foreign = s.execute(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.outerHTML);",
        vec![json!(FOREIGN)],
    );
    assert_eq!(foreign, json!([]), "{what}: elements from data");
    let text = s.page_text();
    for needle in shows {
        assert!(
            text.contains(needle),
            "{what} does not show {needle:?} as text:\n{text}"
        );
    }
    assert!(
        s.page_problems().is_empty(),
        "{what}: {:?}",
        s.page_problems()
    );
}

#[test]
fn browser_hostile_payload_is_shown_as_text_everywhere() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let c = Console::start(1, "100ms", &[]);
    let hostile = format!("{SCRIPT}{IMG}{SVG}");
    c.receiver
        .script([Answer::status(500).body(&format!("upstream: {hostile}"))]);
    let s = browser.session();
    login(&s, &c);
    assert_inert(&s, "the empty events page", &[]);

    // The live row, as it arrives.
    assert!(
        s.wait_stream_open(WAIT),
        "the page's live stream did not open"
    );
    let body = json!({ "ref": "refs/heads/main", "a": SCRIPT, "b": IMG, "c": SVG });
    let key = c.send(&hostile, &body);
    assert!(
        s.wait_js(
            WAIT,
            &format!("return document.querySelector('{}') !== null;", row(&key))
        ),
        "no live row"
    );
    assert_inert(&s, "the live row", &[]);
    let live = s.text(&row(&key));
    assert!(
        live.contains(&hostile),
        "the type as text in the live row: {live}"
    );
    c.settled(&key, 1);

    // Every page, loaded fresh.
    s.goto(&c.ui("/ui/"));
    assert_inert(&s, "the events page", &[&hostile]);
    s.goto(&c.ui(&format!("/ui/events/{key}")));
    assert_inert(
        &s,
        "the event page",
        &[&hostile, SCRIPT, IMG, SVG_TEXT, "upstream: "],
    );
    let excerpt = attempts(&s)
        .first()
        .map(|a| a.excerpt.clone())
        .unwrap_or_default();
    assert!(excerpt.contains(SCRIPT), "the excerpt as text: {excerpt:?}");
    s.goto(&c.ui("/ui/deliveries"));
    assert_inert(&s, "the deliveries page", &[]);
    s.goto(&c.ui("/ui/status"));
    assert_inert(&s, "the status page", &[]);
    s.goto(&c.ui(&format!("/ui/?type={}", url_encode(&hostile))));
    assert_inert(&s, "the events page filtered by the type", &[&hostile]);
}

fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Every console page the tests walk, with one event of each outcome on
/// it: `(name, url)`. The bulk-replay confirmation is reached by its form.
fn walk(s: &Session, c: &Console, mut visit: impl FnMut(&str, &Session)) {
    let dead = dead_event(c);
    let release = c.send("release", &json!({ "action": "published" }));
    visit("events", s);
    for (name, path) in [
        (
            "events filtered",
            "/ui/?state=dead&source=gh&type=push".to_owned(),
        ),
        ("event (dead delivery)", format!("/ui/events/{dead}")),
        (
            "event (no rule matched but one)",
            format!("/ui/events/{release}"),
        ),
        ("deliveries", "/ui/deliveries".to_owned()),
        ("dead letters", "/ui/deliveries?state=dead".to_owned()),
        ("status", "/ui/status".to_owned()),
    ] {
        s.goto(&c.ui(&path));
        assert_eq!(s.status(), 200, "{name}: {}", s.page_text());
        visit(name, s);
    }
    s.goto(&c.ui("/ui/deliveries"));
    s.click("form[action$=\"/ui/deliveries/replay\"] [type=submit]");
    assert!(
        wait_until(WAIT, || s.count("input[name=confirm][value=yes]") == 1),
        "no confirmation step: {}",
        s.page_text()
    );
    visit("bulk replay confirmation", s);
}

#[test]
fn browser_csp_no_violation_on_any_page() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let c = Console::start(1, "100ms", &[]);
    let s = browser.session();
    s.goto(&c.ui("/ui/login"));
    let mut found = Vec::new();
    found.extend(s.page_problems().into_iter().map(|p| format!("login: {p}")));
    let headers = get(&c.ui("/ui/login"), &[]).headers;
    let csp = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-security-policy"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert_eq!(
        csp,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    login(&s, &c);
    walk(&s, &c, |name, s| {
        found.extend(
            s.page_problems()
                .into_iter()
                .map(|p| format!("{name}: {p}")),
        );
    });
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn browser_accessibility_axe_finds_no_wcag_violation() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let c = Console::start(1, "100ms", &[]);
    let s = browser.session();
    let mut found = Vec::new();
    s.goto(&c.ui("/ui/login"));
    found.extend(s.axe().into_iter().map(|f| format!("login: {f}")));
    // The wrong-token page is a page too.
    s.type_into("#token", "wrong");
    s.click("#login [type=submit]");
    assert!(wait_until(WAIT, || s.status() == 401), "{}", s.page_text());
    found.extend(s.axe().into_iter().map(|f| format!("login refused: {f}")));
    login(&s, &c);
    walk(&s, &c, |name, s| {
        found.extend(s.axe().into_iter().map(|f| format!("{name}: {f}")));
    });
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn browser_csrf_cross_origin_form_is_refused_and_nothing_replays() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let c = Console::start(1, "100ms", &[]);
    let key = dead_event(&c);
    let s = browser.session();
    login(&s, &c);
    s.goto(&c.ui(&format!("/ui/events/{key}")));
    // The real CSRF value, as if it had leaked: only the origin checks
    // stand between the page below and a replay. The session cookie goes
    // along, since both pages are on 127.0.0.1 (one site).
    let csrf = s
        .attr("form.replay input[name=csrf]", "value")
        .expect("a csrf field");
    let action = c.ui(&format!("/ui/events/{key}/replay"));
    for (what, token) in [("leaked token", csrf.as_str()), ("guessed token", "guess")] {
        let evil = Site::serve(
            &format!(
                "<!doctype html><title>win a prize</title>\
                 <form id=f method=post action=\"{action}\">\
                 <input type=hidden name=csrf value=\"{token}\"></form>\
                 <script>document.getElementById('f').submit()</script>"
            ),
            &[],
        );
        s.goto(&evil.url("/"));
        assert!(
            wait_until(WAIT, || s.current_url().starts_with(&c.ui("/"))),
            "{what}: the form was not posted: {}",
            s.current_url()
        );
        // Refused where it was posted, not answered with the redirect back
        // to the event page that a replay gets.
        assert_eq!(s.current_url(), action, "{what}: the post was accepted");
        assert_eq!(s.status(), 403, "{what}: {}", s.page_text());
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(c.receiver.count(), 1, "a refused replay was delivered");
    assert_eq!(
        deliveries(&c.event(&key)).len(),
        1,
        "a refused replay was recorded"
    );

    // The console's own origin without the CSRF field is refused too: a
    // client that sends no Origin at all (not a browser) still needs it.
    let cookie = s
        .cookies()
        .into_iter()
        .find(|(n, ..)| n == "hookrouter_session")
        .map(|(_, v, ..)| format!("hookrouter_session={v}"))
        .expect("session cookie");
    let resp = request(
        "POST",
        &action,
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        b"csrf=guess",
    );
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(deliveries(&c.event(&key)).len(), 1);
}

/// One raw request with exactly this `Host`; the status.
fn status_with_host(addr: &str, path: &str, host: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("status line");
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn console_foreign_host_gets_421() {
    // A plain client: a browser sets `Host` from the URL, which is what a
    // DNS-rebinding page exploits and what this refuses.
    let c = Console::start(1, "100ms", &[]);
    let addr = c.server.admin.clone().expect("admin");
    for path in [
        "/ui/",
        "/ui/login",
        "/ui/status",
        "/ui/static/app.js",
        "/ui/stream",
    ] {
        assert_eq!(status_with_host(&addr, path, "evil.example"), 421, "{path}");
        assert_eq!(
            status_with_host(
                &addr,
                path,
                &format!(
                    "evil.example:{}",
                    addr.rsplit(':').next().unwrap_or_default()
                )
            ),
            421,
            "{path}"
        );
    }
    // Its own address is answered (the login page needs no cookie).
    assert_eq!(status_with_host(&addr, "/ui/login", &addr), 200);
}

#[test]
fn browser_shutdown_with_live_page_open_exits_within_grace() {
    const GRACE: Duration = Duration::from_secs(10);
    let Some(browser) = Browser::start() else {
        return;
    };
    let mut c = Console::start(1, "100ms", &["--grace", "10s"]);
    let s = browser.session();
    login(&s, &c);
    // A stream of our own as well, to see it end.
    let cookie = s
        .cookies()
        .into_iter()
        .find(|(n, ..)| n == "hookrouter_session")
        .map(|(_, v, ..)| v)
        .expect("session cookie");
    let addr = c.server.admin.clone().expect("admin");
    let mut stream = TcpStream::connect(&addr).expect("connect");
    write!(
        stream,
        "GET /ui/stream HTTP/1.1\r\nHost: {addr}\r\nCookie: hookrouter_session={cookie}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("send");
    stream
        .set_read_timeout(Some(GRACE + Duration::from_secs(10)))
        .expect("timeout");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).expect("stream answer");
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    assert!(
        s.wait_stream_open(WAIT),
        "the page's live stream did not open"
    );

    let start = Instant::now();
    let status = c.server.terminate().expect("hookrouter exited");
    let took = start.elapsed();
    assert!(status.success(), "{status:?}\nlog:\n{}", c.server.log());
    assert!(
        took < GRACE,
        "SIGTERM took {took:?}, the grace is {GRACE:?}: a stream held it\nlog:\n{}",
        c.server.log()
    );
    // Our stream ended rather than hanging.
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(start.elapsed() < GRACE + Duration::from_secs(5));
}

/// `docs/console.png`, the README's picture of the events page:
/// `cargo test --test it console_screenshot -- --ignored`.
#[test]
#[ignore = "writes docs/console.png; run by hand when the console changes"]
fn console_screenshot() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let c = Console::start(1, "100ms", &[]);
    c.receiver.script([Answer::status(503).body("maintenance")]);
    let mut keys = Vec::new();
    keys.push(c.send("push", &json!({ "ref": "refs/heads/main" })));
    for (kind, body) in [
        ("pull_request", json!({ "action": "opened", "number": 42 })),
        ("release", json!({ "action": "published" })),
        ("push", json!({ "ref": "refs/heads/release-1.2" })),
        ("issues", json!({ "action": "opened" })),
        ("push", json!({ "ref": "refs/heads/main" })),
    ] {
        keys.push(c.send(kind, &body));
    }
    for k in &keys {
        c.settled(k, 1);
    }
    let s = browser.session();
    login(&s, &c);
    s.goto(&c.ui("/ui/"));
    let png = s.screenshot();
    let out: PathBuf = root().join("docs/console.png");
    std::fs::write(&out, png).expect("write docs/console.png");
    eprintln!("wrote {}", out.display());
}
