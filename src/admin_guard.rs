//! Which requests the admin listener answers at all: the `Host` check (421)
//! and the cross-site check on state-changing requests (403).
//!
//! Without `--admin-token` the admin API trusts whoever can connect, and a
//! browser on the same machine can connect to loopback. Two checks keep web
//! pages out. A page that rebinds its own name to 127.0.0.1 still sends that
//! name as `Host`, so only this listener's own names are answered. A page
//! that posts a form or a `fetch` to the loopback port gets no CORS
//! preflight, but the browser marks the request with `Sec-Fetch-Site` and
//! `Origin`, so a state-changing request carrying another site's marks is
//! refused. curl and `hookrouter` send neither header and are unaffected.
//!
//! Both checks read only the request head, so every route on the listener
//! (probes, metrics, API) runs them before anything else.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use http::{Method, Request, StatusCode, Version, header};

/// A host as the checks compare it: IP literals by value (so `[::1]` and
/// `[0:0:0:0:0:0:0:1]` are one host), names case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPart {
    Ip(IpAddr),
    Name(String),
}

/// `host[:port]`: a `Host` header, the authority of an `Origin`, or an
/// `--admin-host` value. IPv6 literals are bracketed, as in a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    host: HostPart,
    port: Option<u16>,
}

impl Authority {
    /// Parse `host[:port]`; `None` for anything else (a path, user info,
    /// an unbracketed IPv6 address, an empty or non-numeric port).
    #[must_use]
    pub fn parse(s: &str) -> Option<Authority> {
        if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest.split_once(']')?;
            let ip: Ipv6Addr = inside.parse().ok()?;
            let port = match after {
                "" => None,
                p => Some(parse_port(p.strip_prefix(':')?)?),
            };
            return Some(Authority {
                host: HostPart::Ip(IpAddr::V6(ip)),
                port,
            });
        }
        let (name, port) = match s.split_once(':') {
            Some((name, port)) => (name, Some(parse_port(port)?)),
            None => (s, None),
        };
        let host = if let Ok(ip) = name.parse::<Ipv4Addr>() {
            HostPart::Ip(IpAddr::V4(ip))
        } else if !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            HostPart::Name(name.to_ascii_lowercase())
        } else {
            return None;
        };
        Some(Authority { host, port })
    }

    /// The same host, and the same port once a missing one is read as
    /// `default`.
    fn same(&self, other: &Authority, default: u16) -> bool {
        self.host == other.host && self.port.unwrap_or(default) == other.port.unwrap_or(default)
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

impl FromStr for Authority {
    type Err = String;

    /// An `--admin-host` value; a bare IPv6 address is taken too, since a
    /// flag has no port to confuse it with.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<Ipv6Addr>() {
            return Ok(Authority {
                host: HostPart::Ip(IpAddr::V6(ip)),
                port: None,
            });
        }
        Authority::parse(s).ok_or_else(|| {
            format!(
                "{s:?} is not a host name or IP address with an optional :port \
                 (e.g. admin.example.com, admin.example.com:8443, [fd00::1]:9001)"
            )
        })
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostPart::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            HostPart::Ip(ip) => write!(f, "{ip}")?,
            HostPart::Name(n) => f.write_str(n)?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// Why a request was turned away before any route ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request names a host this listener is not (421).
    Misdirected,
    /// A state-changing request sent by a page of another site (403).
    CrossSite,
}

impl Refusal {
    #[must_use]
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Refusal::CrossSite => StatusCode::FORBIDDEN,
        }
    }

    /// The answer's `error` text: what was refused and how to allow it.
    #[must_use]
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Misdirected => {
                "misdirected request: the Host is not one this admin listener answers to \
                 (its own address, localhost, a loopback address, or a name given with --admin-host)"
            }
            Refusal::CrossSite => {
                "cross-site request refused: Sec-Fetch-Site or Origin shows it comes from another site"
            }
        }
    }
}

/// The names one admin listener answers to.
#[derive(Debug, Clone)]
pub struct Guard {
    bound: SocketAddr,
    extra: Vec<Authority>,
}

