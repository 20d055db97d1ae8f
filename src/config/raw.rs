//! Serde types that mirror a rule file, and nothing else.
//!
//! Owns the on-disk shape of the rule format (and so the JSON Schema, which is
//! generated from these types). Every value a diagnostic may point at is
//! wrapped in `Spanned` or is a `Node`, so it keeps its line and column.
//! There is no logic here: `compile` turns these into `rules` types, which
//! cannot be invalid. Nothing outside `config` sees these types.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::node::Node;

/// One rule file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hookrouter rules", description = "A hookrouter rule file.")]
pub struct FileConfig {
    /// Where webhooks come from and how their signatures are checked.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// What to do with verified events.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Requests that `hookrouter check` routes through the rules, with the
    /// rule names each must match.
    #[serde(default)]
    pub tests: Vec<TestConfig>,
}

/// A webhook sender, served at `/hooks/<name>` unless `path` is set.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// The signature scheme; see the README's provider table.
    #[schemars(schema_with = "provider_schema")]
    pub provider: Spanned<String>,
    /// A secret, or a list of secrets during rotation (any one verifies).
    #[serde(default)]
    #[schemars(with = "Option<StringOrList>")]
    pub secret: Option<Node>,
    /// The request path; default `/hooks/<name>`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub path: Option<Spanned<String>>,
    /// Timestamp window such as `5m`; the provider's default otherwise.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub tolerance: Option<Spanned<String>>,
    /// The public URL the sender calls (Twilio and Square sign it). Default:
    /// the Host header plus the request path.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub url: Option<Spanned<String>>,
    /// Where the event type comes from, overriding the provider: a JSONPath
    /// (`$.type`) or a header name (`X-Event-Type`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub event_type: Option<Spanned<String>>,
    /// Where the event id comes from, overriding the provider: a JSONPath or a
    /// header name.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub event_id: Option<Spanned<String>>,
    /// Generic `hmac` provider: the header carrying the signature.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub header: Option<Spanned<String>>,
    /// Generic `hmac` provider: sha1, sha256 (default) or sha512.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub algorithm: Option<Spanned<String>>,
    /// Generic `hmac` provider: hex (default) or base64.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub encoding: Option<Spanned<String>>,
    /// Generic `hmac` provider: text before the signature, e.g. `sha256=`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub prefix: Option<Spanned<String>>,
    /// Generic `hmac` provider: a header with a unix timestamp; when set the
    /// signed string is `{timestamp}.{body}`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timestamp_header: Option<Spanned<String>>,
}

/// What to do when a verified event matches.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique across all files.
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    /// A source name, a list of them, or `*`.
    #[schemars(with = "StringOrList")]
    pub source: Node,
    /// Glob(s) on the event type; a pattern without wildcards also matches
    /// its sub-types (`pull_request` matches `pull_request.opened`).
    #[serde(default)]
    #[schemars(with = "Option<StringOrList>")]
    pub event: Option<Node>,
    /// Conditions that must all hold: JSONPath keys with a value (equals) or
    /// operators, and the combinators `all`, `any`, `not`.
    #[serde(default, rename = "match")]
    #[schemars(with = "Option<BTreeMap<String, Node>>")]
    pub match_: Option<Node>,
    /// Template for the dedup key of this rule's deliveries; default: the
    /// provider's event id.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub dedup: Option<Spanned<String>>,
    #[schemars(with = "Vec<ActionConfig>")]
    pub actions: Vec<Spanned<ActionConfig>>,
    /// Actions run once when one of this rule's deliveries goes dead.
    #[serde(default)]
    #[schemars(with = "Vec<ActionConfig>")]
    pub on_failure: Vec<Spanned<ActionConfig>>,
}

/// One action: exactly one of `log`, `http`, `shell`, plus options.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionConfig {
    /// A log line (template).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub log: Option<Spanned<String>>,
    /// An HTTP request.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// A command as an argv list; never run through a shell.
    #[serde(default)]
    #[schemars(with = "Option<Vec<String>>")]
    pub shell: Option<Node>,
    /// Retry policy; http retries by default, shell and log do not.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// How long one attempt may take, e.g. `30s`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// At most this many deliveries of this action run at once; 1 runs them
    /// one at a time in order of arrival.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub concurrency: Option<Spanned<u32>>,
    /// shell: environment of the child (nothing else is inherited but PATH).
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub env: Option<BTreeMap<String, Spanned<String>>>,
    /// shell: working directory.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub workdir: Option<Spanned<String>>,
    /// shell: bytes of stdout and of stderr kept, e.g. `65536` (the default).
    #[serde(default)]
    #[schemars(with = "Option<u64>")]
    pub max_output: Option<Spanned<u64>>,
}

/// An HTTP request action.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Target URL; its host must not come from a template.
    #[schemars(with = "String")]
    pub url: Spanned<String>,
    /// Default POST.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub method: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub headers: Option<BTreeMap<String, Spanned<String>>>,
    /// A YAML value whose string leaves are templates, or one template string
    /// whose rendering is JSON.
    #[serde(default)]
    pub json: Option<Node>,
    /// A raw body template.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub body: Option<Spanned<String>>,
    /// Default 30s.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Spanned<String>>,
    /// Sign the request with the Standard Webhooks scheme.
    #[serde(default)]
    pub sign: Option<SignConfig>,
}

/// Standard Webhooks signing of an outgoing request.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignConfig {
    /// A `whsec_…` secret (base64 after the prefix).
    #[schemars(with = "String")]
    pub secret: Spanned<String>,
}

/// Exponential backoff with jitter.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Total attempts, the first included.
    #[serde(default)]
    #[schemars(with = "Option<u32>")]
    pub attempts: Option<Spanned<u32>>,
    /// First delay, e.g. `1s`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub backoff: Option<Spanned<String>>,
    /// Largest delay, e.g. `10m`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub max_backoff: Option<Spanned<String>>,
}

/// A request routed through the rules by `hookrouter check`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestConfig {
    #[schemars(with = "String")]
    pub name: Spanned<String>,
    #[schemars(with = "String")]
    pub source: Spanned<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// The request body as YAML (sent as JSON).
    #[serde(default)]
    pub body: Option<Node>,
    /// The names of the rules that must match, and no others.
    #[schemars(with = "Vec<String>")]
    pub expect: Vec<Spanned<String>>,
}

/// The provider names `providers::build` accepts, so editors can complete them.
fn provider_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": crate::providers::KINDS,
    })
}

/// Schema-only: a string or a list of strings.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}
