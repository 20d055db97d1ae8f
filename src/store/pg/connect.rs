//! Connecting to PostgreSQL: the `postgres://` URL, TLS and the pool.
//!
//! Owns reading `sslmode` (`disable`, `prefer`, `require`, `verify-full`)
//! out of the URL, since the driver knows no `verify-full`, and building the
//! rustls connector and the deadpool pool with `--store-timeout` as its wait
//! and connect limits. With rustls both `require` and `verify-full` check the
//! server's certificate against the web PKI roots and its name.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;

use crate::store::StoreError;

/// Connections per replica: the committer, the dispatcher's leases and
/// finishes, and reads of the admin API share them.
const POOL_SIZE: usize = 16;

/// Parses `url` and builds the pool. Connects lazily: nothing is dialled
/// until the first use.
pub(crate) fn pool(url: &str, timeout: Duration) -> Result<Pool, StoreError> {
    let (config, tls) = parse(url)?;
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if tls {
        let connector = tokio_postgres_rustls::MakeRustlsConnect::new(client_config()?);
        Manager::from_config(config, connector, manager_config)
    } else {
        Manager::from_config(config, tokio_postgres::NoTls, manager_config)
    };
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))
}

/// The driver's config and whether TLS is wanted. `sslmode` is taken out of
/// the URL before the driver reads it.
pub(crate) fn parse(raw: &str) -> Result<(tokio_postgres::Config, bool), StoreError> {
    let bad = |why: String| StoreError::Database(format!("invalid --store URL: {why}"));
    let mut url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    let mut mode = None;
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter_map(|(k, v)| {
            if k == "sslmode" {
                mode = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    let (ssl, tls) = match mode.as_deref() {
        None | Some("disable") => (SslMode::Disable, false),
        Some("prefer") => (SslMode::Prefer, true),
        Some("require" | "verify-ca" | "verify-full") => (SslMode::Require, true),
        Some(other) => {
            return Err(bad(format!(
                "sslmode={other} (expected disable, prefer, require or verify-full)"
            )));
        }
    };
    let mut config: tokio_postgres::Config = url
        .as_str()
        .parse()
        .map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
    config.ssl_mode(ssl);
    if config.get_application_name().is_none() {
        config.application_name("hookrouter");
    }
    Ok((config, tls))
}

fn client_config() -> Result<rustls::ClientConfig, StoreError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Database(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sslmode_is_read_out_of_the_url() {
        let (c, tls) = parse("postgres://u@db:5433/app?sslmode=verify-full").unwrap();
        assert!(tls);
        assert_eq!(c.get_dbname(), Some("app"));
        let (_, tls) = parse("postgres://u@db/app").unwrap();
        assert!(!tls);
        assert!(parse("postgres://u@db/app?sslmode=sometimes").is_err());
    }
}
