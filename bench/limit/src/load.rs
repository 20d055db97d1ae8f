//! An open-loop HTTP load generator for hookrouter's latency and memory
//! benchmarks.
//!
//! ```text
//! hookrouter-bench-load --url URL --rate R --duration D [--connections C]
//!     [--warmup W] --body FILE [-H 'Name: value']... [--unique-header NAME]
//!     [--expect STATUS] [--method POST] [--drain SECS] [--progress SECS]
//!     [--threads N]
//! ```
//!
//! Request `i` is due at `start + i / R`, whether or not earlier requests
//! have been answered: a pacing thread releases each request into a FIFO
//! queue at its due time, and `C` keep-alive connections take requests from
//! the queue. When every connection is busy, requests wait in the queue and
//! their latency keeps growing. Latency is measured from the due time (not
//! from when the request was written) to the end of the response body, so a
//! server that stalls is charged for every request it delays (no coordinated
//! omission). Nothing is dropped: after the last due time the queue drains,
//! for at most `--drain` seconds; requests still unanswered then count as
//! `incomplete` with the latency they had reached (a lower bound).
//!
//! Requests due in the first `--warmup` seconds are sent the same way but
//! left out of the figures.
//!
//! Every request carries the same body and headers; `--unique-header NAME`
//! adds a header whose value is unique per request (UUID-shaped), e.g.
//! `X-GitHub-Delivery`, which a deduplicating receiver needs.
//!
//! Output: a human-readable summary on stdout, then one machine-readable
//! line starting with `RESULT `. With `--progress SECS`, a line
//! `PROGRESS t=.. sent=.. completed=.. ok=.. max_ms=..` every SECS seconds:
//! counts since the start (warm-up included), and the largest latency of the
//! answers that arrived since the previous line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

/// Per-request state in `Stats::status`.
const NOT_SENT: u16 = 0;
const IN_FLIGHT: u16 = 1;
const TRANSPORT_ERROR: u16 = 2;

struct Opts {
    url: Uri,
    method: Method,
    rate: f64,
    duration: f64,
    warmup: f64,
    connections: usize,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    unique: Option<HeaderName>,
    expect: Option<u16>,
    drain: f64,
    progress: f64,
    threads: usize,
}

