//! `hookrouter sign`: the headers a provider would send with a body.
//!
//! Prints them one `Name: value` per line, to paste into curl when trying
//! rules by hand. The signing itself is `providers::sign`, the code the
//! tests sign with.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{read_body, usage_error};
use crate::clock;
use crate::providers::{self, ProviderSettings, Secret};

/// What to sign, and as whom.
#[derive(Debug, Clone)]
pub struct Options {
    /// The provider whose scheme to sign with.
    pub provider: String,
    pub secret: String,
    /// The body file; `-` is standard input.
    pub body: PathBuf,
    /// The event or message id, where the scheme carries one.
    pub id: String,
    /// The public URL the provider calls (Twilio, Square sign it).
    pub url: String,
}

/// Print the headers; a usage error for an unknown provider or body file.
pub fn run(args: &Options) -> ExitCode {
    let body = match read_body(&args.body) {
        Ok(b) => b,
        Err(e) => return usage_error(&format!("cannot read {}: {e}", args.body.display())),
    };
    let settings = ProviderSettings {
        secrets: vec![Secret::new(args.secret.clone())],
        ..Default::default()
    };
    let now = clock::now_secs();
    match providers::sign(&args.provider, &settings, &body, &args.id, now, &args.url) {
        Ok(headers) => {
            for (k, v) in headers {
                println!("{k}: {v}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(&e),
    }
}
