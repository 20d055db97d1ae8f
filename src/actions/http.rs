//! The `http` action: one request over a shared keep-alive client.
//!
//! Owns the HTTP client (reqwest with rustls, one connection pool for every
//! rule), Standard Webhooks signing of outgoing requests, and the outcome
//! policy: 2xx succeeds; connection errors, timeouts, 408, 429 and 5xx are
//! retried (with `Retry-After` honoured); any other status is final. The
//! response body is kept, up to a cap, as the attempt's `result`.

use std::time::{Duration, SystemTime};

use super::render::HttpRequest;
use super::{AttemptResult, Output};
use crate::rules::SigningKey;

/// Bytes of a response body kept in the attempt record.
const MAX_RESPONSE_KEPT: usize = 2048;
/// Bytes of a response body kept for `then:` children: the same cap as a
/// shell action's output by default. The rest is not read.
const MAX_BODY_KEPT: usize = 64 * 1024;

/// The shared client. Redirects are not followed: a webhook target that
/// redirects is misconfigured, and following would let a response choose
/// where the payload goes next.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .user_agent(concat!("hookrouter/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The Standard Webhooks headers for `body`: `webhook-id`,
/// `webhook-timestamp` and `webhook-signature` (`v1,` + base64 HMAC-SHA256
/// of `{id}.{timestamp}.{body}`).
pub fn standard_signature(
    key: &SigningKey,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> [(String, String); 3] {
    [
        ("webhook-id".to_owned(), msg_id.to_owned()),
        ("webhook-timestamp".to_owned(), timestamp.to_string()),
        (
            "webhook-signature".to_owned(),
            crate::providers::standard_signature_v1(&key.0, msg_id, timestamp, body),
        ),
    ]
}

/// Send `req`, waiting at most `timeout`. `msg_id` is the Standard Webhooks
/// message id, stable across retries of one delivery.
pub async fn send(
    client: &reqwest::Client,
    req: &HttpRequest,
    sign: Option<&SigningKey>,
    msg_id: &str,
    timeout: Duration,
) -> AttemptResult {
    let mut builder = client
        .request(req.method.clone(), &req.url)
        .timeout(timeout);
    for (k, v) in &req.headers {
        builder = builder.header(k, v);
    }
    if let Some(key) = sign {
        let now = crate::clock::now_secs();
        let body = req.body.as_deref().unwrap_or_default();
        for (k, v) in standard_signature(key, msg_id, now, body) {
            builder = builder.header(k, v);
        }
    }
    if let Some(body) = &req.body {
        builder = builder.body(body.clone());
    }
    let resp = match builder.send().await {
        Ok(r) => r,
        Err(e) => {
            let what = if e.is_timeout() {
                format!("timed out after {}", humantime::format_duration(timeout))
            } else if e.is_connect() {
                format!("connection failed: {}", root_cause(&e))
            } else {
                format!("request failed: {}", root_cause(&e))
            };
            return AttemptResult::retry(None, what, None);
        }
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = tokio::time::timeout(timeout, read_capped(resp, MAX_BODY_KEPT))
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(body.get(..MAX_RESPONSE_KEPT).unwrap_or(&body)).into_owned();
    let output = Output::Http {
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let code = Some(i32::from(status.as_u16()));
    let detail = if text.trim().is_empty() {
        format!("HTTP {}", status.as_u16())
    } else {
        format!("HTTP {}: {}", status.as_u16(), text.trim())
    };
    let result = if status.is_success() {
        AttemptResult::done(code, detail)
    } else if status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
    {
        AttemptResult::retry(code, detail, retry_after)
    } else {
        AttemptResult::fail(code, detail)
    };
    result.with_output(output)
}

/// Up to `cap` bytes of the body; a body that breaks off keeps what came.
async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < cap {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = cap - kept.len();
                kept.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
            }
            Ok(None) | Err(_) => break,
        }
    }
    kept
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(v)?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate_parse(v: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v).ok().or_else(|| {
        // IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
        let parts: Vec<&str> = v.split_whitespace().collect();
        let [_, day, mon, year, time, "GMT"] = parts.as_slice() else {
            return None;
        };
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let m = months.iter().position(|x| x == mon)? + 1;
        humantime::parse_rfc3339(&format!("{year}-{m:02}-{day:0>2}T{time}Z")).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert!(parse_retry_after("soon").is_none());
    }

    #[test]
    fn standard_signature_matches_the_spec_vector() {
        // The Standard Webhooks reference vector.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let h = standard_signature(
            &SigningKey(key),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(h[2].1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
