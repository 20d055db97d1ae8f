//! The on-disk shape of the burst and budget controls: the top-level
//! `limits:` and a rule's `debounce:` and `limit:` (a rule's `delay:` is a
//! plain duration). Like the rest of `raw`, no logic: `compile::bursts`
//! gives them their meaning.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A budget shared by every rule that names it in `limit:`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// How rules name it in `limit:`.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// Template; counted per rendered key. Default: one count for all.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub key: Option<Spanned<String>>,
    /// `N/s`, `N/m`, `N/h` or `N/d`, counted in a rolling window.
    #[schemars(with = "String", regex(pattern = r"^\s*[0-9]+\s*/\s*[smhd]\s*$"))]
    pub rate: Spanned<String>,
    /// Over the rate: `drop` records the rule's deliveries `dropped`,
    /// `delay` holds them until the budget allows.
    #[schemars(schema_with = "over_schema")]
    pub over: Spanned<String>,
}

/// `debounce:` on a rule.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DebounceConfig {
    /// Template; events with equal rendered keys form one burst.
    #[schemars(with = "String")]
    pub key: Spanned<String>,
    /// The burst ends this long after its last event, e.g. `30s`.
    #[schemars(with = "String")]
    pub quiet: Spanned<String>,
    /// The burst runs at most this long after its first event, e.g. `5m`;
    /// at least `quiet`.
    #[schemars(with = "String")]
    pub max_wait: Spanned<String>,
}

// Schema-only, as is the type after it.
/// An entry of a rule's `limit:`: a name from `limits:`, or a limit of
/// this rule alone.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum LimitItemSchema {
    /// The name of a limit in `limits:`.
    Named(String),
    Inline(InlineLimitSchema),
}

/// A limit of this rule alone.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct InlineLimitSchema {
    /// Template; counted per rendered key. Default: one count for all.
    #[serde(default)]
    key: Option<String>,
    /// `N/s`, `N/m`, `N/h` or `N/d`, counted in a rolling window.
    #[schemars(regex(pattern = r"^\s*[0-9]+\s*/\s*[smhd]\s*$"))]
    rate: String,
    /// Over the rate: `drop` or `delay`.
    #[schemars(schema_with = "over_schema")]
    over: String,
}

/// The `over:` words, so editors can complete them.
fn over_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": crate::rules::OVER,
    })
}
