//! The console: web pages under `/ui/` on the admin listener.
//!
//! Owns the console's routes, the headers every answer carries and the
//! templates, which are embedded in the binary (`templates/`, `static/`).
//! Pages are rendered on the server with minijinja, HTML auto-escaping on
//! for every template, from view models that `pages` builds out of the same
//! store reads and operations the admin API uses (`ops`, `Store::read`), so
//! both engines look the same. `auth` decides who may see a page (the
//! session cookie) and whether a form came from a page of ours (the CSRF
//! field); `stream` serves the live rows.
//!
//! Everything shown is hostile data: payloads, headers, event types, rule
//! names, action output. It reaches the browser only through auto-escaped
//! template variables (no template marks anything safe), after configured
//! secrets were redacted; and the Content-Security-Policy forbids any inline
//! script, style or handler, so markup that slipped through would not run.
//! Every page and button works without JavaScript: forms post and are
//! answered with a 303 back to a page. `static/app.js` only adds live rows
//! and posts forms without a reload.

mod auth;
mod pages;
mod stream;

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use tokio_util::sync::CancellationToken;

use crate::admin_guard::Refusal;
use crate::reload::ReloadStatus;
use crate::rules::RuleSet;
use crate::store::Store;

pub use stream::Committed;

/// An answer on the admin listener: a whole body, or the live stream.
pub type Answer = Response<BoxBody<Bytes, Infallible>>;

/// Exactly this policy on every console answer: nothing inline, nothing
/// from elsewhere, no framing, forms post only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest form the console reads (a bulk confirmation carries up to 100
/// items).
const MAX_FORM: usize = 64 * 1024;

/// Whether `path` is the console's.
pub fn owns(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// What the console reads and how it answers.
pub struct Console {
    rules: Arc<ArcSwap<RuleSet>>,
    store: Store,
    reload: Arc<ReloadStatus>,
    /// `--store` as logs may show it (no credentials).
    store_name: String,
    auth: auth::Auth,
    live: stream::Live,
    templates: Environment<'static>,
}

/// What `Console::new` needs.
pub struct Parts {
    pub rules: Arc<ArcSwap<RuleSet>>,
    pub store: Store,
    pub reload: Arc<ReloadStatus>,
    pub store_name: String,
    /// `--admin-token`: the console asks for it once, then uses a cookie.
    pub token: Option<String>,
    /// Keys of committed events, from ingest.
    pub committed: Committed,
    /// Ends every live stream.
    pub shutdown: CancellationToken,
}

/// Why the console cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no random source for session ids: {0}")]
    Entropy(#[from] crate::entropy::Unavailable),
    #[error("a console template does not compile: {0}")]
    Template(#[from] minijinja::Error),
}

impl Console {
    /// The console, with its live feed running until `parts.shutdown`.
    /// Needs a runtime.
    ///
    /// # Errors
    /// No randomness for session ids, or a template that does not compile.
    pub fn new(parts: Parts) -> Result<Console, StartError> {
        let templates = templates()?;
        let auth = auth::Auth::new(parts.token, crate::entropy::seed()?);
        let live = stream::Live::start(
            parts.committed,
            parts.store.clone(),
            parts.rules.clone(),
            parts.shutdown,
        );
        Ok(Console {
            rules: parts.rules,
            store: parts.store,
            reload: parts.reload,
            store_name: parts.store_name,
            auth,
            live,
            templates,
        })
    }

    /// Answer a request under `/ui`; `guard` is the admin listener's
    /// verdict on its head (Host, cross-site marks), which refuses first.
    pub async fn handle(&self, req: Request<Incoming>, guard: Result<(), Refusal>) -> Answer {
        let mut answer = match guard {
            Ok(()) => self.route(req).await,
            Err(refusal) => self.message(refusal.status(), "Refused", refusal.message()),
        };
        secure(&mut answer);
        answer
    }

    async fn route(&self, req: Request<Incoming>) -> Answer {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        // Open to all: the files every page loads, and the way in.
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["ui", "static", "app.css"]) => {
                return asset(include_str!("static/app.css"), "text/css; charset=utf-8");
            }
            ("GET", ["ui", "static", "app.js"]) => {
                return asset(
                    include_str!("static/app.js"),
                    "text/javascript; charset=utf-8",
                );
            }
            ("GET", ["ui", "login"]) => return self.login_page(StatusCode::OK, false),
            ("POST", ["ui", "login"]) => return self.login(req).await,
            _ => {}
        }
        let session = match self.auth.session(req.headers()) {
            auth::Access::Open => None,
            auth::Access::Session(id) => Some(id),
            auth::Access::Denied => return redirect("/ui/login"),
        };
        let view = View {
            csrf: self.auth.csrf(session.as_deref()),
            logged_in: session.is_some(),
        };
        let q = crate::http_util::query(req.uri());
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["ui"]) => redirect("/ui/"),
            ("GET", ["ui", ""]) => self.events(&view, &q).await,
            ("GET", ["ui", "stream"]) => self.live.subscribe(&q),
            ("GET", ["ui", "events", key]) => self.event(&view, key, &q).await,
            ("GET", ["ui", "events", key, "raw"]) => self.raw(key).await,
            ("GET", ["ui", "deliveries"]) => self.deliveries(&view, &q).await,
            ("GET", ["ui", "status"]) => self.status(&view).await,
            ("POST", rest) => {
                let fetch = req
                    .headers()
                    .get("x-requested-with")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"fetch"));
                let rest: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
                let form = match read_form(req).await {
                    Ok(f) => f,
                    Err(status) => {
                        return self.message(status, "Bad form", "The form could not be read.");
                    }
                };
                if !self.auth.check_csrf(session.as_deref(), form.get("csrf")) {
                    return self.message(
                        StatusCode::FORBIDDEN,
                        "Refused",
                        "The form's CSRF field is missing or wrong: reload the page and try again.",
                    );
                }
                let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
                match rest.as_slice() {
                    ["ui", "events", key, "replay"] => self.replay(key, &form, fetch).await,
                    ["ui", "events", key, "cancel"] => self.cancel(key, &form, fetch).await,
                    ["ui", "deliveries", "replay"] => self.bulk_replay(&view, &form).await,
                    ["ui", "logout"] => self.logout(session.as_deref()),
                    _ => self.message(StatusCode::NOT_FOUND, "Not found", "There is no such page."),
                }
            }
            _ => self.message(StatusCode::NOT_FOUND, "Not found", "There is no such page."),
        }
    }

    /// Render `name` with the page's data (redacted) and the view's own
    /// fields.
    fn render(
        &self,
        status: StatusCode,
        name: &str,
        view: &View,
        page: serde_json::Value,
    ) -> Answer {
        let set = self.rules.load();
        let mut page = page;
        pages::redact(&set, &mut page);
        let ctx = minijinja::context! {
            page => minijinja::Value::from(minijinja::value::Serde(page)),
            csrf => view.csrf.as_str(),
            logged_in => view.logged_in,
        };
        match self
            .templates
            .get_template(name)
            .and_then(|t| t.render(ctx))
        {
            Ok(html) => html_answer(status, html),
            Err(e) => {
                tracing::error!(template = name, error = %e, "Console page failed to render.");
                plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page failed to render",
                )
            }
        }
    }

    /// A page with a heading and one sentence: errors and refusals.
    fn message(&self, status: StatusCode, title: &str, text: &str) -> Answer {
        let view = View {
            csrf: String::new(),
            logged_in: false,
        };
        self.render(
            status,
            "message.html",
            &view,
            serde_json::json!({ "title": title, "text": text, "status": status.as_u16() }),
        )
    }

    fn store_error(&self, e: &crate::store::StoreError) -> Answer {
        tracing::error!(error = %e, "Console store error.");
        self.message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Storage unavailable",
            "The store could not be read; try again shortly.",
        )
    }
}