/// What happened to each request, by index. Latencies in microseconds,
/// saturating at u32::MAX (71 minutes).
struct Stats {
    status: Vec<AtomicU16>,
    /// Due time to the end of the response (or of the failure).
    latency_us: Vec<AtomicU32>,
    /// Due time to the moment the request was handed to the connection.
    lag_us: Vec<AtomicU32>,
    sent: AtomicU64,
    completed: AtomicU64,
    ok: AtomicU64,
    reconnects: AtomicU64,
    /// The largest latency of the answers since the last progress line.
    interval_max_us: AtomicU32,
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("load: {msg}");
    }
    eprintln!(
        "usage: hookrouter-bench-load --url URL --rate R --duration SECS [--connections C] \
         [--warmup SECS] --body FILE [-H 'Name: value']... [--unique-header NAME] \
         [--expect STATUS] [--method M] [--drain SECS] [--progress SECS] [--threads N]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut url = None;
    let mut method = Method::POST;
    let mut rate = None;
    let mut duration = None;
    let mut warmup = 0.0;
    let mut connections = 64;
    let mut body = None;
    let mut headers = Vec::new();
    let mut unique = None;
    let mut expect = None;
    let mut drain = 30.0;
    let mut progress = 0.0;
    let mut threads = 1;
    let mut args = std::env::args().skip(1);
    let num = |flag: &str, v: Option<String>| -> f64 {
        let v = v.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 => x,
            _ => usage(&format!("{flag}: not a number: {v}")),
        }
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--url" => url = args.next(),
            "--method" | "-X" => {
                let m = args
                    .next()
                    .unwrap_or_else(|| usage("--method needs a value"));
                method = Method::from_bytes(m.as_bytes()).unwrap_or_else(|_| usage("bad --method"));
            }
            "--rate" | "-R" => rate = Some(num(&a, args.next())),
            "--duration" | "-d" => duration = Some(num(&a, args.next())),
            "--warmup" => warmup = num(&a, args.next()),
            "--connections" | "-c" => connections = num(&a, args.next()) as usize,
            "--drain" => drain = num(&a, args.next()),
            "--progress" => progress = num(&a, args.next()),
            "--threads" => threads = num(&a, args.next()) as usize,
            "--expect" => expect = Some(num(&a, args.next()) as u16),
            "--body" => {
                let f = args.next().unwrap_or_else(|| usage("--body needs a file"));
                match std::fs::read(&f) {
                    Ok(b) => body = Some(Bytes::from(b)),
                    Err(e) => usage(&format!("cannot read {f}: {e}")),
                }
            }
            "--header" | "-H" => {
                let h = args
                    .next()
                    .unwrap_or_else(|| usage("-H needs 'Name: value'"));
                let Some((k, v)) = h.split_once(':') else {
                    usage(&format!("not 'Name: value': {h}"))
                };
                let k = HeaderName::from_bytes(k.trim().as_bytes())
                    .unwrap_or_else(|_| usage(&format!("bad header name in {h}")));
                let v = HeaderValue::from_str(v.trim())
                    .unwrap_or_else(|_| usage(&format!("bad header value in {h}")));
                headers.push((k, v));
            }
            "--unique-header" => {
                let k = args
                    .next()
                    .unwrap_or_else(|| usage("--unique-header needs a name"));
                unique = Some(
                    HeaderName::from_bytes(k.as_bytes())
                        .unwrap_or_else(|_| usage(&format!("bad header name {k}"))),
                );
            }
            "--help" | "-h" => usage(""),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let url: Uri = url
        .unwrap_or_else(|| usage("--url is required"))
        .parse()
        .unwrap_or_else(|e| usage(&format!("bad --url: {e}")));
    if url.scheme_str() != Some("http") || url.host().is_none() {
        usage("--url must be http://host[:port]/path");
    }
    let rate = rate.unwrap_or_else(|| usage("--rate is required"));
    let duration = duration.unwrap_or_else(|| usage("--duration is required"));
    if rate <= 0.0 || duration <= 0.0 || connections == 0 || threads == 0 {
        usage("--rate, --duration, --connections and --threads must be positive");
    }
    Opts {
        url,
        method,
        rate,
        duration,
        warmup,
        connections,
        body: body.unwrap_or_default(),
        headers,
        unique,
        expect,
        drain,
        progress,
        threads,
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)
}

/// A UUID-shaped value, unique per request index and (by the nonce) per run.
fn unique_value(nonce: u64, i: u64) -> HeaderValue {
    let s = format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        (nonce >> 32) as u32,
        (nonce >> 16) as u16,
        (nonce & 0xfff) as u16,
        (i >> 48) & 0xfff,
        i & 0xffff_ffff_ffff
    );
    HeaderValue::from_str(&s).expect("hex digits and dashes")
}

async fn connect(addr: &str) -> std::io::Result<http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

struct Shared {
    opts: Opts,
    addr: String,
    host: HeaderValue,
    path: Uri,
    nonce: u64,
    start: Instant,
    stats: Stats,
    queue: Mutex<mpsc::UnboundedReceiver<u64>>,
}

impl Shared {
    fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.opts.rate)
    }

    fn request(&self, i: u64) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.opts.body.clone()));
        *req.method_mut() = self.opts.method.clone();
        *req.uri_mut() = self.path.clone();
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        for (k, v) in &self.opts.headers {
            h.append(k.clone(), v.clone());
        }
        if let Some(k) = &self.opts.unique {
            h.insert(k.clone(), unique_value(self.nonce, i));
        }
        req
    }
}

