//! The console under `/ui/` on the admin listener, over plain HTTP: the
//! headers every answer carries, the login cookie (and that it never opens
//! the API), the CSRF field, hostile data escaped on every page and in the
//! live row, the Host check, `--no-console`, the replay form working without
//! JavaScript (on both stores), the cap on live streams and a live stream
//! ending on SIGTERM.
//!
//! Requests go over a raw TCP stream: the tests set `Host`, `Origin` and
//! cookies exactly, and see redirects rather than follow them. The rule's
//! HTTP action calls a local receiver that answers from a script.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{
    self, Answer, Receiver, Server, ServerOpts, signed_headers, unique, wait_until,
};

const SECRET: &str = "console-test-secret";
const TOKEN: &str = "console-admin-token";
const WAIT: Duration = Duration::from_secs(20);
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Markup an attacker would put in data; none may reach a page as markup.
const HOSTILE: [&str; 3] = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "\"><svg onload=alert(1)>",
];
/// What must never appear in a page: the start of each hostile element.
const RAW_MARKUP: [&str; 3] = ["<script>alert", "<img src=x", "<svg onload"];

/// Rules whose one rule sends every event of source `gh` to `receiver`,
/// with a header holding hostile markup that the receiver echoes back.
struct Setup {
    dir: TempDir,
    receiver: Receiver,
}

impl Setup {
    fn new(receiver: Receiver) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        support::write(
            dir.path(),
            "rules/console.yaml",
            &format!(
                r#"sources:
  - name: gh
    provider: github
    secret: {SECRET}
rules:
  - name: forward
    source: gh
    event: "*"
    actions:
      - http:
          url: {url}
          headers:
            X-Note: '{note}'
        retry: {{ attempts: 3, backoff: 50ms, max_backoff: 100ms }}
"#,
                url = receiver.url("/hook"),
                note = HOSTILE.join(" ").replace('\'', "''"),
            ),
        );
        Setup { dir, receiver }
    }

    fn opts(&self) -> ServerOpts {
        ServerOpts::new(&self.rules(), &self.dir.path().join("data.redb")).admin()
    }

    fn rules(&self) -> PathBuf {
        self.dir.path().join("rules")
    }
}

