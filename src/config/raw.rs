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

mod bursts;
pub use bursts::{DebounceConfig, LimitConfig};

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
    /// Budgets shared by every rule that names them in `limit:`.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
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
    /// The answer for every accepted event of this source, unless a matched
    /// rule's `respond:` answers it.
    #[serde(default)]
    #[schemars(with = "Option<RespondConfig>")]
    pub respond: Option<Spanned<RespondConfig>>,
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
    /// One more condition after `match:`: a template that must render `true`
    /// (trimmed, any case). Sees `body`, `headers`, `query`, `event`, `rule`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
    #[schemars(with = "Vec<ActionConfig>")]
    pub actions: Vec<Spanned<ActionConfig>>,
    /// Actions run once when one of this rule's deliveries goes dead.
    #[serde(default)]
    #[schemars(with = "Vec<ActionConfig>")]
    pub on_failure: Vec<Spanned<ActionConfig>>,
    /// Actions run once per cancelled event of this rule, with
    /// `cancel.reason`.
    #[serde(default)]
    #[schemars(with = "Vec<ActionConfig>")]
    pub on_cancel: Vec<Spanned<ActionConfig>>,
    /// Deliveries are due this long after the event was accepted, e.g. `10s`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub delay: Option<Spanned<String>>,
    /// Events with the same rendered key less than `quiet` apart run the
    /// actions once, on the newest event, with `debounce.count` and
    /// `debounce.first_at`.
    #[serde(default)]
    pub debounce: Option<DebounceConfig>,
    /// Budgets: names from `limits:` or `{ key, rate, over }` of this rule.
    #[serde(default)]
    #[schemars(with = "Option<Vec<bursts::LimitItemSchema>>")]
    pub limit: Option<Node>,
    /// The answer the sender gets for an event this rule matches, instead
    /// of the standard 202; the first matched rule with one answers.
    #[serde(default)]
    #[schemars(with = "Option<RespondConfig>")]
    pub respond: Option<Spanned<RespondConfig>>,
}

/// `respond:`: the HTTP answer to the sender, rendered from the event
/// (`body`, `headers`, `query`, `event`) and sent once the event is stored.
/// A duplicate gets the same answer; a render error the standard 202.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    /// A 2xx status; default 200.
    #[serde(default)]
    #[schemars(with = "Option<u16>", range(min = 200, max = 299))]
    pub status: Option<Spanned<u16>>,
    /// Header templates. `Content-Type` defaults to `application/json` for
    /// `json` and `text/plain; charset=utf-8` for `body`.
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
}

/// One action: exactly one of `log`, `http`, `shell`, `cancel`, plus options.
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
    /// Cancel the pending and running deliveries of a rule whose group key
    /// equals `key`.
    #[serde(default)]
    pub cancel: Option<CancelConfig>,
    /// A template that must render `true` (trimmed, any case) just before
    /// an attempt; otherwise the delivery is recorded `skipped`. In `then:`
    /// actions it sees `result`.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub when: Option<Spanned<String>>,
    /// Deliveries of this action with the same rendered `key` form a group
    /// of which at most `limit` run at once.
    #[serde(default)]
    pub group: Option<GroupConfig>,
    /// Actions run once after this one succeeds, with `result` (`status`,
    /// `stdout`, `stderr`, `body`, `json`); they nest at most 8 deep.
    #[serde(default)]
    #[schemars(with = "Vec<ActionConfig>")]
    pub then: Vec<Spanned<ActionConfig>>,
    /// A delivery not started this long after its event was accepted, e.g.
    /// `15m`, is `expired` and the rule's `on_failure` runs.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub start_within: Option<Spanned<String>>,
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
    /// shell: a template written to the child's standard input, which is
    /// then closed.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub stdin: Option<Spanned<String>>,
    /// shell: file name → content template, written to a fresh private
    /// directory for each attempt; `{{ files['name'] }}` is the file's path.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<String, String>>")]
    pub files: Option<Node>,
}

/// `cancel:` as an action.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelConfig {
    /// The rule whose deliveries are cancelled.
    #[schemars(with = "String")]
    pub rule: Spanned<String>,
    /// Template for the group key to cancel.
    #[schemars(with = "String")]
    pub key: Spanned<String>,
}

/// `group:` on an action.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Template; deliveries whose rendered keys are equal form a group.
    #[schemars(with = "String")]
    pub key: Spanned<String>,
    /// At most this many members run at once; default 1.
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1))]
    pub limit: Option<Spanned<u32>>,
    /// When the group is full: `queue` (default) waits in order of arrival,
    /// `replace` supersedes the waiting ones, `cancel` cancels the running
    /// ones, `skip` records the new one `skipped`.
    #[serde(default)]
    #[schemars(schema_with = "on_busy_schema")]
    pub on_busy: Option<Spanned<String>>,
    /// From SIGTERM to SIGKILL when a shell run is cancelled or times out,
    /// e.g. `30s`; default 10s.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub kill_grace: Option<Spanned<String>>,
}

/// The words `on_busy` accepts, in the order messages list them.
pub const ON_BUSY: &[&str] = &["queue", "replace", "cancel", "skip"];

/// The `on_busy` words, so editors can complete them; absent means `queue`.
fn on_busy_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut words: Vec<serde_json::Value> = ON_BUSY.iter().map(|w| (*w).into()).collect();
    words.push(serde_json::Value::Null);
    schemars::json_schema!({
        "type": ["string", "null"],
        "enum": words,
    })
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
    /// The rules that must match, and no others: a rule's name, or
    /// `{ rule, actions }` to check its rendered actions too.
    #[schemars(with = "Vec<ExpectSchema>")]
    pub expect: Vec<Node>,
}

// Schema-only, as are the four types after it.
/// An `expect:` entry: a rule that must match, by name, or with checks on
/// its rendered actions.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum ExpectSchema {
    /// The rule's name.
    Rule(String),
    Actions(ExpectActionsSchema),
}

/// A rule that must match, and checks on its rendered actions.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ExpectActionsSchema {
    rule: String,
    /// By position in the rule's `actions:`; each names the action's type.
    #[serde(default)]
    actions: Vec<ExpectActionSchema>,
}

/// One rendered action: its type, and checks on its fields.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[allow(dead_code)]
pub enum ExpectActionSchema {
    /// Fields `argv` (joined by spaces), `argv[N]`, `stdin`, `env.NAME`.
    Shell(BTreeMap<String, AssertionSchema>),
    /// Fields `method`, `url`, `headers.NAME`, `body`.
    Http(BTreeMap<String, AssertionSchema>),
    /// Field `line`.
    Log(BTreeMap<String, AssertionSchema>),
    /// Fields `rule`, `key`.
    Cancel(BTreeMap<String, AssertionSchema>),
}

/// A text the field must equal, or one check.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum AssertionSchema {
    Equals(String),
    Check(CheckSchema),
}

/// Exactly one check on a field's rendered text.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[allow(dead_code)]
pub enum CheckSchema {
    Equals(String),
    Contains(String),
    /// A regular expression that must match somewhere in the value.
    Regex(String),
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
