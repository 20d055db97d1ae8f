//! Twilio: `X-Twilio-Signature`, base64 HMAC-SHA1 keyed by the Auth Token
//! over the full URL Twilio requested, followed, for form posts, by every
//! POST parameter as name + value, names sorted. Repeated values of one name
//! are sorted and de-duplicated, as twilio-python does.
//!
//! JSON posts sign the URL only; the URL then carries `bodySHA256=<hex>`,
//! which must equal SHA-256 of the body or anyone could swap the body under
//! a valid signature. The presence of that parameter is what selects the
//! JSON rule, as in the SDKs.
//!
//! The URL is `RawRequest::url`, exactly as configured: query order and
//! encoding are kept. Twilio is inconsistent about ports, so the SDKs'
//! variants are tried too: with the scheme's default port added when there
//! is none, and with the port removed when there is one.
//!
//! Event type: none. Event id: the `I-Twilio-Idempotency-Token` header, else
//! the first of the `MessageSid`, `CallSid`, `SmsSid` parameters.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::common::{self, Keys};
use super::{Algorithm, Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const SIGNATURE: &str = "X-Twilio-Signature";
const IDEMPOTENCY: &str = "I-Twilio-Idempotency-Token";
const BODY_HASH: &str = "bodySHA256";
const ID_FIELDS: [&str; 3] = ["MessageSid", "CallSid", "SmsSid"];

#[derive(Debug)]
struct Twilio {
    keys: Keys,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Twilio {
        keys: Keys::utf8("twilio", &settings)?,
    }))
}

/// The `bodySHA256` query parameter of `url`, if any.
fn body_hash(url: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(query, _)| query);
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == BODY_HASH)
        .map(|(_, value)| value.into_owned())
}

/// What follows the URL in the signed string: the sorted form parameters,
/// or nothing for a JSON post.
fn signed_params(url: &str, body: &[u8]) -> Vec<u8> {
    if body_hash(url).is_some() {
        return Vec::new();
    }
    let mut params: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(body) {
        params
            .entry(name.into_owned())
            .or_default()
            .insert(value.into_owned());
    }
    let mut out = Vec::new();
    for (name, values) in &params {
        for value in values {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(value.as_bytes());
        }
    }
    out
}

