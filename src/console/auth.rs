//! Who may use the console, and whether a form came from one of its pages.
//!
//! Owns the session cookie and the CSRF field. With `--admin-token`, the
//! login form exchanges the token (compared in constant time) for a random
//! session id kept on the server with its expiry; the browser holds it in an
//! `HttpOnly; SameSite=Strict` cookie scoped to `/ui`, so it never reaches
//! the API, which stays bearer-only. Without a token the console is open,
//! like the API: the listener is local by default and `admin_guard` keeps
//! other sites' pages out.
//!
//! Every form carries a `csrf` field: an HMAC, under a key drawn at start,
//! of the session id (or, with no token, of a fixed word), so only a page
//! this process rendered can hold it. It is checked on top of the guard's
//! `Origin` and `Sec-Fetch-Site` rules, for browsers that send neither.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

/// The cookie's name.
pub const COOKIE: &str = "hookrouter_session";
/// How long a session lasts, in seconds (the cookie's `Max-Age` and the
/// server's own expiry).
pub const MAX_AGE_SECS: u64 = 12 * 3600;
/// Most sessions kept at once; the oldest goes first beyond it, so logins
/// in a loop cannot grow memory.
const MAX_SESSIONS: usize = 1024;

/// Whether a request may see console pages.
pub enum Access {
    /// No token is configured.
    Open,
    /// A valid session, by its id.
    Session(String),
    /// A token is configured and the request has no valid session.
    Denied,
}

pub struct Auth {
    token: Option<String>,
    key: [u8; 32],
    /// Session id → when it expires.
    sessions: Mutex<HashMap<String, Instant>>,
}

impl Auth {
    pub fn new(token: Option<String>, key: [u8; 32]) -> Auth {
        Auth {
            token: token.filter(|t| !t.is_empty()),
            key,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a token is required.
    pub fn required(&self) -> bool {
        self.token.is_some()
    }

    pub fn session(&self, headers: &http::HeaderMap) -> Access {
        if self.token.is_none() {
            return Access::Open;
        }
        let Some(id) = cookie(headers) else {
            return Access::Denied;
        };
        let mut sessions = self.lock();
        match sessions.get(&id) {
            Some(until) if *until > Instant::now() => Access::Session(id),
            Some(_) => {
                sessions.remove(&id);
                Access::Denied
            }
            None => Access::Denied,
        }
    }

    /// A new session id if `given` is the token; `None` otherwise (and when
    /// no token is configured: there is nothing to log in to).
    pub fn login(&self, given: &str) -> Option<String> {
        let token = self.token.as_ref()?;
        let same =
            given.len() == token.len() && bool::from(given.as_bytes().ct_eq(token.as_bytes()));
        if !same {
            return None;
        }
        let id = hex::encode(crate::entropy::seed().ok()?);
        let now = Instant::now();
        let mut sessions = self.lock();
        sessions.retain(|_, until| *until > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), now + Duration::from_secs(MAX_AGE_SECS));
        Some(id)
    }

    pub fn logout(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The CSRF field for pages shown to `session` (`None`: no token).
    pub fn csrf(&self, session: Option<&str>) -> String {
        hex::encode(self.mac(session))
    }

    /// Whether `given` is the CSRF field of `session`.
    pub fn check_csrf(&self, session: Option<&str>, given: Option<&str>) -> bool {
        let Some(given) = given.and_then(|g| hex::decode(g).ok()) else {
            return false;
        };
        bool::from(given.as_slice().ct_eq(&self.mac(session)))
    }

    fn mac(&self, session: Option<&str>) -> Vec<u8> {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            // HMAC takes a key of any length; never reached.
            return Vec::new();
        };
        match session {
            Some(id) => {
                mac.update(b"session\0");
                mac.update(id.as_bytes());
            }
            None => mac.update(b"open"),
        }
        mac.finalize().into_bytes().to_vec()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        match self.sessions.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={MAX_AGE_SECS}")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, value.parse().expect("header"));
        h
    }

    #[test]
    fn only_the_token_opens_a_session_and_only_that_session_counts() {
        let auth = Auth::new(Some("s3cret-token".into()), [7; 32]);
        assert!(auth.login("s3cret-tokex").is_none());
        assert!(auth.login("").is_none());
        assert!(matches!(
            auth.session(&http::HeaderMap::new()),
            Access::Denied
        ));
        let id = auth.login("s3cret-token").expect("session");
        let h = with_cookie(&format!("other=1; {COOKIE}={id}"));
        assert!(matches!(auth.session(&h), Access::Session(s) if s == id));
        assert!(matches!(
            auth.session(&with_cookie(&format!("{COOKIE}=forged"))),
            Access::Denied
        ));
        auth.logout(&id);
        assert!(matches!(auth.session(&h), Access::Denied));
    }

    #[test]
    fn csrf_is_tied_to_the_session() {
        let auth = Auth::new(Some("t0ken".into()), [1; 32]);
        let a = auth.csrf(Some("a"));
        assert!(auth.check_csrf(Some("a"), Some(&a)));
        assert!(!auth.check_csrf(Some("b"), Some(&a)));
        assert!(!auth.check_csrf(Some("a"), None));
        assert!(!auth.check_csrf(Some("a"), Some("zz")));
        let open = Auth::new(None, [2; 32]);
        let field = open.csrf(None);
        assert!(open.check_csrf(None, Some(&field)));
        // Another process (another key) cannot have rendered it.
        assert!(!Auth::new(None, [3; 32]).check_csrf(None, Some(&field)));
    }

    #[test]
    fn sessions_are_bounded() {
        let auth = Auth::new(Some("t0ken".into()), [1; 32]);
        for _ in 0..MAX_SESSIONS + 10 {
            auth.login("t0ken").expect("session");
        }
        assert!(auth.lock().len() <= MAX_SESSIONS);
    }
}