/// What every page shows besides its data.
struct View {
    csrf: String,
    logged_in: bool,
}

/// The templates, each auto-escaping HTML.
fn templates() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    // Every template is HTML whatever its name.
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    // A misspelt field fails the render instead of showing nothing.
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    for (name, source) in TEMPLATES {
        env.add_template(name, source)?;
    }
    Ok(env)
}

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("events.html", include_str!("templates/events.html")),
    ("event_row.html", include_str!("templates/event_row.html")),
    ("event.html", include_str!("templates/event.html")),
    ("deliveries.html", include_str!("templates/deliveries.html")),
    (
        "delivery_row.html",
        include_str!("templates/delivery_row.html"),
    ),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("status.html", include_str!("templates/status.html")),
    ("login.html", include_str!("templates/login.html")),
    ("message.html", include_str!("templates/message.html")),
];

/// The headers every console answer carries.
fn secure(answer: &mut Answer) {
    use http::HeaderValue;
    let h = answer.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
}

fn whole(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Answer {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

fn html_answer(status: StatusCode, html: String) -> Answer {
    whole(status, "text/html; charset=utf-8", html)
}

fn plain(status: StatusCode, text: &'static str) -> Answer {
    whole(status, "text/plain; charset=utf-8", text)
}

fn asset(text: &'static str, content_type: &'static str) -> Answer {
    whole(StatusCode::OK, content_type, text)
}

fn json_answer(status: StatusCode, value: &serde_json::Value) -> Answer {
    whole(status, "application/json", value.to_string())
}

/// 303 to `location`, a path of ours.
fn redirect(location: &str) -> Answer {
    let mut resp = whole(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = http::HeaderValue::from_str(location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

/// A form body (`application/x-www-form-urlencoded`), at most `MAX_FORM`
/// bytes; a repeated field keeps every value in `Form::all`.
async fn read_form(req: Request<Incoming>) -> Result<Form, StatusCode> {
    let limited = Limited::new(req.into_body(), MAX_FORM);
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), limited.collect()).await;
    match read {
        Ok(Ok(body)) => Ok(Form::parse(&body.to_bytes())),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}

/// A posted form's fields, in order.
#[derive(Debug, Default)]
struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    fn parse(body: &[u8]) -> Form {
        Form {
            fields: form_urlencoded::parse(body).into_owned().collect(),
        }
    }

    /// The first value of `name`, if any.
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first non-empty value of `name`.
    fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }

    /// Every value of `name`.
    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compile_and_never_mark_data_safe() {
        templates().expect("templates compile");
        let handler = regex::Regex::new(r"\son[a-z]+\s*=").expect("regex");
        for (name, source) in TEMPLATES {
            let squeezed: String = source.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(!squeezed.contains("|safe"), "{name} uses |safe");
            assert!(!source.contains("autoescape"), "{name} turns escaping off");
            // The policy forbids inline code and style; none is written.
            assert!(!source.contains("<script>"), "{name} has an inline script");
            assert!(!source.contains("<style"), "{name} has an inline style");
            assert!(!source.contains(" style="), "{name} has a style attribute");
            assert!(!handler.is_match(source), "{name} has an event handler");
            assert!(
                !source.contains("javascript:"),
                "{name} has a javascript: URL"
            );
        }
    }

    #[test]
    fn only_ui_paths_are_the_consoles() {
        assert!(owns("/ui"));
        assert!(owns("/ui/"));
        assert!(owns("/ui/events/x"));
        assert!(!owns("/uix"));
        assert!(!owns("/api/events"));
    }
}
