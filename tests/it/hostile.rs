//! Hostile clients against `hookrouter serve`: slow headers and bodies, idle
//! connection floods, the connection cap, 100 MB bodies, malformed and
//! ambiguous headers, JSON bombs.
//!
//! Every case ends the same way: a clean 4xx (or a closed connection for a
//! client too slow to finish its headers), a server that still answers a
//! signed request with 202, and nothing kept of the hostile request: its
//! event id is new afterwards and no action ran for it.
//!
//! Malformed signatures, for every provider, are covered in `providers.rs`;
//! the plain 413/400/415 answers in `serve.rs`. Heavier versions of these
//! cases (default timeouts, 10,000 connections, the release build) are in
//! `bench/hostile.sh`.

use crate::support::unique;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{Headers, Resp, Server, as_refs, push_headers, start_fresh, write};

const SECRET: &str = "hostile-test-secret";
/// How long a normal request may take while the server is under attack.
const PROMPT: Duration = Duration::from_secs(5);
/// Room for a loaded machine on top of a configured timeout.
const SLACK: Duration = Duration::from_secs(6);
/// The short header and body timeouts the slow-client tests run with.
const SHORT: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(20);

const RULES: &str = r#"
sources:
  - name: gh
    provider: github
    secret: hostile-test-secret

rules:
  - name: gh-main
    source: gh
    event: push
    match:
      $.ref: refs/heads/main
    actions:
      - log: "hostile-fired[{{ event.id }}]"
"#;

/// A server on the rules above with its own data file.
fn start(args: &[&str]) -> (TempDir, Server) {
    start_fresh(|dir| write(dir, "rules.yaml", RULES), |o| o.args(args))
}

fn push_body(note: &str) -> Vec<u8> {
    serde_json::json!({ "ref": "refs/heads/main", "note": note })
        .to_string()
        .into_bytes()
}

/// GitHub's headers for `body` under `id`, as a push with a JSON body.
fn signed(body: &[u8], id: &str) -> Headers {
    push_headers(SECRET, body, id)
}

fn post(server: &Server, headers: &Headers, body: &[u8]) -> Resp {
    server.post("/hooks/gh", &as_refs(headers), body)
}

fn fired(id: &str) -> String {
    format!("hostile-fired[{id}]")
}

/// A fresh signed request is answered 202 within `PROMPT` and its action runs.
fn assert_alive(server: &Server, what: &str) {
    let id = unique("alive");
    let body = push_body(what);
    let started = Instant::now();
    let resp = post(server, &signed(&body, &id), &body);
    let took = started.elapsed();
    assert_eq!(
        resp.status, 202,
        "{what}: a signed request after it: {resp:?}"
    );
    assert!(
        took < PROMPT,
        "{what}: a signed request took {took:?}; log:\n{}",
        server.log()
    );
    assert!(
        server.wait_log(&fired(&id), 1, WAIT),
        "{what}: the action of {id} did not run; log:\n{}",
        server.log()
    );
}

/// Nothing was kept under `id`: no action ran for it, and a valid request
/// with that id is accepted as new and runs once.
fn assert_fresh(server: &Server, id: &str, what: &str) {
    let log = server.log();
    assert!(
        !log.contains(&fired(id)),
        "{what}: an action ran for {id}; log:\n{log}"
    );
    assert!(!log.contains("panicked"), "{what}: {log}");
    let body = push_body(what);
    let resp = post(server, &signed(&body, id), &body);
    assert_eq!(resp.status, 202, "{what}: {id} afterwards: {resp:?}");
    assert_eq!(resp.json()["status"], "accepted", "{what}: {resp:?}");
    assert!(
        server.wait_log(&fired(id), 1, WAIT),
        "{what}: {id} did not run; log:\n{}",
        server.log()
    );
}

/// A request head with `framing` (`Content-Length: n` or
/// `Transfer-Encoding: chunked`, or several lines) and `headers`.
fn head(addr: &str, headers: &Headers, framing: &str) -> Vec<u8> {
    let mut h =
        format!("POST /hooks/gh HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{framing}\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// What came back on a raw connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// An HTTP answer: status and the whole text.
    Http(u16, String),
    /// Closed (or reset) without an answer.
    Closed(String),
    /// Still open, nothing said, when the wait ran out.
    Silent,
}

impl Answer {
    fn status(&self) -> Option<u16> {
        match self {
            Answer::Http(s, _) => Some(*s),
            _ => None,
        }
    }
}

fn parse_answer(bytes: &[u8], closed: Option<String>) -> Answer {
    let text = String::from_utf8_lossy(bytes).into_owned();
    match text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok())
    {
        Some(status) => Answer::Http(status, text),
        None => match closed {
            Some(why) => Answer::Closed(format!("{why}; got {text:?}")),
            None => Answer::Silent,
        },
    }
}

