//! GitLab: `X-Gitlab-Token` carries the configured secret token itself.
//! Event type `$.object_kind`, event id `X-Gitlab-Event-UUID`.
//!
//! The token authenticates the sender but protects nothing of the body, and
//! there is no timestamp. Comparison is constant-time over the whole token
//! (see `Keys::contains_token`), so neither a matching prefix nor the
//! token's length can be learned by timing.

use serde_json::Value;

use super::common::{self, Keys};
use super::{Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

const TOKEN: &str = "X-Gitlab-Token";
const EVENT_UUID: &str = "X-Gitlab-Event-UUID";

#[derive(Debug)]
struct GitLab {
    tokens: Keys,
}

pub(super) fn build(settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(GitLab {
        tokens: Keys::utf8("gitlab", &settings)?,
    }))
}

impl Provider for GitLab {
    fn name(&self) -> &'static str {
        "gitlab"
    }

    fn verify(&self, req: &RawRequest<'_>) -> Result<(), VerifyError> {
        let token = common::header(req, TOKEN)?;
        if self.tokens.contains_token(token.as_bytes()) {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }

    fn event_type(&self, _req: &RawRequest<'_>, body: &Value) -> Option<String> {
        common::json_str(body, "/object_kind")
    }

    fn event_id(&self, req: &RawRequest<'_>, _body: &Value) -> Option<String> {
        req.header(EVENT_UUID).map(str::to_owned)
    }

    fn sign(&self, msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        let token = String::from_utf8(self.tokens.primary()?.to_vec())
            .map_err(|_| "the token is not UTF-8".to_owned())?;
        Ok(common::headers([
            (TOKEN, token),
            (EVENT_UUID, msg.id.to_owned()),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::*;

    const SECRET: &str = "my-gitlab-secret-token";

    #[test]
    fn token_must_match_whole() {
        let p = make(&build, &[SECRET]);
        let check = |token: &str| verify(p.as_ref(), &pairs(&[(TOKEN, token)]), b"{}");
        assert_eq!(check(SECRET), Ok(()));
        for wrong in [
            "my-gitlab",
            "my-gitlab-secret-tokeN",
            "my-gitlab-secret-token-x",
            "x",
        ] {
            assert_eq!(check(wrong), Err(VerifyError::Mismatch), "{wrong}");
        }
        assert_eq!(check(""), Err(VerifyError::Malformed("header is empty")));
        assert_eq!(
            verify(p.as_ref(), &[], b"{}"),
            Err(VerifyError::MissingHeader(TOKEN))
        );
        let twice = pairs(&[(TOKEN, SECRET), (TOKEN, "other")]);
        assert_eq!(
            verify(p.as_ref(), &twice, b"{}"),
            Err(VerifyError::Malformed("header repeated"))
        );
    }

    #[test]
    fn rotation_and_round_trip() {
        let rotated = make(&build, &["new-token", SECRET]);
        assert_eq!(
            verify(rotated.as_ref(), &pairs(&[(TOKEN, SECRET)]), b"{}"),
            Ok(())
        );
        let old = make(&build, &[SECRET]);
        let signed = sign(old.as_ref(), BODY);
        assert_eq!(verify(rotated.as_ref(), &signed, BODY), Ok(()));
        assert_eq!(get(&signed, EVENT_UUID), "delivery-1");
        let other = make(&build, &["new-token"]);
        assert_eq!(
            verify(other.as_ref(), &signed, BODY),
            Err(VerifyError::Mismatch)
        );
    }

    #[test]
    fn type_and_id() {
        let p = make(&build, &[SECRET]);
        let headers = pairs(&[(EVENT_UUID, "13792a34-cac6-4fda-95a8-c58e00a3954e")]);
        let body = br#"{"object_kind":"merge_request"}"#;
        assert_eq!(
            event_type(p.as_ref(), &headers, body).as_deref(),
            Some("merge_request")
        );
        assert_eq!(
            event_id(p.as_ref(), &headers, body).as_deref(),
            Some("13792a34-cac6-4fda-95a8-c58e00a3954e")
        );
    }
}