impl Guard {
    /// A guard for a listener bound to `bound` that also answers to `extra`
    /// (`--admin-host`; one given with a port matches only that port).
    #[must_use]
    pub fn new(bound: SocketAddr, extra: Vec<Authority>) -> Guard {
        Guard { bound, extra }
    }

    /// Check a request's head. `local` is the address its connection
    /// arrived at, which matters when the listener is bound to `0.0.0.0`:
    /// a probe by the machine's own IP (a Kubernetes kubelet) is answered.
    ///
    /// # Errors
    /// The refusal, `Misdirected` before `CrossSite`.
    pub fn check<B>(&self, req: &Request<B>, local: Option<SocketAddr>) -> Result<(), Refusal> {
        let target = target(req)?;
        if let Some(t) = &target
            && !self.allows(t, local)
        {
            return Err(Refusal::Misdirected);
        }
        if cross_site(req, target.as_ref()) {
            return Err(Refusal::CrossSite);
        }
        Ok(())
    }

    fn allows(&self, a: &Authority, local: Option<SocketAddr>) -> bool {
        // Any port: an SSH tunnel or a proxy may reach the listener through
        // another one, and a port cannot be rebound to another site's name.
        let builtin = match &a.host {
            HostPart::Name(n) => n == "localhost",
            HostPart::Ip(ip) => {
                let ip = ip.to_canonical();
                ip.is_loopback()
                    || ip == self.bound.ip().to_canonical()
                    || local.is_some_and(|l| ip == l.ip().to_canonical())
            }
        };
        builtin
            || self
                .extra
                .iter()
                .any(|e| e.host == a.host && e.port.is_none_or(|p| a.port == Some(p)))
    }
}

/// The authority a request is addressed to: an absolute-form target's (which
/// overrides `Host`), else its single `Host`. `Ok(None)` only for HTTP/1.0
/// without `Host`, which no browser sends and old health checkers do.
fn target<B>(req: &Request<B>) -> Result<Option<Authority>, Refusal> {
    if let Some(a) = req.uri().authority() {
        return Authority::parse(a.as_str())
            .map(Some)
            .ok_or(Refusal::Misdirected);
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version() < Version::HTTP_11 => Ok(None),
        (Some(h), None) => h
            .to_str()
            .ok()
            .and_then(Authority::parse)
            .map(Some)
            .ok_or(Refusal::Misdirected),
        _ => Err(Refusal::Misdirected),
    }
}

/// Whether a state-changing request carries a browser's marks of another
/// site: `Sec-Fetch-Site` other than `same-origin` or `none`, or an
/// `Origin` whose host and port differ from `target`. `Origin: null` counts
/// as foreign unless `Sec-Fetch-Site` says `same-origin`: a browser sends
/// `null` for a form posted from a page served with `Referrer-Policy:
/// no-referrer` (the console's pages are), and marks that same post
/// `same-origin`, a header no page can set; an opaque origin (a sandboxed
/// frame, a `data:` page) is never marked `same-origin`.
fn cross_site<B>(req: &Request<B>, target: Option<&Authority>) -> bool {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let fetch_sites: Vec<_> = req.headers().get_all("sec-fetch-site").iter().collect();
    let foreign_fetch = fetch_sites.iter().any(|v| match v.to_str() {
        Ok(s) => {
            let s = s.trim();
            !(s.eq_ignore_ascii_case("same-origin") || s.eq_ignore_ascii_case("none"))
        }
        Err(_) => true,
    });
    let same_origin_fetch = !fetch_sites.is_empty()
        && fetch_sites.iter().all(|v| {
            v.to_str()
                .is_ok_and(|s| s.trim().eq_ignore_ascii_case("same-origin"))
        });
    foreign_fetch
        || req.headers().get_all(header::ORIGIN).iter().any(|v| {
            !v.to_str().is_ok_and(|o| {
                let o = o.trim();
                same_origin(o, target) || (o == "null" && same_origin_fetch)
            })
        })
}

