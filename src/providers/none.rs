//! `none`: accepts every request unverified, for senders that cannot sign.
//! `check` warns about sources that use it; event type and id are
//! configured on the source.

use super::{Outgoing, Provider, ProviderSettings, VerifyError};
use crate::event::RawRequest;

#[derive(Debug)]
struct Unverified;

pub(super) fn build(_settings: ProviderSettings) -> Result<Box<dyn Provider>, String> {
    Ok(Box::new(Unverified))
}

impl Provider for Unverified {
    fn name(&self) -> &'static str {
        "none"
    }

    fn verify(&self, _req: &RawRequest<'_>) -> Result<(), VerifyError> {
        Ok(())
    }

    fn sign(&self, _msg: &Outgoing<'_>) -> Result<Vec<(String, String)>, String> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::testkit::*;

    #[test]
    fn accepts_anything() {
        let p = make(&build, &[]);
        assert_eq!(verify(p.as_ref(), &[], b"\xff\x00"), Ok(()));
        assert_eq!(
            verify(p.as_ref(), &pairs(&[("X-Hub-Signature-256", "junk")]), b""),
            Ok(())
        );
        assert!(sign(p.as_ref(), BODY).is_empty());
        assert_eq!(event_type(p.as_ref(), &[], BODY), None);
        assert_eq!(event_id(p.as_ref(), &[], BODY), None);
    }
}
