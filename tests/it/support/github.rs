//! Signed requests as senders make them: any provider's headers, signed by
//! the crate's own `sign`, and the GitHub push most tests send.

use super::{Headers, Resp, Server, as_refs};

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

/// A push of `git_ref` to `acme/api`; `note` makes the body differ between
/// requests (tests pass the event id or a word).
pub fn push_body(git_ref: &str, note: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": git_ref,
        "after": "0123456789abcdef0123456789abcdef01234567",
        "repository": { "full_name": "acme/api" },
        "note": note,
    })
    .to_string()
    .into_bytes()
}

/// GitHub headers for a push, signed with `secret`.
pub fn push_headers(secret: &str, body: &[u8], id: &str) -> Headers {
    let mut h = signed_headers("github", secret, body, id);
    h.push(("X-GitHub-Event".into(), "push".into()));
    h.push(("Content-Type".into(), "application/json".into()));
    h
}

/// POST a signed push of `git_ref` with event id `id` to `/hooks/<source>`.
pub fn push(server: &Server, source: &str, secret: &str, git_ref: &str, id: &str) -> Resp {
    let body = push_body(git_ref, id);
    let headers = push_headers(secret, &body, id);
    server.post(&format!("/hooks/{source}"), &as_refs(&headers), &body)
}
