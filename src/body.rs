//! Request bodies: JSON or form-encoded, parsed only after verification.
//!
//! Owns the content types hookrouter accepts and how each becomes the
//! `body` that rules and templates see. serde_json's recursion limit bounds
//! nesting, so a deeply nested body is a 400, never a stack overflow.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Answered with 415.
    #[error("unsupported content type {0:?}")]
    Unsupported(String),
    /// Answered with 400.
    #[error("malformed body: {0}")]
    Malformed(String),
}

/// Parse `bytes` according to `content_type` (the header's value, if any).
///
/// A missing content type is read as JSON. An empty body is `null`.
///
/// # Errors
/// `Unsupported` for a content type other than JSON or form; `Malformed`
/// when the bytes do not parse.
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Value, BodyError> {
    let mime = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let is_json = mime.is_empty()
        || mime == "application/json"
        || mime == "text/json"
        || (mime.starts_with("application/") && mime.ends_with("+json"));
    if is_json {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(bytes).map_err(|e| BodyError::Malformed(e.to_string()))
    } else if mime == "application/x-www-form-urlencoded" {
        Ok(parse_form(bytes))
    } else {
        Err(BodyError::Unsupported(mime))
    }
}

/// A form body as an object; a repeated field becomes a list of its values.
pub fn parse_form(bytes: &[u8]) -> Value {
    let mut map = Map::new();
    for (k, v) in form_urlencoded::parse(bytes) {
        let v = Value::String(v.into_owned());
        match map.get_mut(k.as_ref()) {
            Some(Value::Array(items)) => items.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                map.insert(k.into_owned(), v);
            }
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_json_suffixes() {
        assert_eq!(
            parse(Some("application/json"), b"{\"a\":1}").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            parse(Some("application/vnd.x+json; charset=utf-8"), b"[1]").unwrap(),
            json!([1])
        );
        assert_eq!(parse(None, b"{}").unwrap(), json!({}));
        assert_eq!(parse(None, b"").unwrap(), Value::Null);
    }

    #[test]
    fn forms_keep_repeated_fields() {
        let v = parse(Some("application/x-www-form-urlencoded"), b"a=1&b=x+y&a=2").unwrap();
        assert_eq!(v, json!({"a": ["1", "2"], "b": "x y"}));
    }

    #[test]
    fn malformed_and_unsupported() {
        assert!(matches!(parse(None, b"{"), Err(BodyError::Malformed(_))));
        assert!(matches!(
            parse(Some("text/plain"), b"x"),
            Err(BodyError::Unsupported(_))
        ));
        let deep = "[".repeat(100_000);
        assert!(matches!(
            parse(None, deep.as_bytes()),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            parse(None, b"\xff\xfe"),
            Err(BodyError::Malformed(_))
        ));
    }
}
