//! `Receiver`: a local HTTP server standing in for the services actions
//! call. It records every request and answers from a script.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wait_until;

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
/// its body: `ok`, a given text, or the request's head echoed.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub delay: Duration,
    pub echo: bool,
    pub body: Option<String>,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Answer {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
            echo: false,
            body: None,
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
    /// Answer with `text` as the body.
    pub fn body(mut self, text: &str) -> Self {
        self.body = Some(text.to_owned());
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
        plan.body.clone().unwrap_or_else(|| "ok".to_owned())
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

/// The `id` field of each JSON body `receiver` got, with how often each came.
pub fn received_counts(receiver: &Receiver) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for body in receiver.bodies() {
        if let Some(id) = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
        {
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}