fn same_origin(origin: &str, target: Option<&Authority>) -> bool {
    let (Some(target), Some((scheme, rest))) = (target, origin.split_once("://")) else {
        return false;
    };
    let default = if scheme.eq_ignore_ascii_case("http") {
        80
    } else if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        return false;
    };
    Authority::parse(rest).is_some_and(|o| o.same(target, default))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: &str = "127.0.0.1:9101";

    fn guard(extra: &[&str]) -> Guard {
        Guard::new(
            BOUND.parse().unwrap(),
            extra.iter().map(|e| e.parse().unwrap()).collect(),
        )
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn get_host(g: &Guard, host: &str) -> Result<(), Refusal> {
        g.check(&req("GET", "/api/events", &[("Host", host)]), None)
    }

    #[test]
    fn own_names_with_or_without_a_port_are_answered() {
        let g = guard(&[]);
        for host in [
            "localhost",
            "localhost:9101",
            "LocalHost:9101",
            "127.0.0.1",
            "127.0.0.1:9101",
            "127.0.0.1:8080",
            "127.1.2.3:9101",
            "[::1]",
            "[::1]:9101",
            "[0:0:0:0:0:0:0:1]:9101",
            "[::ffff:127.0.0.1]:9101",
        ] {
            assert_eq!(get_host(&g, host), Ok(()), "{host}");
        }
    }

    #[test]
    fn other_names_and_malformed_hosts_are_misdirected() {
        let g = guard(&[]);
        for host in [
            "evil.example",
            "evil.example:9101",
            "localhost.evil.example:9101",
            "127.0.0.1.nip.io:9101",
            "10.0.0.5:9101",
            "::1",
            "::1:9101",
            "[::1",
            "[::1]9101",
            "[::1]:",
            "localhost:",
            "localhost:99999",
            "localhost:9101:9101",
            "user@localhost:9101",
            "localhost/x",
            "",
            "[fe80::1%25eth0]:9101",
        ] {
            assert_eq!(get_host(&g, host), Err(Refusal::Misdirected), "{host:?}");
        }
    }

    #[test]
    fn missing_or_repeated_host_is_misdirected_on_http_1_1() {
        let g = guard(&[]);
        let mut r = req("GET", "/healthz", &[]);
        *r.version_mut() = Version::HTTP_11;
        assert_eq!(g.check(&r, None), Err(Refusal::Misdirected));
        *r.version_mut() = Version::HTTP_10;
        assert_eq!(g.check(&r, None), Ok(()));
        let r = req(
            "GET",
            "/healthz",
            &[("Host", "localhost"), ("Host", "evil.example")],
        );
        assert_eq!(g.check(&r, None), Err(Refusal::Misdirected));
    }

    #[test]
    fn an_absolute_form_target_overrides_host() {
        let g = guard(&[]);
        let r = req(
            "GET",
            "http://evil.example:9101/api/events",
            &[("Host", "localhost:9101")],
        );
        assert_eq!(g.check(&r, None), Err(Refusal::Misdirected));
        let r = req(
            "GET",
            "http://localhost:9101/api/events",
            &[("Host", "evil.example")],
        );
        assert_eq!(g.check(&r, None), Ok(()));
    }

    #[test]
    fn admin_host_names_match_by_name_and_by_port_when_given() {
        let g = guard(&[
            "Admin.Internal",
            "proxy.example:8443",
            "[fd00::7]",
            "fd00::8",
        ]);
        for host in [
            "admin.internal",
            "admin.internal:1",
            "proxy.example:8443",
            "[fd00::7]:9101",
            "[fd00::8]",
        ] {
            assert_eq!(get_host(&g, host), Ok(()), "{host}");
        }
        for host in [
            "proxy.example",
            "proxy.example:443",
            "internal",
            "[fd00::9]",
        ] {
            assert_eq!(get_host(&g, host), Err(Refusal::Misdirected), "{host}");
        }
        for bad in ["http://x", "a/b", "x:y", "", "[::1]x", "a b"] {
            assert!(bad.parse::<Authority>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_wildcard_listener_answers_its_bound_and_arrival_addresses() {
        let g = Guard::new("0.0.0.0:9101".parse().unwrap(), Vec::new());
        let r = req("GET", "/healthz", &[("Host", "10.1.2.3:9101")]);
        assert_eq!(g.check(&r, None), Err(Refusal::Misdirected));
        assert_eq!(g.check(&r, Some("10.1.2.3:9101".parse().unwrap())), Ok(()));
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:9101".parse().unwrap();
        assert_eq!(g.check(&r, Some(mapped)), Ok(()));
        assert_eq!(get_host(&g, "0.0.0.0:9101"), Ok(()));
    }

    #[test]
    fn state_changes_with_another_sites_marks_are_refused() {
        let g = guard(&["admin.internal"]);
        let post = |headers: &[(&str, &str)]| {
            let mut all = vec![("Host", "localhost:9101")];
            all.extend_from_slice(headers);
            g.check(&req("POST", "/api/replay/k", &all), None)
        };
        for refused in [
            vec![("Sec-Fetch-Site", "cross-site")],
            vec![("Sec-Fetch-Site", "same-site")],
            vec![("Sec-Fetch-Site", "bogus")],
            vec![("Origin", "http://evil.example:9101")],
            vec![("Origin", "http://localhost:9102")],
            vec![("Origin", "http://localhost")],
            vec![("Origin", "https://localhost:9101x")],
            vec![("Origin", "null")],
            vec![("Origin", "")],
            vec![("Origin", "ftp://localhost:9101")],
            vec![("Origin", "http://admin.internal:9101")],
            vec![
                ("Sec-Fetch-Site", "same-origin"),
                ("Origin", "http://evil.example"),
            ],
            vec![("Sec-Fetch-Site", "none"), ("Origin", "null")],
            vec![("Sec-Fetch-Site", "cross-site"), ("Origin", "null")],
        ] {
            assert_eq!(post(&refused), Err(Refusal::CrossSite), "{refused:?}");
        }
        for allowed in [
            vec![],
            vec![("Sec-Fetch-Site", "same-origin")],
            vec![("Sec-Fetch-Site", "none")],
            vec![("Sec-Fetch-Site", "Same-Origin")],
            vec![("Origin", "http://localhost:9101")],
            vec![("Origin", "HTTP://LOCALHOST:9101")],
            vec![
                ("Sec-Fetch-Site", "same-origin"),
                ("Origin", "http://localhost:9101"),
            ],
            // A form posted from a page served with `no-referrer`.
            vec![("Sec-Fetch-Site", "same-origin"), ("Origin", "null")],
        ] {
            assert_eq!(post(&allowed), Ok(()), "{allowed:?}");
        }
        for method in ["DELETE", "PUT", "PATCH"] {
            let r = req(
                method,
                "/api/x",
                &[("Host", "localhost:9101"), ("Sec-Fetch-Site", "cross-site")],
            );
            assert_eq!(g.check(&r, None), Err(Refusal::CrossSite), "{method}");
        }
    }

    #[test]
    fn default_ports_are_equal_to_missing_ones() {
        let g = guard(&["admin.example"]);
        let check = |host: &str, origin: &str| {
            g.check(
                &req(
                    "POST",
                    "/api/replay/k",
                    &[("Host", host), ("Origin", origin)],
                ),
                None,
            )
        };
        assert_eq!(check("admin.example", "https://admin.example"), Ok(()));
        assert_eq!(check("admin.example:443", "https://admin.example"), Ok(()));
        assert_eq!(check("admin.example", "http://admin.example:80"), Ok(()));
        assert_eq!(
            check("admin.example:80", "https://admin.example"),
            Err(Refusal::CrossSite)
        );
    }

    #[test]
    fn reads_are_not_subject_to_the_cross_site_check() {
        let g = guard(&[]);
        for method in ["GET", "HEAD", "OPTIONS"] {
            let r = req(
                method,
                "/api/events",
                &[
                    ("Host", "localhost:9101"),
                    ("Sec-Fetch-Site", "cross-site"),
                    ("Origin", "http://evil.example"),
                ],
            );
            assert_eq!(g.check(&r, None), Ok(()), "{method}");
        }
    }

    #[test]
    fn the_host_check_comes_first() {
        let g = guard(&[]);
        let r = req(
            "POST",
            "/api/replay/k",
            &[
                ("Host", "evil.example:9101"),
                ("Origin", "http://evil.example:9101"),
                ("Sec-Fetch-Site", "cross-site"),
            ],
        );
        assert_eq!(g.check(&r, None), Err(Refusal::Misdirected));
    }
}