/// An answer read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One request to the admin listener with exactly these headers; `Host`
/// is the listener's address unless given.
fn send(server: &Server, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Raw {
    let admin = server.admin.as_deref().expect("admin");
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {admin}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut stream = TcpStream::connect(admin).expect("connect to admin");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(head.as_bytes()).expect("send");
    stream.write_all(body.as_bytes()).expect("send body");
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    parse(&String::from_utf8_lossy(&buf))
}

fn parse(text: &str) -> Raw {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Raw {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn get(server: &Server, path: &str, cookie: Option<&str>) -> Raw {
    let cookie = cookie.map(|c| format!("hookrouter_session={c}"));
    let headers: Vec<(&str, &str)> = cookie
        .as_deref()
        .map(|c| vec![("Cookie", c)])
        .unwrap_or_default();
    send(server, "GET", path, &headers, "")
}

/// POST a form as a browser on the console's own page would.
fn post_form(server: &Server, path: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> Raw {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let origin = format!("http://{}", server.admin.as_deref().expect("admin"));
    let cookie = cookie.map(|c| format!("hookrouter_session={c}"));
    let mut headers = vec![
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Origin", origin.as_str()),
        ("Sec-Fetch-Site", "same-origin"),
    ];
    if let Some(c) = &cookie {
        headers.push(("Cookie", c));
    }
    send(server, "POST", path, &headers, &body)
}

/// The `csrf` field of the first form on a page.
fn csrf(page: &str) -> String {
    let start = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[start..]
        .split('"')
        .next()
        .expect("csrf value")
        .to_owned()
}

/// Log in with the token; the session cookie's value.
fn login(server: &Server) -> String {
    let resp = post_form(server, "/ui/login", None, &[("token", TOKEN)]);
    assert_eq!(resp.status, 303, "{resp:?}");
    let cookie = resp.header("set-cookie").expect("a cookie");
    cookie
        .strip_prefix("hookrouter_session=")
        .and_then(|c| c.split(';').next())
        .expect("session id")
        .to_owned()
}

/// Send a signed GitHub event with `body` and event type `kind`; its key.
fn send_event(server: &Server, kind: &str, body: &serde_json::Value) -> String {
    let id = unique("console");
    let body = body.to_string().into_bytes();
    let mut headers = signed_headers("github", SECRET, &body, &id);
    headers.push(("X-GitHub-Event".into(), kind.into()));
    headers.push(("Content-Type".into(), "application/json".into()));
    let resp = server.post("/hooks/gh", &support::as_refs(&headers), &body);
    assert_eq!(resp.status, 202, "{resp:?}");
    resp.json()["key"].as_str().expect("key").to_owned()
}

/// The event as the API shows it.
fn api_event(server: &Server, key: &str) -> serde_json::Value {
    let resp = send(
        server,
        "GET",
        &format!("/api/events/{key}"),
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        "",
    );
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.json()
}

/// Wait until the event's deliveries are all in final states, the last
/// one in `state`.
fn wait_state(server: &Server, key: &str, state: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let ok = wait_until(WAIT, || {
        last = api_event(server, key);
        let ds = last["deliveries"].as_array().cloned().unwrap_or_default();
        !ds.is_empty()
            && ds.last().is_some_and(|d| d["state"] == state)
            && ds
                .iter()
                .all(|d| d["state"] != "pending" && d["state"] != "leased")
    });
    assert!(ok, "never {state}: {last}\nlog:\n{}", server.log());
    last
}

fn assert_secure(resp: &Raw, what: &str) {
    assert_eq!(
        resp.header("content-security-policy"),
        Some(CSP),
        "{what}: {resp:?}"
    );
    assert_eq!(
        resp.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        resp.header("referrer-policy"),
        Some("no-referrer"),
        "{what}"
    );
    assert_eq!(resp.header("cache-control"), Some("no-store"), "{what}");
}

/// No hostile markup as markup, and no inline code or style of ours.
fn assert_inert(html: &str, what: &str) {
    for raw in RAW_MARKUP {
        assert!(
            !html.contains(raw),
            "{what} holds {raw:?} unescaped:\n{html}"
        );
    }
    let handler = regex::Regex::new(r"(?i)<[^>]*\son[a-z]+\s*=").expect("regex");
    assert!(
        !handler.is_match(html),
        "{what} has an event handler attribute"
    );
    assert!(!html.contains("<script>"), "{what} has an inline script");
    assert!(!html.contains(" style="), "{what} has an inline style");
}

#[test]
fn every_console_answer_carries_the_security_headers() {
    let setup = Setup::new(Receiver::start());
    let server = setup.opts().start();
    let key = send_event(
        &server,
        "push",
        &serde_json::json!({"ref": "refs/heads/main"}),
    );
    wait_state(&server, &key, "done");
    let paths = [
        "/ui/".to_owned(),
        "/ui".to_owned(),
        format!("/ui/events/{key}"),
        format!("/ui/events/{key}/raw"),
        "/ui/events/NOSUCHKEY".to_owned(),
        "/ui/deliveries".to_owned(),
        "/ui/deliveries?state=done".to_owned(),
        "/ui/status".to_owned(),
        "/ui/login".to_owned(),
        "/ui/static/app.css".to_owned(),
        "/ui/static/app.js".to_owned(),
        "/ui/no-such-page".to_owned(),
    ];
    for path in &paths {
        let resp = get(&server, path, None);
        assert!(
            matches!(resp.status, 200 | 303 | 404),
            "GET {path}: {resp:?}"
        );
        assert_secure(&resp, path);
        if resp
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html"))
        {
            assert_inert(&resp.body, path);
            assert!(resp.body.contains("<html lang=\"en\">"), "{path}");
        }
    }
    let page = get(&server, "/ui/", None);
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&format!("data-key=\"{key}\"")),
        "{page:?}"
    );
    let raw = get(&server, &format!("/ui/events/{key}/raw"), None);
    assert!(
        raw.header("content-disposition")
            .is_some_and(|d| d.starts_with("attachment")),
        "{raw:?}"
    );
    // A refused form answers with the same headers.
    let refused = post_form(&server, &format!("/ui/events/{key}/replay"), None, &[]);
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_secure(&refused, "refused POST");
}

#[test]
fn with_a_token_pages_need_the_cookie_and_the_cookie_never_opens_the_api() {
    let setup = Setup::new(Receiver::start());
    let server = setup.opts().args(&["--admin-token", TOKEN]).start();
    let key = send_event(&server, "push", &serde_json::json!({"ref": "x"}));

    for path in [
        "/ui/".to_owned(),
        format!("/ui/events/{key}"),
        "/ui/status".to_owned(),
        "/ui/stream".to_owned(),
    ] {
        let resp = get(&server, &path, None);
        assert_eq!(resp.status, 303, "GET {path}: {resp:?}");
        assert_eq!(resp.header("location"), Some("/ui/login"), "{path}");
        assert!(!resp.body.contains(&key), "{path}");
    }
    let forged = get(&server, "/ui/", Some("00ff"));
    assert_eq!(forged.status, 303, "{forged:?}");

    let login_page = get(&server, "/ui/login", None);
    assert_eq!(login_page.status, 200, "{login_page:?}");
    assert!(login_page.body.contains("id=\"token\""));

    let wrong = post_form(
        &server,
        "/ui/login",
        None,
        &[("token", "console-admin-tokeX")],
    );
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(wrong.header("set-cookie").is_none(), "{wrong:?}");

    let ok = post_form(&server, "/ui/login", None, &[("token", TOKEN)]);
    assert_eq!(ok.status, 303, "{ok:?}");
    assert_eq!(ok.header("location"), Some("/ui/"));
    let cookie = ok.header("set-cookie").expect("cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(cookie.split("; ").any(|p| p == part), "{part} in {cookie}");
    }
    let session = login(&server);
    let page = get(&server, "/ui/", Some(&session));
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains(&key));
    let one = get(&server, &format!("/ui/events/{key}"), Some(&session));
    assert_eq!(one.status, 200, "{one:?}");

    // The cookie alone is no bearer token.
    for path in [
        "/api/events".to_owned(),
        format!("/api/events/{key}"),
        "/metrics".to_owned(),
    ] {
        let api = get(&server, &path, Some(&session));
        assert_eq!(api.status, 401, "GET {path} with the cookie: {api:?}");
        assert!(!api.body.contains(&key));
    }

    // Logging out ends the session on the server.
    let out = post_form(
        &server,
        "/ui/logout",
        Some(&session),
        &[("csrf", &csrf(&page.body))],
    );
    assert_eq!(out.status, 303, "{out:?}");
    assert_eq!(get(&server, "/ui/", Some(&session)).status, 303);
}

#[test]
fn a_replay_form_without_its_csrf_field_is_refused_and_nothing_is_replayed() {
    let setup = Setup::new(Receiver::start());
    let server = setup.opts().args(&["--admin-token", TOKEN]).start();
    let key = send_event(&server, "push", &serde_json::json!({"ref": "x"}));
    wait_state(&server, &key, "done");
    assert!(setup.receiver.wait_count(1, WAIT));

    let session = login(&server);
    let other = login(&server);
    let page = get(&server, &format!("/ui/events/{key}"), Some(&session));
    let field = csrf(&page.body);
    let others_field = csrf(&get(&server, "/ui/", Some(&other)).body);
    assert_ne!(field, others_field, "the field is tied to the session");
    let path = format!("/ui/events/{key}/replay");
    let bad = [
        vec![],
        vec![("csrf", "")],
        vec![("csrf", "00")],
        vec![("csrf", others_field.as_str())],
    ];
    for fields in &bad {
        let resp = post_form(&server, &path, Some(&session), fields);
        assert_eq!(resp.status, 403, "{fields:?}: {resp:?}");
    }
    // The right field from another origin is refused by the Origin rule.
    let admin = server.admin.as_deref().expect("admin");
    let body = format!("csrf={field}");
    let cookie = format!("hookrouter_session={session}");
    let cross = send(
        &server,
        "POST",
        &path,
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "http://evil.example"),
            ("Sec-Fetch-Site", "cross-site"),
            ("Cookie", &cookie),
            ("Host", admin),
        ],
        &body,
    );
    assert_eq!(cross.status, 403, "{cross:?}");
    let cancel = post_form(
        &server,
        &format!("/ui/events/{key}/cancel"),
        Some(&session),
        &[],
    );
    assert_eq!(cancel.status, 403, "{cancel:?}");

    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(setup.receiver.count(), 1, "nothing ran again");
    assert_eq!(
        api_event(&server, &key)["deliveries"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "no delivery was added"
    );
}