/// One keep-alive connection: take the next due request, send it, record.
async fn worker(sh: Arc<Shared>, mut conn: Option<http1::SendRequest<Full<Bytes>>>) {
    loop {
        let next = { sh.queue.lock().await.recv().await };
        let Some(i) = next else { return };
        let idx = i as usize;
        let due = sh.due(i);
        // A closed connection (the server may end keep-alive) is replaced.
        let ready = match conn.as_mut() {
            Some(c) => c.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            if conn.is_some() {
                sh.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            conn = connect(&sh.addr).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            sh.stats.status[idx].store(TRANSPORT_ERROR, Ordering::Relaxed);
            sh.stats.latency_us[idx].store(micros(due.elapsed()), Ordering::Relaxed);
            // Do not spin through the queue while the server is unreachable.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let req = sh.request(i);
        sh.stats.lag_us[idx].store(micros(due.elapsed()), Ordering::Relaxed);
        sh.stats.status[idx].store(IN_FLIGHT, Ordering::Relaxed);
        sh.stats.sent.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let resp = c.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        let latency = micros(due.elapsed());
        sh.stats
            .interval_max_us
            .fetch_max(latency, Ordering::Relaxed);
        match result {
            Ok(status) => {
                sh.stats.latency_us[idx].store(latency, Ordering::Relaxed);
                sh.stats.status[idx].store(status.max(100), Ordering::Release);
                sh.stats.completed.fetch_add(1, Ordering::Relaxed);
                if (200..300).contains(&status) {
                    sh.stats.ok.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                sh.stats.latency_us[idx].store(latency, Ordering::Relaxed);
                sh.stats.status[idx].store(TRANSPORT_ERROR, Ordering::Release);
                conn = None;
            }
        }
    }
}

/// Nearest-rank percentile of a sorted slice, in milliseconds.
fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn main() {
    let opts = parse_opts();
    let rt = if opts.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    std::process::exit(rt.block_on(run(opts)));
}

async fn run(opts: Opts) -> i32 {
    let host = opts.url.host().unwrap_or_default().to_string();
    let port = opts.url.port_u16().unwrap_or(80);
    let addr = format!("{host}:{port}");
    let host_header =
        HeaderValue::from_str(&opts.url.authority().map_or(addr.clone(), |a| a.to_string()))
            .expect("authority is a valid header value");
    let path: Uri = opts
        .url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .expect("path");
    let total = ((opts.warmup + opts.duration) * opts.rate).round() as u64;
    let warm = ((opts.warmup * opts.rate).round() as u64).min(total);
    let total_usize = usize::try_from(total).expect("request count fits in memory");

    // Connect first, so connection setup is not part of the first latencies.
    let mut conns = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        match connect(&addr).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                eprintln!("load: cannot connect to {addr}: {e}");
                return 1;
            }
        }
    }

    let nonce = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40)
    };
    let (tx, rx) = mpsc::unbounded_channel::<u64>();
    let start = Instant::now() + Duration::from_millis(20);
    let stats = Stats {
        status: (0..total_usize).map(|_| AtomicU16::new(NOT_SENT)).collect(),
        latency_us: (0..total_usize).map(|_| AtomicU32::new(0)).collect(),
        lag_us: (0..total_usize).map(|_| AtomicU32::new(0)).collect(),
        sent: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        interval_max_us: AtomicU32::new(0),
    };
    println!(
        "load: {} {} at {} req/s for {} s (+{} s warm-up) over {} connections: {} requests, {} measured",
        opts.method,
        opts.url,
        opts.rate,
        opts.duration,
        opts.warmup,
        opts.connections,
        total,
        total - warm
    );
    let sh = Arc::new(Shared {
        opts,
        addr,
        host: host_header,
        path,
        nonce,
        start,
        stats,
        queue: Mutex::new(rx),
    });

    // The pacer: a plain thread, so the release times do not depend on the
    // runtime's millisecond timer. It never waits for answers.
    let rate = sh.opts.rate;
    let stop = Arc::new(AtomicBool::new(false));
    let pacer_stop = stop.clone();
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            if pacer_stop.load(Ordering::Relaxed) {
                break;
            }
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send(i).is_err() {
                break;
            }
        }
    });

    let progress = (sh.opts.progress > 0.0).then(|| {
        let sh = sh.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs_f64(sh.opts.progress);
            let mut n = 1u32;
            loop {
                tokio::time::sleep_until((sh.start + every * n).into()).await;
                println!(
                    "PROGRESS t={:.1} sent={} completed={} ok={} max_ms={:.3}",
                    sh.start.elapsed().as_secs_f64(),
                    sh.stats.sent.load(Ordering::Relaxed),
                    sh.stats.completed.load(Ordering::Relaxed),
                    sh.stats.ok.load(Ordering::Relaxed),
                    f64::from(sh.stats.interval_max_us.swap(0, Ordering::Relaxed)) / 1000.0
                );
                n += 1;
            }
        })
    });

    let workers: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(worker(sh.clone(), Some(c))))
        .collect();
    let aborts: Vec<_> = workers.iter().map(|w| w.abort_handle()).collect();
    let deadline =
        start + Duration::from_secs_f64(sh.opts.warmup + sh.opts.duration + sh.opts.drain);
    let all = async {
        for w in workers {
            let _ = w.await;
        }
    };
    let drained = tokio::time::timeout_at(deadline.into(), all).await.is_ok();
    let end = Instant::now();
    if let Some(p) = progress {
        p.abort();
    }
    if !drained {
        // What is still queued or in flight now counts as incomplete.
        stop.store(true, Ordering::Relaxed);
        for a in &aborts {
            a.abort();
        }
    }
    let _ = pacer.join();

    // Figures over the measured requests only.
    let st = &sh.stats;
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    let (mut sent, mut completed, mut errors, mut incomplete) = (0u64, 0u64, 0u64, 0u64);
    let (mut ok, mut non_2xx, mut unexpected) = (0u64, 0u64, 0u64);
    let mut lat = Vec::with_capacity((total - warm) as usize);
    let mut lag = Vec::with_capacity((total - warm) as usize);
    let mut last_done = sh.due(warm);
    for i in warm..total {
        let idx = i as usize;
        let s = st.status[idx].load(Ordering::Acquire);
        if s != NOT_SENT && st.lag_us[idx].load(Ordering::Relaxed) > 0 {
            sent += 1;
            lag.push(st.lag_us[idx].load(Ordering::Relaxed));
        }
        let l = st.latency_us[idx].load(Ordering::Relaxed);
        match s {
            NOT_SENT | IN_FLIGHT => {
                incomplete += 1;
                lat.push(micros(end.saturating_duration_since(sh.due(i))));
            }
            TRANSPORT_ERROR => {
                errors += 1;
                lat.push(l);
            }
            _ => {
                completed += 1;
                *statuses.entry(s).or_default() += 1;
                lat.push(l);
                let done = sh.due(i) + Duration::from_micros(u64::from(l));
                last_done = last_done.max(done);
            }
        }
        if (200..300).contains(&s) {
            ok += 1;
        } else {
            non_2xx += 1;
        }
        if sh.opts.expect.is_some_and(|e| e != s) {
            unexpected += 1;
        }
    }
    lat.sort_unstable();
    lag.sort_unstable();
    // From the first measured due time to the last answer, and at least to
    // the end of the schedule (a server that stops answering is not fast).
    let window = last_done
        .max(sh.due(total))
        .saturating_duration_since(sh.due(warm))
        .as_secs_f64();
    let achieved = if window > 0.0 {
        completed as f64 / window
    } else {
        f64::NAN
    };
    let status_list = if statuses.is_empty() {
        "-".to_string()
    } else {
        statuses
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let p = |q| pct(&lat, q);
    println!("sent        {sent}");
    println!("completed   {completed}");
    println!("statuses    {status_list}");
    println!(
        "errors      {errors} (transport), incomplete {incomplete}, reconnects {}",
        st.reconnects.load(Ordering::Relaxed)
    );
    println!(
        "rate        {achieved:.1} req/s achieved, {} offered",
        sh.opts.rate
    );
    println!(
        "latency ms  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (from the due time)",
        p(50.0),
        p(90.0),
        p(99.0),
        p(99.9),
        p(100.0)
    );
    println!(
        "queue ms    p50 {:.3}  p99 {:.3}  max {:.3}  (due time to written: pacing jitter and waiting for a free connection)",
        pct(&lag, 50.0),
        pct(&lag, 99.0),
        pct(&lag, 100.0)
    );
    println!(
        "RESULT rate={} achieved={achieved:.1} sent={sent} completed={completed} statuses={status_list} \
         ok={ok} non_2xx={non_2xx} unexpected={unexpected} errors={errors} incomplete={incomplete} \
         p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} queue_p99_ms={:.3}",
        sh.opts.rate,
        p(50.0),
        p(90.0),
        p(99.0),
        p(99.9),
        p(100.0),
        pct(&lag, 99.0)
    );
    0
}
