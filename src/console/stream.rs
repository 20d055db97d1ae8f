//! Live rows: `/ui/stream`, server-sent events carrying rendered rows.
//!
//! Owns the feed from ingest to the open Events pages. Ingest sends the key
//! of each event it committed on a broadcast channel (`Committed`); one task
//! here reads that event once, renders its row (escaped, secrets redacted,
//! the same template as the page) and broadcasts the HTML to every stream.
//! Each stream writes `event: row` per row, a `: heartbeat` comment every
//! 15 s (so proxies and the browser see a live connection), and `event:
//! resync` when it fell behind the broadcast and lost rows, which tells the
//! page to load the list again. Open streams are capped (503 beyond), and
//! every stream ends when the server shuts down, so a page left open does
//! not hold SIGTERM past its grace.
//!
//! Only events committed by this process are fed; with several replicas on
//! one PostgreSQL database, a page shows the others' events on reload.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::StatusCode;
use hyper::body::Frame;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::{Answer, pages};
use crate::rules::RuleSet;
use crate::store::Store;

/// Keys of committed events, sent by ingest. Sending never waits: a
/// receiver that falls behind loses the oldest keys and is told so.
pub type Committed = broadcast::Sender<String>;

/// Most live streams open at once.
pub const MAX_STREAMS: usize = 32;
/// How often an idle stream says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(15);
/// Rows (or resyncs) a slow page may fall behind before it must resync.
const BACKLOG: usize = 256;

/// A rendered row and what streams filter it by.
#[derive(Debug)]
struct Row {
    html: String,
    source: String,
    kind: String,
}

/// What a stream forwards.
#[derive(Debug, Clone)]
enum Item {
    /// One rendered `<tr>`, with its event's source and type for the
    /// streams' filters.
    Row(Arc<Row>),
    /// Rows were lost: load the list again.
    Resync,
}

pub struct Live {
    rows: broadcast::Sender<Item>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
}

impl Live {
    /// Start rendering rows for committed events until `shutdown`.
    pub fn start(
        committed: Committed,
        store: Store,
        rules: Arc<ArcSwap<RuleSet>>,
        shutdown: CancellationToken,
    ) -> Live {
        let (rows, _) = broadcast::channel(BACKLOG);
        tokio::spawn(feed(
            committed.subscribe(),
            rows.clone(),
            store,
            rules,
            shutdown.clone(),
        ));
        Live {
            rows,
            permits: Arc::new(Semaphore::new(MAX_STREAMS)),
            shutdown,
        }
    }

    /// Open a stream of rows whose event matches the `source` and `type`
    /// filters of `q` (either may be absent).
    pub fn subscribe(&self, q: &BTreeMap<String, String>) -> Answer {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return super::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many live streams are open",
            );
        };
        let filter = Filter {
            source: q.get("source").filter(|s| !s.is_empty()).cloned(),
            kind: q.get("type").filter(|s| !s.is_empty()).cloned(),
        };
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let mut rows = self.rows.subscribe();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // The browser learns the stream is open at once.
            if tx.send(Bytes::from_static(b": open\n\n")).await.is_err() {
                return;
            }
            let mut beat = tokio::time::interval(HEARTBEAT);
            beat.tick().await;
            loop {
                let chunk = tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tx.closed() => break,
                    _ = beat.tick() => Bytes::from_static(b": heartbeat\n\n"),
                    r = rows.recv() => match r {
                        Ok(Item::Row(row)) if filter.passes(&row) => row_event(&row.html),
                        Ok(Item::Row(_)) => continue,
                        Ok(Item::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            Bytes::from_static(b"event: resync\ndata: resync\n\n")
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                };
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
        });
        let mut resp = hyper::Response::new(SseBody { rx }.boxed());
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        resp
    }
}

/// Which rows a stream forwards: those of one source, one type, or both.
struct Filter {
    source: Option<String>,
    kind: Option<String>,
}

impl Filter {
    fn passes(&self, row: &Row) -> bool {
        self.source.as_ref().is_none_or(|s| *s == row.source)
            && self.kind.as_ref().is_none_or(|k| *k == row.kind)
    }
}

/// `event: row`, one `data:` line per line of the row.
fn row_event(html: &str) -> Bytes {
    let mut out = String::with_capacity(html.len() + 32);
    out.push_str("event: row\n");
    for line in html.lines() {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    Bytes::from(out)
}

/// Read and render each committed event once, for every stream.
async fn feed(
    mut committed: broadcast::Receiver<String>,
    rows: broadcast::Sender<Item>,
    store: Store,
    rules: Arc<ArcSwap<RuleSet>>,
    shutdown: CancellationToken,
) {
    let templates = match super::templates() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "Console live rows cannot render.");
            return;
        }
    };
    loop {
        let key = tokio::select! {
            () = shutdown.cancelled() => break,
            r = committed.recv() => match r {
                Ok(key) => key,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = rows.send(Item::Resync);
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        // Nobody watching: nothing to read.
        if rows.receiver_count() == 0 {
            continue;
        }
        let read = {
            let key = key.clone();
            store.read(move |s| s.get_event(&key)).await
        };
        match read {
            Ok(Some(detail)) => {
                let set = rules.load();
                let mut row = serde_json::json!(pages::Row::of_detail(&detail));
                pages::redact(&set, &mut row);
                let html = templates
                    .get_template("event_row.html")
                    .and_then(|t| t.render(minijinja::context! { e => minijinja::Value::from(minijinja::value::Serde(row)) }));
                match html {
                    Ok(html) => {
                        let _ = rows.send(Item::Row(Arc::new(Row {
                            html: html.trim().to_owned(),
                            source: detail.event.source.clone(),
                            kind: detail.event.kind.clone(),
                        })));
                    }
                    Err(e) => tracing::error!(error = %e, "Console live row failed to render."),
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "Console live row: the event could not be read.");
                let _ = rows.send(Item::Resync);
            }
        }
    }
}

/// A body written by the stream's task, chunk by chunk; it ends when the
/// task does.
struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_one_event_with_a_data_line_per_line() {
        let ev = row_event("<tr>\n<td>a</td>\n</tr>");
        assert_eq!(
            &ev[..],
            b"event: row\ndata: <tr>\ndata: <td>a</td>\ndata: </tr>\n\n"
        );
    }

    #[test]
    fn filters_pass_their_source_and_type_only() {
        let row = Row {
            html: String::new(),
            source: "gh".into(),
            kind: "push".into(),
        };
        let f = |source: Option<&str>, kind: Option<&str>| Filter {
            source: source.map(str::to_owned),
            kind: kind.map(str::to_owned),
        };
        assert!(f(None, None).passes(&row));
        assert!(f(Some("gh"), Some("push")).passes(&row));
        assert!(!f(Some("gh"), Some("pull")).passes(&row));
        assert!(!f(Some("stripe"), None).passes(&row));
    }
}
