//! Request bodies: JSON or form-encoded, parsed only after verification.
//!
//! Owns the content types hookrouter accepts and [`Body`], the `body` that
//! rules, templates and the store see. serde_json's recursion limit bounds
//! nesting, so a deeply nested body is a 400, never a stack overflow.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A parsed request body, and for JSON the text it was parsed from.
///
/// It dereferences to the [`Value`] that rules and templates read. The store
/// writes the text rather than re-encoding the value: that re-encoding cost
/// more than the rest of an event row.
#[derive(Clone, Default)]
pub struct Body {
    value: Value,
    /// The JSON text as received; `None` for forms and stored events.
    raw: Option<Arc<[u8]>>,
}

impl Body {
    /// A body that is only a value (a form, a stored event, a test).
    pub fn from_value(value: Value) -> Body {
        Body { value, raw: None }
    }

    /// A JSON body, keeping its text.
    ///
    /// # Errors
    /// The bytes are not JSON, or nest deeper than serde_json allows.
    pub fn json(bytes: &[u8]) -> Result<Body, serde_json::Error> {
        Ok(Body {
            value: serde_json::from_slice(bytes)?,
            raw: Some(bytes.into()),
        })
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The value, without the text it was parsed from.
    pub fn into_value(self) -> Value {
        self.value
    }

    /// Drops the JSON text, keeping the value (once it is stored, nothing
    /// needs the text again).
    pub fn forget_text(&mut self) {
        self.raw = None;
    }

    /// The JSON text the value was parsed from, if the body was JSON. It
    /// encodes exactly `value` (serde_json parses it to that).
    pub fn raw_json(&self) -> Option<&[u8]> {
        self.raw.as_deref()
    }
}

impl Deref for Body {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.value
    }
}

impl From<Value> for Body {
    fn from(value: Value) -> Body {
        Body::from_value(value)
    }
}

/// Bodies are equal when their values are; the text's spacing is not
/// part of the body.
impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        self.value == other.value
    }
}

impl PartialEq<Value> for Body {
    fn eq(&self, other: &Value) -> bool {
        &self.value == other
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.value, f)
    }
}

impl fmt::Display for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.value, f)
    }
}

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Body::from_value)
    }
}

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
pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<Body, BodyError> {
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
            return Ok(Body::default());
        }
        Body::json(bytes).map_err(|e| BodyError::Malformed(e.to_string()))
    } else if mime == "application/x-www-form-urlencoded" {
        Ok(Body::from_value(parse_form(bytes)))
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