/// Read until the server closes the connection or `within` passes.
fn read_answer(stream: &mut TcpStream, within: Duration) -> Answer {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return parse_answer(&got, None);
        }
        stream
            .set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return parse_answer(&got, Some("closed".to_owned())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return parse_answer(&got, Some(e.to_string())),
        }
    }
}

/// Send `bytes` on a fresh connection and read the answer.
fn exchange(addr: &str, bytes: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    // The server may answer and close before reading everything.
    let _ = stream.write_all(bytes);
    read_answer(&mut stream, WAIT)
}

/// Is the connection still open and silent? (Never blocks.)
fn still_open(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 1];
    let open = matches!(stream.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false).expect("blocking");
    open
}

/// Raise this process's open-file soft limit to at least `want` if the hard
/// limit allows; returns the soft limit in force.
fn raise_fd_limit(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft >= want {
        return soft;
    }
    let target = want.min(hard);
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => target,
        Err(_) => soft,
    }
}

/// Open `n` connections to `addr`, from several threads: a connect that
/// meets a full accept queue waits a second for its SYN to be sent again,
/// and in parallel those waits overlap.
fn connect_many(addr: &str, n: usize) -> Vec<TcpStream> {
    const THREADS: usize = 8;
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let count = n / THREADS + usize::from(t < n % THREADS);
            std::thread::spawn(move || {
                (0..count)
                    .map(|i| {
                        TcpStream::connect_timeout(&addr, Duration::from_secs(20))
                            .unwrap_or_else(|e| panic!("connection {i} of thread {t}: {e}"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("connecting thread"))
        .collect()
}

#[test]
fn slow_headers_are_cut_off_at_the_header_timeout_while_others_are_served() {
    let (_dir, server) = start(&["--header-timeout", "2s"]);
    // Half the connections trickle a real signed request, one byte a second;
    // the other half send nothing at all.
    const SLOW: usize = 6;
    let ids: Vec<String> = (0..SLOW).map(|_| unique("slow-head")).collect();
    let requests: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| {
            let body = push_body("slow");
            let mut r = head(
                &server.addr,
                &signed(&body, id),
                &format!("Content-Length: {}", body.len()),
            );
            r.extend_from_slice(&body);
            r
        })
        .collect();
    let addr = server.addr.clone();
    let slow = std::thread::spawn(move || {
        let mut conns: Vec<TcpStream> = (0..SLOW)
            .map(|_| TcpStream::connect(&addr).expect("connect"))
            .collect();
        let started = Instant::now();
        let mut ended: Vec<Option<(Duration, Answer)>> = vec![None; SLOW];
        let mut sent = 0;
        while ended.iter().any(Option::is_none) && started.elapsed() < SHORT + SLACK {
            for (i, conn) in conns.iter_mut().enumerate() {
                if ended[i].is_some() {
                    continue;
                }
                if i % 2 == 0
                    && sent < requests[i].len()
                    && conn.write_all(&requests[i][sent..=sent]).is_err()
                {
                    ended[i] = Some((started.elapsed(), Answer::Closed("write".to_owned())));
                    continue;
                }
                match read_answer(conn, Duration::from_millis(50)) {
                    Answer::Silent => {}
                    other => ended[i] = Some((started.elapsed(), other)),
                }
            }
            sent += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
        ended
    });

    // Meanwhile, normal requests are served as usual.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        assert_alive(&server, "during slow headers");
        std::thread::sleep(Duration::from_millis(300));
    }

    let ended = slow.join().expect("slow clients");
    for (i, end) in ended.iter().enumerate() {
        let Some((at, answer)) = end else {
            panic!(
                "slow connection {i} is still open after {:?}",
                SHORT + SLACK
            );
        };
        // The request was never complete: it is closed, perhaps with a 408.
        assert!(
            matches!(answer, Answer::Closed(_)) || answer.status() == Some(408),
            "slow connection {i}: {answer:?}"
        );
        // ... by the timeout, not at once (one second of rounding).
        assert!(
            *at >= SHORT - Duration::from_secs(1) && *at <= SHORT + SLACK,
            "slow connection {i} ended after {at:?}; the header timeout is {SHORT:?}"
        );
    }
    for id in ids.iter().step_by(2) {
        assert_fresh(&server, id, "slow headers");
    }
}

#[test]
fn slow_body_is_408_at_the_body_timeout_and_nothing_is_kept() {
    let (_dir, server) = start(&["--body-timeout", "2s"]);
    let id = unique("slow-body");
    // A valid, signed 1000-byte body, of which only a trickle arrives.
    let body = push_body(&"x".repeat(1000 - push_body("").len()));
    assert_eq!(body.len(), 1000);
    let mut stream = TcpStream::connect(&server.addr).expect("connect");
    stream
        .write_all(&head(
            &server.addr,
            &signed(&body, &id),
            "Content-Length: 1000",
        ))
        .expect("head");
    let started = Instant::now();
    let mut answer = Answer::Silent;
    for b in &body {
        if started.elapsed() > SHORT + SLACK {
            break;
        }
        if stream.write_all(std::slice::from_ref(b)).is_err() {
            answer = read_answer(&mut stream, Duration::from_secs(1));
            break;
        }
        answer = read_answer(&mut stream, Duration::from_millis(200));
        if answer != Answer::Silent {
            break;
        }
    }
    let took = started.elapsed();
    assert_eq!(answer.status(), Some(408), "{answer:?}");
    assert!(
        took >= SHORT - Duration::from_millis(500) && took <= SHORT + SLACK,
        "408 after {took:?}; the body timeout is {SHORT:?}"
    );
    drop(stream);
    assert_alive(&server, "slow body");
    assert_fresh(&server, &id, "slow body");
}

#[test]
fn thousands_of_idle_connections_do_not_block_a_signed_request() {
    // The test process holds one end of each connection.
    let limit = raise_fd_limit(2_500);
    let idle = usize::try_from(limit.saturating_sub(300).min(2_000)).unwrap_or(0);
    assert!(idle >= 500, "the open-file limit ({limit}) is too low");
    // Idle connections are closed after the header timeout; keep them for
    // the length of the test.
    let (_dir, server) = start(&["--header-timeout", "60s"]);
    let conns = connect_many(&server.addr, idle);

    assert_alive(&server, "with idle connections open");
    let open = conns.iter().filter(|c| still_open(c)).count();
    assert_eq!(open, idle, "the server dropped idle connections early");

    drop(conns);
    assert_alive(&server, "after the idle connections closed");
}

#[test]
fn connections_over_the_cap_wait_for_a_free_slot() {
    const CAP: usize = 16;
    let (_dir, server) = start(&["--max-connections", "16", "--header-timeout", "60s"]);
    let conns = connect_many(&server.addr, CAP);
    // Let the server accept all of them before the next one comes.
    std::thread::sleep(Duration::from_millis(500));

    let id = unique("capped");
    let body = push_body("capped");
    let headers = signed(&body, &id);
    let url = server.url("/hooks/gh");
    let (tx, rx) = mpsc::channel();
    let sender = std::thread::spawn(move || {
        let resp = crate::support::request("POST", &url, &as_refs(&headers), &body);
        let _ = tx.send(resp);
    });
    match rx.recv_timeout(Duration::from_millis(1_500)) {
        Err(mpsc::RecvTimeoutError::Timeout) => {}
        other => panic!("a request over the cap of {CAP} was answered at once: {other:?}"),
    }
    assert!(
        !server.log().contains(&format!("event_id={id}")),
        "the request over the cap was read"
    );

    // One slot frees up: the waiting request goes through.
    drop(conns);
    let resp = rx.recv_timeout(PROMPT).expect("answer once a slot is free");
    assert_eq!(resp.status, 202, "{resp:?}");
    sender.join().expect("sender");
    assert!(server.wait_log(&fired(&id), 1, WAIT), "{}", server.log());
    assert_alive(&server, "after the cap");
}

#[test]
fn a_100_mb_body_is_refused_without_being_read() {
    const HUNDRED_MB: usize = 100 * 1024 * 1024;
    let (_dir, server) = start(&[]);

    // Declared: answered from the Content-Length alone.
    let id = unique("huge-declared");
    let mut req = head(
        &server.addr,
        &signed(b"{}", &id),
        &format!("Content-Length: {HUNDRED_MB}"),
    );
    req.extend_from_slice(&[b' '; 4096]);
    let started = Instant::now();
    let answer = exchange(&server.addr, &req);
    let took = started.elapsed();
    assert_eq!(answer.status(), Some(413), "{answer:?}");
    assert!(took < Duration::from_secs(2), "413 after {took:?}");
    assert_fresh(&server, &id, "100 MB declared");

    // Streamed in chunks: refused once past the cap, long before the end.
    let id = unique("huge-chunked");
    let mut stream = TcpStream::connect(&server.addr).expect("connect");
    stream
        .write_all(&head(
            &server.addr,
            &signed(b"{}", &id),
            "Transfer-Encoding: chunked",
        ))
        .expect("head");
    let mut writer = stream.try_clone().expect("clone");
    writer
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    let started = Instant::now();
    let pump = std::thread::spawn(move || {
        let chunk = {
            let data = vec![b'a'; 64 * 1024];
            let mut c = format!("{:x}\r\n", data.len()).into_bytes();
            c.extend_from_slice(&data);
            c.extend_from_slice(b"\r\n");
            c
        };
        let mut sent = 0usize;
        while sent < HUNDRED_MB {
            if writer.write_all(&chunk).is_err() {
                return (sent, false);
            }
            sent += 64 * 1024;
        }
        let _ = writer.write_all(b"0\r\n\r\n");
        (sent, true)
    });
    let answer = read_answer(&mut stream, WAIT);
    drop(stream);
    let (sent, finished) = pump.join().expect("pump");
    let took = started.elapsed();
    // The answer is a 413, unless the reset of the unread rest overtook it.
    assert!(
        answer.status() == Some(413) || matches!(answer, Answer::Closed(_)),
        "{answer:?}"
    );
    assert!(
        !finished && sent < HUNDRED_MB / 2,
        "the client could send {sent} bytes (finished: {finished}): the server kept reading"
    );
    assert!(took < WAIT, "{took:?}");
    assert_fresh(&server, &id, "100 MB chunked");
    assert_alive(&server, "100 MB bodies");
}

#[test]
fn malformed_and_ambiguous_headers_are_4xx_and_reach_no_rule() {
    let (_dir, server) = start(&[]);
    let body = push_body("headers");
    let cl = format!("Content-Length: {}", body.len());
    let raw = |headers: &Headers, framing: &str, body: &[u8]| {
        let mut r = head(&server.addr, headers, framing);
        r.extend_from_slice(body);
        exchange(&server.addr, &r)
    };
    let set = |headers: &Headers, name: &str, value: &str| -> Headers {
        let mut h: Headers = headers
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
            .cloned()
            .collect();
        h.push((name.to_owned(), value.to_owned()));
        h
    };
    // Splice raw bytes (not UTF-8) into a request head at `marker`.
    let spliced = |req: Vec<u8>, marker: &str, bytes: &[u8]| -> Vec<u8> {
        let text = req;
        let at = text
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
            .expect("marker");
        let mut out = text[..at].to_vec();
        out.extend_from_slice(bytes);
        out.extend_from_slice(&text[at + marker.len()..]);
        out
    };

    // Not UTF-8 in the signature header: 401.
    let id = unique("sig-bytes");
    let h = set(&signed(&body, &id), "X-Hub-Signature-256", "@SIG@");
    let mut req = spliced(head(&server.addr, &h, &cl), "@SIG@", b"sha256=\xff\xfe");
    req.extend_from_slice(&body);
    assert_eq!(exchange(&server.addr, &req).status(), Some(401));
    assert_fresh(&server, &id, "signature not UTF-8");

    // Not UTF-8 inside a JSON string of a correctly signed body: 400.
    let id = unique("body-bytes");
    let bad = b"{\"ref\":\"refs/heads/main\",\"note\":\"\xc3\x28\"}".to_vec();
    let answer = raw(
        &signed(&bad, &id),
        &format!("Content-Length: {}", bad.len()),
        &bad,
    );
    assert_eq!(answer.status(), Some(400), "{answer:?}");
    assert_fresh(&server, &id, "body not UTF-8");

    // Not UTF-8 in the delivery id or the event type (unsigned headers) of a
    // correctly signed request: 400, never taken as absent (which would
    // store the event under a fallback id or with no type).
    let id = unique("id-bytes");
    let h = set(&signed(&body, &id), "X-GitHub-Delivery", "@ID@");
    let mut req = spliced(head(&server.addr, &h, &cl), "@ID@", b"bad\xff\xfeid");
    req.extend_from_slice(&body);
    match exchange(&server.addr, &req) {
        Answer::Http(400, text) => assert!(text.contains("x-github-delivery"), "{text}"),
        other => panic!("delivery id not UTF-8: {other:?}"),
    }
    let id = unique("type-bytes");
    let h = set(&signed(&body, &id), "X-GitHub-Event", "@EV@");
    let mut req = spliced(head(&server.addr, &h, &cl), "@EV@", b"pu\xffsh");
    req.extend_from_slice(&body);
    match exchange(&server.addr, &req) {
        Answer::Http(400, text) => assert!(text.contains("x-github-event"), "{text}"),
        other => panic!("event type not UTF-8: {other:?}"),
    }
    // Nothing ran and nothing was stored under its id.
    assert_fresh(&server, &id, "event type not UTF-8");

    // The signature header twice, in either order, or the same value twice:
    // it is open which one a proxy checked, so 401.
    let id = unique("sig-twice");
    let good = signed(&body, &id);
    let good_sig = good
        .iter()
        .find(|(k, _)| k == "X-Hub-Signature-256")
        .map(|(_, v)| v.clone())
        .expect("signature");
    let bogus = format!("sha256={}", "0".repeat(64));
    for second in [bogus.clone(), good_sig.clone()] {
        let mut h = good.clone();
        h.push(("X-Hub-Signature-256".to_owned(), second));
        assert_eq!(raw(&h, &cl, &body).status(), Some(401), "{h:?}");
    }
    let mut h = set(&good, "X-Hub-Signature-256", &bogus);
    h.push(("X-Hub-Signature-256".to_owned(), good_sig));
    assert_eq!(raw(&h, &cl, &body).status(), Some(401), "{h:?}");
    assert_fresh(&server, &id, "signature twice");

    // Two different Content-Lengths: hyper refuses the framing with 400.
    let id = unique("cl-twice");
    let framing = format!("{cl}\r\nContent-Length: {}", body.len() + 1);
    let answer = raw(&signed(&body, &id), &framing, &body);
    assert_eq!(answer.status(), Some(400), "{answer:?}");
    assert_fresh(&server, &id, "Content-Length twice");

    // Content-Length and chunked together: the chunked framing counts, the
    // connection closes after the answer, and a request smuggled behind it
    // is never read.
    let id = unique("cl-te");
    let smuggled = unique("smuggled");
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut second = head(&server.addr, &signed(&body, &smuggled), &cl);
    second.extend_from_slice(&body);
    chunked.extend_from_slice(&second);
    let answer = raw(
        &signed(&body, &id),
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        &chunked,
    );
    let Answer::Http(status, text) = &answer else {
        panic!("Content-Length with chunked: {answer:?}");
    };
    assert!(
        *status == 202 || (400..500).contains(status),
        "Content-Length with chunked: {answer:?}"
    );
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert_fresh(&server, &smuggled, "smuggled request");

    // Over 64 KiB of headers, or too many of them: 431.
    let id = unique("big-head");
    let mut h = signed(&body, &id);
    h.push(("X-Padding".to_owned(), "a".repeat(70_000)));
    assert_eq!(raw(&h, &cl, &body).status(), Some(431));
    let mut h = signed(&body, &id);
    h.extend((0..150).map(|i| (format!("X-Many-{i}"), "v".to_owned())));
    assert_eq!(raw(&h, &cl, &body).status(), Some(431));
    assert_fresh(&server, &id, "headers too large");
    // Just under the cap is fine.
    let id = unique("near-cap-head");
    let mut h = signed(&body, &id);
    h.push(("X-Padding".to_owned(), "a".repeat(60_000)));
    assert_eq!(raw(&h, &cl, &body).status(), Some(202));
    assert!(server.wait_log(&fired(&id), 1, WAIT), "{}", server.log());

    assert_alive(&server, "malformed headers");
}

/// VmRSS and VmHWM (peak) of `pid`, in MiB.
fn memory_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn json_bombs_are_answered_quickly_with_bounded_memory() {
    // How long a bomb may take to be answered by a debug build on a loaded
    // machine.
    const ANSWER: Duration = Duration::from_secs(15);
    /// Peak memory while bodies are read, verified, parsed and stored.
    const INGRESS_MIB: u64 = 300;
    /// Peak memory once a 9 MB body also runs through an action: the
    /// delivery holds the stored event, a copy of its body for the template
    /// context and that context converted for the template engine, about
    /// 40 times the body's size at its peak.
    const DELIVERY_MIB: u64 = 768;
    let (_dir, server) = start(&[]);
    let pid = server.child.id();
    let (rss_before, _) = memory_mib(pid);

    let deep_objects = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let deep_mixed = format!("{}1{}", "[{\"a\":".repeat(50_000), "}]".repeat(50_000));
    let huge_exp = r#"{"ref":"refs/heads/main","n":1e999999}"#.to_owned();
    let long_int = format!(r#"{{"ref":"refs/heads/main","n":{}}}"#, "9".repeat(100_000));
    // Objects without `ref: main` match no rule: only ingress handles them.
    let many_keys = |r: &str| {
        let mut s = format!(r#"{{"ref":"refs/heads/{r}""#);
        for i in 0..500_000 {
            s.push_str(&format!(r#","k{i:06}":"v{i:06}""#));
        }
        s.push('}');
        s
    };
    let keys_other = many_keys("other");
    let long_string = format!(
        r#"{{"ref":"refs/heads/other","s":"{}"}}"#,
        "x".repeat(5_000_000)
    );
    assert!(keys_other.len() > 9_000_000 && keys_other.len() < 10 * 1024 * 1024);

    let refused: [(&str, &str); 4] = [
        ("deep objects", &deep_objects),
        ("deep arrays and objects", &deep_mixed),
        ("1e999999", &huge_exp),
        ("100,000-digit integer", &long_int),
    ];
    for (what, body) in refused {
        let id = unique("bomb");
        let started = Instant::now();
        let resp = post(&server, &signed(body.as_bytes(), &id), body.as_bytes());
        let took = started.elapsed();
        assert_eq!(resp.status, 400, "{what}: {resp:?}");
        assert!(took < ANSWER, "{what}: answered after {took:?}");
        assert_fresh(&server, &id, what);
    }
    let stored: [(&str, &str); 2] = [
        ("5 MB string", &long_string),
        ("500k keys in 9 MB", &keys_other),
    ];
    for (what, body) in stored {
        let id = unique("bomb");
        let started = Instant::now();
        let resp = post(&server, &signed(body.as_bytes(), &id), body.as_bytes());
        let took = started.elapsed();
        assert_eq!(resp.status, 202, "{what}: {resp:?}");
        assert_eq!(resp.json()["deliveries"], 0, "{what}: {resp:?}");
        assert!(took < ANSWER, "{what}: answered after {took:?}");
        assert_alive(&server, what);
    }
    let (rss, peak) = memory_mib(pid);
    eprintln!("ingress: VmRSS {rss_before} -> {rss} MiB, peak {peak} MiB");
    assert!(
        peak < INGRESS_MIB,
        "peak memory {peak} MiB while taking in JSON bombs"
    );

    // The same 500k keys matched by a rule: the action renders its template
    // with the body in its context.
    let keys_main = many_keys("main");
    let id = unique("bomb-keys-main");
    let started = Instant::now();
    let resp = post(
        &server,
        &signed(keys_main.as_bytes(), &id),
        keys_main.as_bytes(),
    );
    assert_eq!(resp.status, 202, "{resp:?}");
    assert!(started.elapsed() < ANSWER, "{:?}", started.elapsed());
    assert!(
        server.wait_log(&fired(&id), 1, Duration::from_secs(60)),
        "{}",
        server.log()
    );
    assert_alive(&server, "after the bombs");
    let (rss, peak) = memory_mib(pid);
    eprintln!("delivery: VmRSS {rss} MiB, peak {peak} MiB");
    assert!(
        peak < DELIVERY_MIB,
        "peak memory {peak} MiB delivering a 9 MB body"
    );
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}