/// `url` as given plus the port variant the SDKs also accept.
fn url_variants(url: &str) -> Vec<String> {
    let mut variants = vec![url.to_owned()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return variants;
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((authority, tail)) = rest.split_at_checked(end) else {
        return variants;
    };
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    let port = host_port
        .rsplit_once(':')
        .filter(|(host, port)| {
            !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty()
        })
        .filter(|_| !host_port.ends_with(']'));
    let host_port = match port {
        Some((host, _)) => host.to_owned(),
        None => match scheme.to_ascii_lowercase().as_str() {
            "https" => format!("{host_port}:443"),
            "http" => format!("{host_port}:80"),
            _ => return variants,
        },
    };
    let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    variants.push(format!("{scheme}://{userinfo}{host_port}{tail}"));
    variants
}

impl Provider for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let signature = common::decode_base64(common::header(req, SIGNATURE)?)?;
        let body_ok = match body_hash(req.url) {
            Some(expected) => {
                let expected = common::decode_hex(&expected)
                    .map_err(|_| VerifyError::Malformed("bodySHA256 is not hex"))?;
                common::ct_eq(&expected, &common::sha256(req.body))
            }
            None => true,
        };
        let params = signed_params(req.url, req.body);
        let signature = [signature];
        let url_ok = url_variants(req.url).iter().any(|url| {
            self.keys
                .verify(Algorithm::Sha1, &[url.as_bytes(), &params], &signature)
                .is_ok()
        });
        if body_ok && url_ok {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn event_id(&self, req: &RawRequest<'_>, body: &Value) -> Option<String> {
        if let Some(token) = req.header(IDEMPOTENCY) {
            return Some(token.to_owned());
        }
        ID_FIELDS
            .iter()
            .find_map(|field| body.get(field).and_then(Value::as_str).map(str::to_owned))
            .or_else(|| {
                let form: BTreeMap<_, _> = form_urlencoded::parse(req.body).collect();
                ID_FIELDS
                    .iter()
                    .find_map(|field| form.get(*field).map(ToString::to_string))
            })
    }

    /// A URL carrying `bodySHA256` is signed as a JSON post, so it must match
    /// the body; any other body is signed as form parameters.
    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        let hash = hex::encode(common::sha256(msg.body));
        if body_hash(msg.url).is_some_and(|expected| !expected.eq_ignore_ascii_case(&hash)) {
            return Err("the URL's bodySHA256 is not the SHA-256 of the body".to_owned());
        }
        let params = signed_params(msg.url, msg.body);
        let mac = self
            .keys
            .sign(Algorithm::Sha1, &[msg.url.as_bytes(), &params])?;
        Ok(common::headers([
            (SIGNATURE, common::encode_base64(&mac)),
            (IDEMPOTENCY, msg.id.to_owned()),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::*;

    const TOKEN: &str = "12345";
    const FORM: &[u8] =
        b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";
    const SDK_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn check(url: &str, sig: &str, body: &[u8]) -> Result<(), VerifyError> {
        let p = make(&build, &[TOKEN]);
        verify_at(p.as_ref(), &pairs(&[(SIGNATURE, sig)]), body, url, 0)
    }

    #[test]
    fn basics() {
        check_basics(&build, SIGNATURE);
    }

    #[test]
    fn sdk_vectors() {
        assert_eq!(check(SDK_URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", FORM), Ok(()));
        assert_eq!(check(SDK_URL, "kvajT1Ptam85bY51eRf/AJRuM3w=", FORM), Ok(()));
        assert_eq!(
            check(
                "https://mycompany.com:1234/myapp.php?foo=1&bar=2",
                "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
                FORM
            ),
            Ok(())
        );
        assert_eq!(
            check(
                "http://mycompany.com/myapp.php?foo=1&bar=2",
                "0ZXoZLH/DfblKGATFgpif+LLRf4=",
                FORM
            ),
            Ok(())
        );
        let dupes = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234&Digits=1234";
        assert_eq!(
            check(SDK_URL, "IK+Dwps556ElfBT0I3Rgjkr1wJU=", dupes),
            Ok(())
        );
    }

    #[test]
    fn url_and_params_are_bound() {
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        assert_eq!(
            check("https://mycompany.com/myapp.php?bar=2&foo=1", sig, FORM),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check("http://mycompany.com/myapp.php?foo=1&bar=2", sig, FORM),
            Err(VerifyError::Mismatch)
        );
        let plus = b"CallSid=CA1234567890ABCDE&Caller=+14158675309&Digits=1234&From=+14158675309&To=+18005551212";
        assert_eq!(check(SDK_URL, sig, plus), Err(VerifyError::Mismatch));
    }

    #[test]
    fn json_body_hash() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        let sig = "a9nBmqA0ju/hNViExpshrM61xv4=";
        assert_eq!(
            check(url, sig, br#"{"property": "value", "boolean": true}"#),
            Ok(())
        );
        assert_eq!(
            check(url, sig, br#"{"property": "evil", "boolean": true}"#),
            Err(VerifyError::Mismatch)
        );
        let p = make(&build, &[TOKEN]);
        let signed = sign_at(
            p.as_ref(),
            br#"{"property": "value", "boolean": true}"#,
            url,
            0,
        );
        assert_eq!(get(&signed, SIGNATURE), sig);
        let odd = url.replace("6620", "662");
        assert!(matches!(
            check(&odd, sig, b"{}"),
            Err(VerifyError::Malformed(_))
        ));
        assert!(
            p.sign(&Outgoing {
                url,
                body: b"{}",
                id: "x",
                now: 0
            })
            .is_err()
        );
    }

    #[test]
    fn port_variants() {
        assert_eq!(
            url_variants("https://a.com/p?q"),
            ["https://a.com/p?q", "https://a.com:443/p?q"]
        );
        assert_eq!(
            url_variants("http://u:p@a.com:8080"),
            ["http://u:p@a.com:8080", "http://u:p@a.com"]
        );
        assert_eq!(
            url_variants("https://[::1]/x"),
            ["https://[::1]/x", "https://[::1]:443/x"]
        );
        assert_eq!(
            url_variants("https://[::1]:8443/x"),
            ["https://[::1]:8443/x", "https://[::1]/x"]
        );
        assert_eq!(url_variants("ftp://a.com/x"), ["ftp://a.com/x"]);
        for junk in [
            "",
            "://",
            "https://",
            "no-scheme",
            "https://:443",
            "https://é:1/ü",
        ] {
            assert!(!url_variants(junk).is_empty());
        }
    }

    #[test]
    fn ids() {
        let p = make(&build, &[TOKEN]);
        assert_eq!(
            event_id(p.as_ref(), &[], FORM).as_deref(),
            Some("CA1234567890ABCDE")
        );
        let sms = b"SmsSid=SM1&MessageSid=SM2";
        assert_eq!(event_id(p.as_ref(), &[], sms).as_deref(), Some("SM2"));
        let headers = pairs(&[(IDEMPOTENCY, "idem-1")]);
        assert_eq!(
            event_id(p.as_ref(), &headers, FORM).as_deref(),
            Some("idem-1")
        );
        assert_eq!(
            event_id(p.as_ref(), &[], br#"{"CallSid":"CA9"}"#).as_deref(),
            Some("CA9")
        );
        assert_eq!(event_type(p.as_ref(), &[], FORM), None);
    }
}
