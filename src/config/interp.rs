//! `${env:NAME}`, `${env:NAME:-default}` and `${file:PATH}` in rule files.
//!
//! Owns load-time substitution only. It runs once when rules load, never per
//! event, and it records every substituted value so that the values can be
//! redacted wherever rendered output is shown (`hookrouter test`, logs).
//! `$${` writes a literal `${`.

use std::path::Path;

/// The result of expanding one string.
#[derive(Debug, Default)]
pub struct Expanded {
    pub text: String,
    /// The values that came from the environment or files: treated as secrets.
    pub secrets: Vec<String>,
}

/// A reference that could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    /// The reference as written (`${env:NAME}`), so that a diagnostic can
    /// point at it rather than at the start of the value holding it.
    pub reference: String,
    pub message: String,
}

impl std::fmt::Display for ExpandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Expand the references in `input`. `base` is the directory of the rule file,
/// against which relative `${file:…}` paths resolve.
///
/// # Errors
/// The first reference that could not be resolved, and why.
pub fn expand(input: &str, base: &Path) -> Result<Expanded, ExpandError> {
    if !input.contains("${") {
        return Ok(Expanded {
            text: input.to_owned(),
            secrets: Vec::new(),
        });
    }
    let mut out = Expanded::default();
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        if rest[..start].ends_with('$') {
            out.text.push_str(&rest[..start - 1]);
            out.text.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.text.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ExpandError {
                reference: rest[start..].to_owned(),
                message: format!("unterminated `${{` in {input:?}"),
            });
        };
        let reference = &after[..end];
        let value = resolve(reference, base).map_err(|message| ExpandError {
            reference: rest[start..start + 2 + end + 1].to_owned(),
            message,
        })?;
        out.text.push_str(&value);
        if !value.is_empty() {
            out.secrets.push(value);
        }
        rest = &after[end + 1..];
    }
    out.text.push_str(rest);
    Ok(out)
}

fn resolve(reference: &str, base: &Path) -> Result<String, String> {
    if let Some(spec) = reference.strip_prefix("env:") {
        let (name, default) = match spec.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (spec, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid environment variable name {name:?}"));
        }
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(v),
            _ => default.map(str::to_owned).ok_or_else(|| {
                format!("environment variable {name} is not set (write ${{env:{name}:-default}} to give a default)")
            }),
        }
    } else if let Some(path) = reference.strip_prefix("file:") {
        let full = base.join(path);
        match std::fs::read_to_string(&full) {
            // Secret files usually end in a newline that is not part of the secret.
            Ok(text) => Ok(text.trim_end_matches(['\n', '\r']).to_owned()),
            Err(e) => Err(format!("cannot read {}: {e}", full.display())),
        }
    } else {
        Err(format!(
            "unknown reference `${{{reference}}}`: expected ${{env:NAME}}, ${{env:NAME:-default}} or ${{file:PATH}}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        let e = expand("hello {{ body.x }}", Path::new(".")).unwrap();
        assert_eq!(e.text, "hello {{ body.x }}");
        assert!(e.secrets.is_empty());
    }

    #[test]
    fn default_applies_when_unset() {
        let e = expand(
            "a-${env:HOOKROUTER_TEST_SURELY_UNSET:-dev}-b",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(e.text, "a-dev-b");
        assert_eq!(e.secrets, vec!["dev".to_owned()]);
    }

    #[test]
    fn missing_env_is_an_error() {
        let err = expand(
            "a ${env:PATH} b ${env:HOOKROUTER_TEST_SURELY_UNSET} c",
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            err.message
                .contains("HOOKROUTER_TEST_SURELY_UNSET is not set"),
            "{err}"
        );
        assert_eq!(err.reference, "${env:HOOKROUTER_TEST_SURELY_UNSET}");
    }

    #[test]
    fn set_env_wins_over_default() {
        // PATH is always set in a test process.
        let e = expand("${env:PATH:-none}", Path::new(".")).unwrap();
        assert_ne!(e.text, "none");
    }

    #[test]
    fn file_is_read_relative_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.txt"), "topsecret\n").unwrap();
        let e = expand("k=${file:s.txt}", dir.path()).unwrap();
        assert_eq!(e.text, "k=topsecret");
        assert!(expand("${file:nope.txt}", dir.path()).is_err());
    }

    #[test]
    fn escapes_and_unknown_references() {
        assert_eq!(
            expand("$${env:X}", Path::new(".")).unwrap().text,
            "${env:X}"
        );
        assert!(expand("${vault:x}", Path::new(".")).is_err());
        assert_eq!(
            expand("a ${env:X", Path::new(".")).unwrap_err().reference,
            "${env:X"
        );
    }
}
