//! The admin listener: `/healthz` and `/readyz` (ready once rules are
//! loaded), `/metrics` as valid Prometheus text exposition that counts what
//! happens, and the admin token, which guards metrics and the API but not
//! the probes.
//!
//! The exposition validator is written here and tested against text that is
//! not exposition, so a passing metrics test means something.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::{
    self, ServerOpts, admin_get, get, install, metrics_text, push, request, unique, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn readyz_follows_whether_rules_are_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    support::write(&rules, "empty.yaml", "# nothing yet\n");
    let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .admin()
        .start();
    let resp = admin_get(&server, "/readyz", None);
    assert_eq!(resp.status, 503, "ready without any source: {resp:?}");
    assert_eq!(admin_get(&server, "/healthz", None).status, 200);

    install(&rules, "metrics.yaml", "metrics.yaml", &[]);
    assert!(
        wait_until(WAIT, || admin_get(&server, "/readyz", None).status == 200),
        "not ready after rules arrived: {:?}\nlog:\n{}",
        admin_get(&server, "/readyz", None),
        server.log()
    );
    let ready = admin_get(&server, "/readyz", None).json();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["store"], true, "{ready}");
}

// ---- metrics ----

/// A sample's labels, in order.
type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        "NaN" => return Some(f64::NAN),
        _ => {}
    }
    let allowed = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && s.chars().any(|c| c.is_ascii_digit());
    allowed.then(|| s.parse::<f64>().ok()).flatten()
}

/// `k="v",k2="v2"` (the part between braces).
fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let after = &rest[eq + 1..];
        let mut chars = after.char_indices();
        if chars.next().map(|(_, c)| c) != Some('"') {
            return Err(format!("label {name} value is not quoted"));
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape \\{other:?}")),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                '\n' => return Err("newline in label value".into()),
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("label {name} value not closed"))?;
        out.push((name.to_owned(), value));
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            if r.is_empty() {
                return Err("trailing comma".into());
            }
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("expected , between labels, found {rest:?}"));
        }
    }
    let mut names: Vec<&String> = out.iter().map(|(k, _)| k).collect();
    names.sort();
    names.dedup();
    if names.len() != out.len() {
        return Err("repeated label name".into());
    }
    Ok(out)
}

/// The suffixes a sample of a family of `kind` may add to its name.
fn suffixes(kind: &str) -> &'static [&'static str] {
    match kind {
        "counter" => &["_total", "_created"],
        "histogram" => &["_bucket", "_count", "_sum", "_created"],
        "gaugehistogram" => &["_bucket", "_gcount", "_gsum"],
        "summary" => &["", "_count", "_sum", "_created"],
        "info" => &["_info"],
        _ => &[""],
    }
}

/// Check Prometheus / OpenMetrics text exposition line by line, and that
/// histograms are cumulative with `+Inf` equal to `_count`. Returns the
/// samples.
fn validate_exposition(text: &str) -> Result<Vec<Sample>, String> {
    const TYPES: [&str; 8] = [
        "counter",
        "gauge",
        "histogram",
        "gaugehistogram",
        "stateset",
        "info",
        "summary",
        "unknown",
    ];
    if !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let bad = |why: &str| format!("line {n} {line:?}: {why}");
        if eof {
            return Err(bad("after # EOF"));
        }
        if line.is_empty() {
            return Err(bad("empty line"));
        }
        if let Some(rest) = line.strip_prefix('#') {
            if line == "# EOF" {
                eof = true;
                continue;
            }
            let rest = rest
                .strip_prefix(' ')
                .ok_or_else(|| bad("no space after #"))?;
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            let name = parts.next().ok_or_else(|| bad("no metric name"))?;
            if !is_metric_name(name) {
                return Err(bad("bad metric name"));
            }
            let arg = parts.next();
            match keyword {
                "HELP" => {
                    if arg.is_none_or(|h| h.trim().is_empty()) {
                        return Err(bad("empty HELP"));
                    }
                }
                "TYPE" => {
                    let kind = arg.ok_or_else(|| bad("TYPE without a type"))?;
                    if !TYPES.contains(&kind) {
                        return Err(bad("unknown type"));
                    }
                    if families.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(bad("family typed twice"));
                    }
                }
                "UNIT" => {
                    if arg.is_none_or(|u| !is_label_name(u)) {
                        return Err(bad("bad UNIT"));
                    }
                }
                _ => return Err(bad("unknown # line")),
            }
            continue;
        }
        let (name, labels, rest) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let close = line.rfind('}').ok_or_else(|| bad("labels not closed"))?;
                let labels = parse_labels(&line[i + 1..close]).map_err(|e| bad(&e))?;
                (&line[..i], labels, &line[close + 1..])
            }
            Some(i) => (&line[..i], Vec::new(), &line[i..]),
            None => return Err(bad("no value")),
        };
        if !is_metric_name(name) {
            return Err(bad("bad metric name"));
        }
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| bad("no space before the value"))?;
        let mut fields = rest.split(' ');
        let value = fields
            .next()
            .and_then(parse_number)
            .ok_or_else(|| bad("value is not a float"))?;
        if let Some(ts) = fields.next()
            && parse_number(ts).is_none_or(|t| !t.is_finite())
        {
            return Err(bad("timestamp is not a number"));
        }
        if fields.next().is_some() {
            return Err(bad("trailing fields"));
        }
        let family = families
            .iter()
            .find(|(f, kind)| {
                suffixes(kind)
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .map(|(f, _)| f.clone());
        if family.is_none() {
            return Err(bad("sample of a family without a TYPE line before it"));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    if !eof {
        return Err("no # EOF line".into());
    }
    // Histograms: cumulative buckets, `+Inf` equal to `_count`.
    for (family, kind) in &families {
        if kind != "histogram" {
            continue;
        }
        let bucket_name = format!("{family}_bucket");
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in samples.iter().filter(|s| s.name == bucket_name) {
            let le = s
                .labels
                .iter()
                .find(|(k, _)| k == "le")
                .and_then(|(_, v)| parse_number(v))
                .ok_or_else(|| format!("{bucket_name} without a numeric le: {s:?}"))?;
            let rest: Labels = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            series.entry(rest).or_default().push((le, s.value));
        }
        for (labels, buckets) in &series {
            if buckets
                .windows(2)
                .any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1)
            {
                return Err(format!(
                    "{family}{labels:?}: buckets not cumulative: {buckets:?}"
                ));
            }
            let inf = buckets
                .last()
                .filter(|(le, _)| le.is_infinite())
                .ok_or_else(|| format!("{family}{labels:?}: no +Inf bucket"))?;
            let count = samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && s.labels == *labels)
                .ok_or_else(|| format!("{family}{labels:?}: no _count"))?;
            if (count.value - inf.1).abs() > f64::EPSILON {
                return Err(format!(
                    "{family}{labels:?}: +Inf bucket {} != _count {}",
                    inf.1, count.value
                ));
            }
        }
    }
    Ok(samples)
}