#[test]
fn hostile_data_is_escaped_on_every_page_and_in_the_live_row() {
    let setup = Setup::new(Receiver::answering(Answer::status(500).echo(true)));
    let server = setup.opts().start();
    // The live stream is open before the event arrives.
    let admin = server.admin.clone().expect("admin");
    let mut stream = TcpStream::connect(&admin).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(stream, "GET /ui/stream HTTP/1.1\r\nHost: {admin}\r\n\r\n").expect("send");
    let mut live = BufReader::new(stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        if live.read_line(&mut head).expect("stream head") == 0 {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    assert!(head.contains(CSP), "{head}");

    let note = HOSTILE.join(" ");
    let body = serde_json::json!({ "note": note, HOSTILE[2]: HOSTILE[0] });
    let key = send_event(&server, HOSTILE[1], &body);

    // The row, as the stream sends it.
    let mut row = String::new();
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline && !row.contains("data: </tr>") {
        let mut line = String::new();
        if live.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.starts_with("data: ") || line.starts_with("event: row") {
            row.push_str(&line);
        }
    }
    assert!(row.contains("event: row"), "no row: {row}");
    assert!(row.contains(&key), "{row}");
    assert_inert(&row, "the live row");
    assert!(row.contains("&lt;img src=x onerror=alert(1)&gt;"), "{row}");

    let event = wait_state(&server, &key, "dead");
    let attempts = event["deliveries"][0]["history"]
        .as_array()
        .expect("history")
        .len();
    assert_eq!(attempts, 3, "{event}");

    let page = get(&server, &format!("/ui/events/{key}"), None);
    assert_eq!(page.status, 200);
    assert_inert(&page.body, "the event page");
    // Body, header value and the receiver's answer are all there, as text.
    for shown in [
        "&lt;script&gt;alert(1)&lt;&#x2f;script&gt;",
        "&lt;img src=x onerror=alert(1)&gt;",
        "&quot;&gt;&lt;svg onload=alert(1)&gt;",
        "HTTP 500",
    ] {
        assert!(page.body.contains(shown), "{shown} not on the event page");
    }
    assert_eq!(page.body.matches("<tr class=\"attempt\">").count(), 3);
    assert!(
        page.body
            .contains("<span class=\"state state-dead\">dead</span>")
    );

    let field = csrf(&page.body);
    let mut pages = vec![
        ("events", get(&server, "/ui/", None)),
        (
            "filtered events",
            get(&server, "/ui/?source=gh&state=dead", None),
        ),
        ("deliveries", get(&server, "/ui/deliveries", None)),
        (
            "deliveries of gh",
            get(&server, "/ui/deliveries?source=gh", None),
        ),
        ("status", get(&server, "/ui/status", None)),
    ];
    pages.push((
        "bulk confirmation",
        post_form(&server, "/ui/deliveries/replay", None, &[("csrf", &field)]),
    ));
    for (what, resp) in &pages {
        assert_eq!(resp.status, 200, "{what}: {resp:?}");
        assert_inert(&resp.body, what);
    }
    assert!(
        pages[0]
            .1
            .body
            .contains("&lt;img src=x onerror=alert(1)&gt;")
    );
    assert!(
        pages[2].1.body.contains("HTTP 500"),
        "the dead letter's error"
    );
}

#[test]
fn a_foreign_host_is_misdirected_on_console_pages() {
    let setup = Setup::new(Receiver::start());
    let server = setup.opts().start();
    let key = send_event(&server, "push", &serde_json::json!({"ref": "x"}));
    let port = server
        .admin
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        .expect("port")
        .1
        .to_owned();
    let host = format!("evil.example:{port}");
    for path in [
        "/ui/".to_owned(),
        format!("/ui/events/{key}"),
        "/ui/stream".to_owned(),
        "/ui/static/app.js".to_owned(),
    ] {
        let resp = send(&server, "GET", &path, &[("Host", &host)], "");
        assert_eq!(resp.status, 421, "GET {path}: {resp:?}");
        assert!(!resp.body.contains(&key));
        assert_secure(&resp, &path);
    }
    let resp = send(
        &server,
        "POST",
        &format!("/ui/events/{key}/replay"),
        &[
            ("Host", &host),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "csrf=x",
    );
    assert_eq!(resp.status, 421, "{resp:?}");
}

#[test]
fn no_console_turns_every_console_path_off() {
    let setup = Setup::new(Receiver::start());
    let server = setup.opts().arg("--no-console").start();
    for path in [
        "/ui/",
        "/ui",
        "/ui/status",
        "/ui/stream",
        "/ui/static/app.js",
        "/ui/login",
    ] {
        let resp = get(&server, path, None);
        assert_eq!(resp.status, 404, "GET {path}: {resp:?}");
    }
    assert_eq!(get(&server, "/api/events", None).status, 200);
}

/// Receiver fails three times; the delivery goes dead; the no-script form
/// replays it once, the history kept.
fn replay_form_delivers_exactly_once_more(server: &Server, receiver: &Receiver) {
    let key = send_event(
        server,
        "push",
        &serde_json::json!({"ref": "refs/heads/main"}),
    );
    wait_state(server, &key, "dead");
    assert!(receiver.wait_count(3, WAIT));

    let dead = get(server, "/ui/deliveries", None);
    assert!(
        dead.body
            .contains(&format!("/ui/events/{key}").replace('/', "&#x2f;")),
        "{dead:?}"
    );

    let page = get(server, &format!("/ui/events/{key}"), None);
    assert_eq!(page.status, 200, "{page:?}");
    let form = format!("action=\"&#x2f;ui&#x2f;events&#x2f;{key}/replay\"");
    assert!(page.body.contains(&form), "{}", page.body);
    let resp = post_form(
        server,
        &format!("/ui/events/{key}/replay"),
        None,
        &[("csrf", &csrf(&page.body))],
    );
    assert_eq!(resp.status, 303, "{resp:?}");
    assert_eq!(
        resp.header("location"),
        Some(format!("/ui/events/{key}?replayed=1").as_str())
    );
    let after = wait_state(server, &key, "done");
    assert!(receiver.wait_count(4, WAIT));
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(receiver.count(), 4, "exactly one more delivery ran");
    let ds = after["deliveries"].as_array().expect("deliveries");
    assert_eq!(ds.len(), 2, "{after}");
    assert_eq!(ds[0]["state"], "dead", "the history is kept");
    let shown = get(server, &format!("/ui/events/{key}?replayed=1"), None);
    assert!(shown.body.contains("Replayed: 1 new deliveries."));
    assert!(
        shown
            .body
            .contains("<span class=\"state state-delivered\">delivered</span>")
    );
    assert_eq!(shown.body.matches("<tr class=\"attempt\">").count(), 4);
}

/// A receiver whose first three answers are 500, then 200.
fn failing_thrice() -> Receiver {
    let r = Receiver::start();
    r.script([
        Answer::status(500),
        Answer::status(500),
        Answer::status(500),
    ]);
    r
}

#[test]
fn the_replay_form_without_javascript_delivers_exactly_once_more() {
    let setup = Setup::new(failing_thrice());
    let server = setup.opts().start();
    replay_form_delivers_exactly_once_more(&server, &setup.receiver);
}

#[test]
fn the_replay_form_works_the_same_on_postgres() {
    let Some(admin) = crate::postgres::test_pg() else {
        return;
    };
    let schema = crate::postgres::Schema::create(&admin);
    let setup = Setup::new(failing_thrice());
    let server = setup.opts().args(&["--store", &schema.url()]).start();
    replay_form_delivers_exactly_once_more(&server, &setup.receiver);
}

/// Open a live stream; its first bytes, or the refusal's status line.
fn open_stream(admin: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(admin).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(stream, "GET /ui/stream HTTP/1.1\r\nHost: {admin}\r\n\r\n").expect("send");
    let mut buf = [0u8; 4096];
    let mut got = String::new();
    // The head; then, for a stream, its first comment.
    loop {
        let done = match got.split_once("\r\n\r\n") {
            Some((head, body)) => !head.starts_with("HTTP/1.1 200") || body.contains(": open"),
            None => false,
        };
        if done {
            break;
        }
        let n = stream.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    (stream, got)
}

#[test]
fn live_streams_are_capped_and_end_on_sigterm() {
    let setup = Setup::new(Receiver::start());
    let mut server = setup.opts().arg("--grace").arg("2s").start();
    let admin = server.admin.clone().expect("admin");
    let mut open = Vec::new();
    for i in 0..32 {
        let (s, head) = open_stream(&admin);
        assert!(head.starts_with("HTTP/1.1 200"), "stream {i}: {head}");
        open.push(s);
    }
    let (_, refused) = open_stream(&admin);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");

    let started = Instant::now();
    let status = server.terminate().expect("exited");
    assert!(status.success(), "{status:?}\n{}", server.log());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "SIGTERM waited on the open streams: {:?}",
        started.elapsed()
    );
    // Each stream was ended by the server, not left hanging.
    for mut s in open {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("stream ends");
    }
}
