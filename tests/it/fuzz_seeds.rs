//! The committed fuzz seeds, replayed on stable: every file under
//! `fuzz/corpus/<target>/` goes through the same `hookrouter::fuzzing`
//! function libFuzzer calls, so a seed that once exposed a bug keeps guarding
//! against it without nightly. Each target must find a minimum number of seeds
//! so that a missing or emptied corpus fails instead of passing vacuously.
//!
//! `regenerate_signed_seeds` (ignored) rewrites the `signed-*` seeds of
//! `signature_headers`: requests whose signatures are valid under the fuzzing
//! secrets but a day old, so the fuzzer starts past the MAC check.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use hookrouter::fuzzing;
use hookrouter::providers;

use crate::support::root;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target, usize)] = &[
    ("rules_yaml", fuzzing::rules_yaml, 10),
    ("condition", fuzzing::condition, 10),
    ("template", fuzzing::template, 10),
    ("body", fuzzing::body, 10),
    ("signature_headers", fuzzing::signature_headers, 15),
];

fn corpus(target: &str) -> PathBuf {
    root().join("fuzz/corpus").join(target)
}

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = corpus(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("read corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let (_, run, min) = TARGETS
        .iter()
        .find(|(name, _, _)| *name == target)
        .expect("known target");
    let files = seeds(target);
    assert!(
        files.len() >= *min,
        "{target}: found {} seeds in {}, expected at least {min}",
        files.len(),
        corpus(target).display()
    );
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("read seed");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failed.push(format!("{}: {msg}", file.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} seeds failed:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn rules_yaml_seeds() {
    replay("rules_yaml");
}

#[test]
fn condition_seeds() {
    replay("condition");
}

#[test]
fn template_seeds() {
    replay("template");
}

#[test]
fn body_seeds() {
    replay("body");
}

#[test]
fn signature_headers_seeds() {
    replay("signature_headers");
}

#[test]
fn every_provider_is_fuzzed() {
    let built: Vec<&str> = fuzzing::signature_providers()
        .iter()
        .map(|(variant, _)| *variant)
        .collect();
    for kind in providers::KINDS {
        assert!(built.contains(kind), "{kind} is not built for fuzzing");
    }
}

/// The `signed-*` seeds carry authentic signatures, so their provider
/// refuses them only for their age: the fuzzer starts past the MAC check.
#[test]
fn signed_seeds_are_authentic_but_expired() {
    let mut checked = 0;
    for file in seeds("signature_headers") {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(variant) = name.strip_prefix("signed-") else {
            continue;
        };
        let data = std::fs::read(&file).expect("read seed");
        let r = fuzzing::request(&data);
        let req = hookrouter::event::RawRequest {
            url: &r.url,
            headers: &r.headers,
            body: r.body,
            now: fuzzing::NOW,
        };
        let (_, provider) = fuzzing::signature_providers()
            .iter()
            .find(|(v, _)| *v == variant)
            .unwrap_or_else(|| panic!("{name}: no provider {variant}"));
        assert_eq!(
            provider.verify(&req),
            Err(providers::VerifyError::Expired),
            "{name}"
        );
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} signed seeds");
}

/// Signed a day before `fuzzing::NOW`: outside every provider's window.
const SIGNED_AT: i64 = fuzzing::NOW - 86_400;

/// One seed file: header lines, an empty line, the body.
fn seed_text(url: Option<&str>, headers: &[(String, String)], body: &str) -> String {
    let mut out = String::new();
    if let Some(url) = url {
        out.push_str(&format!(":url {url}\n"));
    }
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\n"));
    }
    out.push('\n');
    out.push_str(body);
    out
}

#[test]
#[ignore = "rewrites fuzz/corpus/signature_headers/signed-*; run by hand"]
fn regenerate_signed_seeds() {
    let dir = corpus("signature_headers");
    let write = |variant: &str, text: String| {
        std::fs::write(dir.join(format!("signed-{variant}")), text).expect("write seed");
    };
    let json = r#"{"id":"evt_1","type":"charge.refunded","action":"opened","data":{"object":{"id":"ch_1","amount":1200}}}"#;
    // Only schemes whose timestamp is covered by the signature: an old,
    // authentic request must stay refused whatever the fuzzer does to it.
    for variant in [
        "slack",
        "zoom",
        "stripe",
        "paddle",
        "standard",
        "hmac-timestamped",
    ] {
        let kind = variant.split('-').next().unwrap_or(variant);
        let settings = fuzzing::provider_settings(variant);
        let headers = providers::sign(
            kind,
            &settings,
            json.as_bytes(),
            "msg_fuzz_1",
            SIGNED_AT,
            fuzzing::URL,
        )
        .unwrap_or_else(|e| panic!("{variant}: {e}"));
        let mut headers = headers;
        headers.push(("content-type".to_owned(), "application/json".to_owned()));
        write(variant, seed_text(None, &headers, json));
    }

    // Linear signs the body only; its `webhookTimestamp` (ms) is the window.
    let linear = format!(
        r#"{{"type":"Issue","action":"create","webhookTimestamp":{}}}"#,
        SIGNED_AT * 1000
    );
    let headers = providers::sign(
        "linear",
        &fuzzing::provider_settings("linear"),
        linear.as_bytes(),
        "delivery-1",
        SIGNED_AT,
        fuzzing::URL,
    )
    .expect("linear signs");
    write("linear", seed_text(None, &headers, &linear));

    // Mailgun signs `timestamp + token` inside the body.
    let token = "5egbgr1vjgqxtrnp65xfznchgdccwh5d6i09vijqi3whgowmn6";
    let mut mac =
        Hmac::<sha2::Sha256>::new_from_slice(fuzzing::SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{SIGNED_AT}{token}").as_bytes());
    let signature = hex::encode(mac.finalize().into_bytes());
    let mailgun = format!(
        r#"{{"signature":{{"timestamp":"{SIGNED_AT}","token":"{token}","signature":"{signature}"}},"event-data":{{"event":"delivered","id":"e1"}}}}"#
    );
    write(
        "mailgun",
        seed_text(
            None,
            &[("content-type".to_owned(), "application/json".to_owned())],
            &mailgun,
        ),
    );

    // Discord: Ed25519 over `timestamp + body` with the RFC 8032 test 1 key,
    // whose public half is `fuzzing::DISCORD_PUBLIC_KEY`.
    let secret: [u8; 32] =
        hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .expect("hex")
            .try_into()
            .expect("32 bytes");
    let key = ed25519_dalek::SigningKey::from_bytes(&secret);
    assert_eq!(
        hex::encode(key.verifying_key().as_bytes()),
        fuzzing::DISCORD_PUBLIC_KEY
    );
    let ping = r#"{"type":1,"id":"1","application_id":"2"}"#;
    let ts = SIGNED_AT.to_string();
    let sig = ed25519_dalek::Signer::sign(&key, format!("{ts}{ping}").as_bytes());
    write(
        "discord",
        seed_text(
            None,
            &[
                (
                    "X-Signature-Ed25519".to_owned(),
                    hex::encode(sig.to_bytes()),
                ),
                ("X-Signature-Timestamp".to_owned(), ts),
                ("content-type".to_owned(), "application/json".to_owned()),
            ],
            ping,
        ),
    );
}