/// The sum of the samples named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

fn has(samples: &[Sample], name: &str) -> bool {
    samples.iter().any(|s| s.name == name)
}

#[test]
fn exposition_validator_rejects_what_is_not_exposition() {
    let good = "# HELP a_total Things.\n# TYPE a counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\
                # HELP h Hist.\n# TYPE h histogram\nh_sum 1.5\nh_count 2\n\
                h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n";
    let samples = validate_exposition(good).expect("valid exposition");
    assert_eq!(value(&samples, "a_total", &[("x", "1")]), 3.0);
    for bad in [
        "a_total 1\n# EOF\n",                              // no TYPE
        "# TYPE a counter\na_total one\n# EOF\n",          // value
        "# TYPE a counter\na_total{x=1} 1\n# EOF\n",       // unquoted
        "# TYPE a counter\na_total{x=\"1\",} 1\n# EOF\n",  // trailing comma
        "# TYPE a counter\na_total{x=\"1\"}1\n# EOF\n",    // no space
        "# TYPE a counter\na_total 1\n",                   // no EOF
        "# TYPE a counter\na_total 1\n# EOF\na_total 2\n", // after EOF
        "# TYPE a kounter\na_total 1\n# EOF\n",            // type
        "# TYPE a counter\n\na_total 1\n# EOF\n",          // empty line
        "# HELP a\n# TYPE a counter\na_total 1\n# EOF\n",  // empty help
        "# TYPE a counter\na 1\n# EOF\n",                  // counter suffix
        "# TYPE a counter\na_total 1 2 3\n# EOF\n",        // extra
        "# TYPE h histogram\nh_count 2\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\n# EOF\n",
        "# TYPE h histogram\nh_count 3\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n",
        "# TYPE a counter\n# TYPE a counter\na_total 1\n# EOF\n", // typed twice
        "# a comment\n# EOF\n",                                   // stray comment
    ] {
        assert!(
            validate_exposition(bad).is_err(),
            "accepted invalid exposition:\n{bad}"
        );
    }
}

const MET_SECRET: &str = "metrics-test-secret";

