//! The generic `hmac` provider, for senders without an adapter: a MAC of the
//! raw body, or of `{timestamp}.{body}` when a timestamp header is
//! configured, keyed by the secret's UTF-8 bytes, in one header, optionally
//! after a fixed prefix (`sha256=`). Algorithm, encoding, header names and
//! prefix come from `HmacOptions`.
//!
//! Window (timestamped variant only): ±300 s unless `tolerance:` says
//! otherwise. Event type and id are configured on the source, not here.

use std::time::Duration;

use http::HeaderName;

use super::common::{self, Keys};
use super::{Algorithm, Encoding, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Generic {
    keys: Keys,
    header: HeaderName,
    algorithm: Algorithm,
    encoding: Encoding,
    prefix: String,
    timestamp: Option<HeaderName>,
    tolerance: Duration,
}

fn header_name(name: &str, what: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("provider `hmac`: {what} `{name}` is not a valid header name"))
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    let Some(options) = settings.hmac.as_ref() else {
        return Err("provider `hmac` needs its options (header, algorithm, encoding)".to_owned());
    };
    let timestamp = match &options.timestamp_header {
        Some(name) => Some(header_name(name, "timestamp header")?),
        None => None,
    };
    Ok(Box::new(Generic {
        keys: Keys::utf8("hmac", &settings)?,
        header: header_name(&options.header, "header")?,
        algorithm: options.algorithm,
        encoding: options.encoding,
        prefix: options.prefix.clone(),
        timestamp,
        tolerance: common::tolerance(&settings, DEFAULT_TOLERANCE),
    }))
}

impl Provider for Generic {
    fn name(&self) -> &'static str {
        "hmac"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let value = common::header_as(req, &self.header, "signature header")?;
        let signature = common::decode(self.encoding, common::strip_prefix(value, &self.prefix)?)?;
        let Some(timestamp_header) = &self.timestamp else {
            return self.keys.verify(self.algorithm, &[req.body], &[signature]);
        };
        let ts = common::header_as(req, timestamp_header, "timestamp header")?;
        let seconds = common::parse_timestamp(ts)?;
        self.keys.verify(
            self.algorithm,
            &[ts.as_bytes(), b".", req.body],
            &[signature],
        )?;
        common::check_window(seconds, req.now, self.tolerance)
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        let ts = msg.now.to_string();
        let parts: Vec<&[u8]> = match self.timestamp {
            Some(_) => vec![ts.as_bytes(), b".", msg.body],
            None => vec![msg.body],
        };
        let mac = self.keys.sign(self.algorithm, &parts)?;
        let mut headers = vec![(
            self.header.as_str().to_owned(),
            format!("{}{}", self.prefix, common::encode(self.encoding, &mac)),
        )];
        if let Some(name) = &self.timestamp {
            headers.push((name.as_str().to_owned(), ts));
        }
        Ok(headers)
    }
}

#[cfg(test)]
pub(super) fn tests_options() -> super::HmacOptions {
    super::HmacOptions {
        header: "X-Signature".to_owned(),
        algorithm: Algorithm::Sha256,
        encoding: Encoding::Hex,
        prefix: "sha256=".to_owned(),
        timestamp_header: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::HmacOptions;
    use crate::providers::testkit::*;

    fn with_options(
        options: HmacOptions,
    ) -> impl Fn(ProviderSettings) -> Result<Box<dyn Provider>, String> {
        move |mut settings| {
            settings.hmac = Some(options.clone());
            build(settings)
        }
    }

    fn timestamped() -> HmacOptions {
        HmacOptions {
            timestamp_header: Some("X-Timestamp".to_owned()),
            ..tests_options()
        }
    }

    #[test]
    fn basics_for_every_algorithm_and_encoding() {
        for algorithm in [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512] {
            for encoding in [Encoding::Hex, Encoding::Base64] {
                for prefix in ["", "sha=", "v1,"] {
                    let options = HmacOptions {
                        algorithm,
                        encoding,
                        prefix: prefix.to_owned(),
                        ..tests_options()
                    };
                    check_basics(&with_options(options), "X-Signature");
                }
            }
        }
        check_basics(&with_options(timestamped()), "X-Signature");
    }

    #[test]
    fn timestamped_window() {
        check_window(&with_options(timestamped()), 300);
        check_timestamp_header(&with_options(timestamped()), "X-Timestamp");
    }

    #[test]
    fn bitbucket_intercom_style() {
        let intercom = HmacOptions {
            header: "X-Hub-Signature".to_owned(),
            algorithm: Algorithm::Sha1,
            prefix: "sha1=".to_owned(),
            ..tests_options()
        };
        let p = make(&with_options(intercom), &["secret"]);
        let mac = common::mac(Algorithm::Sha1, b"secret", &[b"data"]).expect("mac");
        let good = pairs(&[("x-hub-signature", &format!("sha1={}", hex::encode(&mac)))]);
        assert_eq!(verify(p.as_ref(), &good, b"data"), Ok(()));
        let wrong_alg = common::mac(Algorithm::Sha256, b"secret", &[b"data"]).expect("mac");
        let sha256 = pairs(&[(
            "X-Hub-Signature",
            &format!("sha256={}", hex::encode(&wrong_alg)),
        )]);
        assert!(verify(p.as_ref(), &sha256, b"data").is_err());
        let prefixed_as_sha1 = pairs(&[(
            "X-Hub-Signature",
            &format!("sha1={}", hex::encode(&wrong_alg)),
        )]);
        assert_eq!(
            verify(p.as_ref(), &prefixed_as_sha1, b"data"),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(p.as_ref(), &[], b"data"),
            Err(VerifyError::MissingHeader("signature header"))
        );
    }

    #[test]
    fn build_errors() {
        assert!(
            build(settings(&["s"]))
                .expect_err("no options")
                .contains("options")
        );
        let bad_header = HmacOptions {
            header: "bad header".to_owned(),
            ..tests_options()
        };
        assert!(with_options(bad_header)(settings(&["s"])).is_err());
        let bad_ts = HmacOptions {
            timestamp_header: Some(String::new()),
            ..tests_options()
        };
        assert!(with_options(bad_ts)(settings(&["s"])).is_err());
        assert!(with_options(tests_options())(settings(&[])).is_err());
    }

    #[test]
    fn no_type_or_id() {
        let p = make(&with_options(tests_options()), &[ALICE]);
        assert_eq!(event_type(p.as_ref(), &[], BODY), None);
        assert_eq!(event_id(p.as_ref(), &[], BODY), None);
    }
}