#[test]
fn metrics_are_valid_exposition_and_count_what_happens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(dir.path(), "metrics.yaml", "metrics.yaml", &[]);
    let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .admin()
        .start();
    let resp = admin_get(&server, "/metrics", None);
    assert_eq!(resp.status, 200);
    let ctype = resp
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        ctype.starts_with("application/openmetrics-text") || ctype.starts_with("text/plain"),
        "content type {ctype:?}"
    );
    let before = validate_exposition(&resp.body)
        .unwrap_or_else(|e| panic!("invalid exposition: {e}\n{}", resp.body));

    const N: usize = 3;
    let ids: Vec<String> = (0..N).map(|_| unique("met")).collect();
    for id in &ids {
        assert_eq!(push(&server, "met", MET_SECRET, "x", id).status, 202);
    }
    let bad = push(&server, "met", "not-the-secret", "x", &unique("met"));
    assert_eq!(bad.status, 401);
    for id in &ids {
        assert!(
            server.wait_log(&format!("met-fired[{id}]"), 1, WAIT),
            "{id} did not run; log:\n{}",
            server.log()
        );
    }
    // Deliveries are counted once recorded; give the dispatcher a moment.
    let mut text = String::new();
    let settled = wait_until(WAIT, || {
        text = metrics_text(&server, None);
        validate_exposition(&text).is_ok_and(|s| {
            value(&s, "hookrouter_deliveries_total", &[("outcome", "ok")])
                - value(&before, "hookrouter_deliveries_total", &[("outcome", "ok")])
                >= N as f64
        })
    });
    let after =
        validate_exposition(&text).unwrap_or_else(|e| panic!("invalid exposition: {e}\n{text}"));
    assert!(settled, "deliveries never counted:\n{text}");

    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(
        delta(
            "hookrouter_requests_total",
            &[("source", "met"), ("status", "202")]
        ),
        N as f64,
        "{text}"
    );
    assert_eq!(
        delta(
            "hookrouter_requests_total",
            &[("source", "met"), ("status", "401")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(
            "hookrouter_verification_failures_total",
            &[("source", "met"), ("reason", "mismatch")]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta("hookrouter_events_matched_total", &[("rule", "met-all")]),
        N as f64,
        "{text}"
    );
    assert_eq!(
        delta(
            "hookrouter_deliveries_total",
            &[("action", "log"), ("outcome", "ok")]
        ),
        N as f64,
        "{text}"
    );
    assert!(
        delta("hookrouter_ingest_latency_seconds_count", &[]) >= (N + 1) as f64,
        "{text}"
    );
    assert!(
        delta(
            "hookrouter_ingest_latency_seconds_bucket",
            &[("le", "+Inf")]
        ) >= (N + 1) as f64,
        "{text}"
    );
    assert!(
        delta(
            "hookrouter_store_commit_batch_size_bucket",
            &[("le", "+Inf")]
        ) >= 1.0,
        "{text}"
    );
    for name in [
        "hookrouter_queue_depth",
        "hookrouter_ingest_latency_seconds_bucket",
        "hookrouter_store_commit_batch_size_bucket",
        "hookrouter_reload_success",
    ] {
        assert!(has(&after, name), "no {name}:\n{text}");
    }
    assert_eq!(
        value(&after, "hookrouter_queue_depth", &[("state", "pending")]),
        0.0,
        "{text}"
    );
}

#[test]
fn admin_token_guards_metrics_and_api_but_not_probes() {
    const TOKEN: &str = "admin-test-token-5c1e";
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = install(dir.path(), "metrics.yaml", "metrics.yaml", &[]);
    let server = ServerOpts::new(&rules, &dir.path().join("data.redb"))
        .admin()
        .arg("--admin-token")
        .arg(TOKEN)
        .start();
    let id = unique("tok");
    let accepted = push(&server, "met", MET_SECRET, "x", &id);
    assert_eq!(accepted.status, 202);
    let key = accepted.json()["key"].as_str().expect("key").to_owned();

    for path in [
        "/metrics".to_owned(),
        "/api/status".to_owned(),
        "/api/events".to_owned(),
        format!("/api/events/{key}"),
        "/api/deliveries".to_owned(),
    ] {
        for wrong in [None, Some("wrong-token"), Some(&TOKEN[..TOKEN.len() - 1])] {
            let resp = admin_get(&server, &path, wrong);
            assert_eq!(resp.status, 401, "{path} with {wrong:?}: {resp:?}");
            assert!(!resp.body.contains(&id), "{path} leaked data without auth");
        }
        let basic_auth = format!("Basic {TOKEN}");
        let basic = get(
            &server.admin_url(&path),
            &[("Authorization", basic_auth.as_str())],
        );
        assert_eq!(basic.status, 401, "{path} accepted a non-bearer scheme");
        let resp = admin_get(&server, &path, Some(TOKEN));
        assert_eq!(resp.status, 200, "{path} with the token: {resp:?}");
    }
    let replay = request(
        "POST",
        &server.admin_url(&format!("/api/replay/{key}")),
        &[],
        b"",
    );
    assert_eq!(replay.status, 401, "replay without the token: {replay:?}");
    let events = admin_get(&server, "/api/events", Some(TOKEN)).body;
    assert!(events.contains(&id), "{events}");
    let metrics = admin_get(&server, "/metrics", Some(TOKEN)).body;
    validate_exposition(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));

    for path in ["/healthz", "/readyz"] {
        let resp = admin_get(&server, path, None);
        assert_eq!(resp.status, 200, "{path} needs no token: {resp:?}");
    }
    assert_eq!(admin_get(&server, "/readyz", None).json()["ready"], true);
}
