//! `hookrouter check`: the example rules are valid, every kind of mistake is
//! reported at the offending value with its file, position and rule, all of a
//! file's errors come at once, warnings can be denied, embedded `tests:` can
//! fail, and usage errors exit 2.
//!
//! Fixture paths are passed relative to the repository root (the harness runs
//! the binary there), so the expected diagnostics are stable text.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{BIN, root, run, stderr, stdout};

fn check(path: &str) -> Output {
    run(&["check", "--rules", path])
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited with a code")
}

/// `check` on `path` fails with exactly these diagnostics on stderr (each
/// `file:line:col: owner: message`), the error count, and nothing on stdout.
fn assert_errors(path: &str, expected: &[&str]) {
    let out = check(path);
    let mut want: String = expected.iter().map(|d| format!("error: {d}\n")).collect();
    let n = expected.len();
    want.push_str(&format!("{n} error{}\n", if n == 1 { "" } else { "s" }));
    assert_eq!(stderr(&out), want, "stderr of `check --rules {path}`");
    assert_eq!(stdout(&out), "", "stdout of `check --rules {path}`");
    assert_eq!(code(&out), 1, "exit code of `check --rules {path}`");
}

// ---- the examples ----

#[test]
fn example_rules_check_clean() {
    let out = check("rules/");
    assert_eq!(code(&out), 0, "stderr:\n{}", stderr(&out));
    assert_eq!(stderr(&out), "", "the examples have no errors or warnings");
    let summary = stdout(&out);
    assert!(summary.ends_with(" passed, 0 failed\n"), "{summary}");
    assert!(
        !summary.contains(" 0 tests"),
        "the examples carry tests: {summary}"
    );
}

#[test]
fn each_example_file_checks_clean_alone() {
    let mut files: Vec<_> = std::fs::read_dir(root().join("rules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "rules/ holds example files");
    for file in files {
        let rel = file
            .strip_prefix(root())
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let out = check(&rel);
        assert_eq!(
            code(&out),
            0,
            "{rel} should check clean on its own:\n{}",
            stderr(&out)
        );
        assert!(
            stdout(&out).starts_with("1 file, 1 source, "),
            "{rel}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn rules_flag_is_repeatable_and_comma_separated_and_read_from_env() {
    let out = run(&[
        "check",
        "--rules",
        "rules/github.yaml",
        "--rules",
        "rules/stripe.yaml,rules/standard.yaml",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("3 files, 3 sources, "),
        "{}",
        stdout(&out)
    );

    let out = Command::new(BIN)
        .args(["check"])
        .current_dir(root())
        .env("HOOKROUTER_RULES", "rules/github.yaml")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("1 file, 1 source, "),
        "{}",
        stdout(&out)
    );
}

// ---- one fixture per kind of error ----

#[test]
fn yaml_syntax_error() {
    assert_errors(
        "tests/fixtures/invalid/yaml_syntax.yaml",
        &[r#"tests/fixtures/invalid/yaml_syntax.yaml:10:14: rule "broken": unclosed quote"#],
    );
}

// A line indented less than its siblings but more than its parent is a YAML
// syntax error on that line. It also ends the mapping above it early, which
// must not surface instead as a shape error (`missing field`) on the rule.

const NO_DASH: &str = "while parsing a block collection, did not find expected '-' indicator";

#[test]
fn misindented_key_after_a_scalar_is_a_syntax_error_on_its_line() {
    let f = "tests/fixtures/invalid/misindented_key_after_scalar.yaml";
    assert_errors(f, &[&format!(r#"{f}:9:4: rule "deploy": {NO_DASH}"#)]);
}

#[test]
fn misindented_key_after_a_sequence_is_a_syntax_error_on_its_line() {
    let f = "tests/fixtures/invalid/misindented_key_after_sequence.yaml";
    assert_errors(f, &[&format!(r#"{f}:10:4: rule "deploy": {NO_DASH}"#)]);
}

#[test]
fn misindented_key_after_a_mapping_is_a_syntax_error_on_its_line() {
    let f = "tests/fixtures/invalid/misindented_key_after_mapping.yaml";
    assert_errors(f, &[&format!(r#"{f}:11:4: rule "deploy": {NO_DASH}"#)]);
}

#[test]
fn misindented_sequence_item_is_a_syntax_error_on_its_line() {
    let f = "tests/fixtures/invalid/misindented_sequence_item.yaml";
    assert_errors(f, &[&format!(r#"{f}:10:4: rule "deploy": {NO_DASH}"#)]);
}

#[test]
fn tab_indenting_a_key_is_reported_at_the_tab() {
    let f = "tests/fixtures/invalid/tab_indented_key.yaml";
    assert_errors(
        f,
        &[&format!(
            r#"{f}:9:1: rule "deploy": tab used as indentation; YAML indents with spaces only"#
        )],
    );
}

#[test]
fn tab_indenting_a_sequence_item_is_reported_at_the_tab() {
    let f = "tests/fixtures/invalid/tab_indented_item.yaml";
    assert_errors(
        f,
        &[&format!(
            r#"{f}:10:1: rule "deploy": tab used as indentation; YAML indents with spaces only"#
        )],
    );
}

#[test]
fn unknown_field_in_a_rule() {
    assert_errors(
        "tests/fixtures/invalid/unknown_field_rule.yaml",
        &[
            "tests/fixtures/invalid/unknown_field_rule.yaml:9:5: rule \"typo\": unknown field `evnt`, \
           expected one of name, source, event, match, dedup, when, actions, on_failure, on_cancel, \
           delay, debounce, limit, respond",
        ],
    );
}

#[test]
fn unknown_field_in_an_action() {
    assert_errors(
        "tests/fixtures/invalid/unknown_field_action.yaml",
        &[
            "tests/fixtures/invalid/unknown_field_action.yaml:12:9: rule \"retrying\": unknown field \
           `retries`, expected one of log, http, shell, cancel, when, group, then, start_within, \
           retry, timeout, concurrency, env, workdir, max_output, stdin, files",
        ],
    );
}

#[test]
fn unknown_field_in_a_source() {
    assert_errors(
        "tests/fixtures/invalid/unknown_field_source.yaml",
        &[
            "tests/fixtures/invalid/unknown_field_source.yaml:4:5: source \"gh\": unknown field \
           `secrets`, expected one of name, provider, secret, path, tolerance, url, event_type, \
           event_id, header, algorithm, encoding, prefix, timestamp_header, respond",
        ],
    );
}

#[test]
fn bad_jsonpath_points_at_the_key() {
    assert_errors(
        "tests/fixtures/invalid/bad_jsonpath.yaml",
        &[
            r#"tests/fixtures/invalid/bad_jsonpath.yaml:11:7: rule "deploy": condition "$.commits[": invalid JSONPath: expected selector at character 11"#,
        ],
    );
}

#[test]
fn unknown_source_lists_the_defined_ones() {
    assert_errors(
        "tests/fixtures/invalid/unknown_source.yaml",
        &[
            r#"tests/fixtures/invalid/unknown_source.yaml:8:13: rule "deploy": unknown source "gitlab" (defined: gh)"#,
        ],
    );
}

#[test]
fn duplicate_rule_names_across_files_name_both_places() {
    assert_errors(
        "tests/fixtures/invalid/duplicate",
        &[
            r#"tests/fixtures/invalid/duplicate/b.yaml:7:11: rule "deploy": duplicate rule name, first defined at tests/fixtures/invalid/duplicate/a.yaml:7:11"#,
        ],
    );
}

#[test]
fn bad_regex_points_at_the_pattern() {
    assert_errors(
        "tests/fixtures/invalid/bad_regex.yaml",
        &[
            r#"tests/fixtures/invalid/bad_regex.yaml:10:40: rule "x": condition "$.repository.full_name": invalid regex "^acme/(api": unclosed group"#,
        ],
    );
}

#[test]
fn bad_template_points_at_the_string() {
    assert_errors(
        "tests/fixtures/invalid/bad_template.yaml",
        &[
            "tests/fixtures/invalid/bad_template.yaml:10:14: rule \"notify\": invalid template: \
           syntax error: unexpected `}`, expected end of variable block",
        ],
    );
}

#[test]
fn bad_duration() {
    assert_errors(
        "tests/fixtures/invalid/bad_duration.yaml",
        &[
            r#"tests/fixtures/invalid/bad_duration.yaml:11:18: rule "slow": invalid duration "10 minutes-ish": invalid character at 10 (write e.g. 30s, 5m, 1h)"#,
        ],
    );
}

#[test]
fn unknown_provider_lists_the_known_ones() {
    let out = check("tests/fixtures/invalid/unknown_provider.yaml");
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    let prefix = "error: tests/fixtures/invalid/unknown_provider.yaml:3:15: source \"bb\": \
                  unknown provider `bitbucket` (expected one of ";
    assert!(err.starts_with(prefix), "{err}");
    for known in ["github", "standard", "stripe", "slack", "hmac", "none"] {
        assert!(err.contains(known), "{known} is listed: {err}");
    }
    assert!(err.ends_with(")\n1 error\n"), "{err}");
}

#[test]
fn unknown_operator_lists_the_known_ones() {
    assert_errors(
        "tests/fixtures/invalid/unknown_operator.yaml",
        &[
            "tests/fixtures/invalid/unknown_operator.yaml:10:16: rule \"x\": condition \"$.ref\": \
           unknown operator `endswith` (expected one of equals, in, regex, contains, starts_with, \
           exists, gt, gte, lt, lte)",
        ],
    );
}

#[test]
fn missing_env_is_reported_at_the_reference_itself() {
    let path = "tests/fixtures/invalid/missing_env.yaml";
    let out = Command::new(BIN)
        .args(["check", "--rules", path])
        .current_dir(root())
        .env_remove("HOOKROUTER_RULES")
        .env_remove("HOOKROUTER_FIXTURE_UNSET_TOKEN")
        .env_remove("HOOKROUTER_FIXTURE_UNSET_KEY")
        .output()
        .unwrap();
    // One inside a quoted header value (the column of `${`, not of the
    // quote), one on the third line of a block scalar.
    assert_eq!(
        stderr(&out),
        "error: tests/fixtures/invalid/missing_env.yaml:13:36: rule \"deploy\": environment \
         variable HOOKROUTER_FIXTURE_UNSET_TOKEN is not set (write \
         ${env:HOOKROUTER_FIXTURE_UNSET_TOKEN:-default} to give a default)\n\
         error: tests/fixtures/invalid/missing_env.yaml:16:20: rule \"deploy\": environment \
         variable HOOKROUTER_FIXTURE_UNSET_KEY is not set (write \
         ${env:HOOKROUTER_FIXTURE_UNSET_KEY:-default} to give a default)\n\
         2 errors\n"
    );
    assert_eq!(code(&out), 1);

    // Set, they resolve and the file is valid.
    let out = Command::new(BIN)
        .args(["check", "--rules", path])
        .current_dir(root())
        .env("HOOKROUTER_FIXTURE_UNSET_TOKEN", "t0k3n-for-the-fixture")
        .env("HOOKROUTER_FIXTURE_UNSET_KEY", "k3y-for-the-fixture")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn every_error_of_a_file_is_reported_at_once() {
    assert_errors(
        "tests/fixtures/invalid/three_errors.yaml",
        &[
            r#"tests/fixtures/invalid/three_errors.yaml:10:23: rule "first": condition "$.ref": invalid regex "(": unclosed group"#,
            r#"tests/fixtures/invalid/three_errors.yaml:15:13: rule "second": unknown source "nowhere" (defined: gh)"#,
            "tests/fixtures/invalid/three_errors.yaml:22:14: rule \"third\": invalid template: \
             syntax error: unexpected end of input, expected end of variable block",
        ],
    );
}

#[test]
fn errors_of_several_files_are_reported_together() {
    let out = run(&[
        "check",
        "--rules",
        "tests/fixtures/invalid/bad_regex.yaml",
        "--rules",
        "tests/fixtures/invalid/yaml_syntax.yaml",
    ]);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with("error: tests/fixtures/invalid/bad_regex.yaml:10:40: "),
        "{err}"
    );
    assert!(
        lines[1].starts_with("error: tests/fixtures/invalid/yaml_syntax.yaml:10:14: "),
        "{err}"
    );
    assert_eq!(lines[2], "2 errors");
}

#[test]
fn shell_given_a_string_instead_of_a_list() {
    assert_errors(
        "tests/fixtures/invalid/shell_string.yaml",
        &[
            r#"tests/fixtures/invalid/shell_string.yaml:10:16: rule "deploy": `shell` takes an argv list such as ["./deploy.sh", "{{ body.after }}"], found a string; it never runs a shell"#,
        ],
    );
}

#[test]
fn action_with_two_kinds() {
    assert_errors(
        "tests/fixtures/invalid/two_kinds.yaml",
        &[
            "tests/fixtures/invalid/two_kinds.yaml:10:9: rule \"deploy\": an action has exactly one \
           of `log`, `http`, `shell` or `cancel`; write separate actions",
        ],
    );
}

// ---- agent controls ----

#[test]
fn every_agent_control_checks_clean() {
    let out = check("tests/fixtures/valid/agent.yaml");
    assert_eq!(stderr(&out), "", "no errors or warnings");
    assert_eq!(
        stdout(&out),
        "1 file, 1 source, 2 rules, 0 tests: 0 passed, 0 failed\n"
    );
    assert_eq!(code(&out), 0);
}

#[test]
fn unknown_on_busy_lists_the_allowed_values() {
    assert_errors(
        "tests/fixtures/invalid/unknown_on_busy.yaml",
        &[
            "tests/fixtures/invalid/unknown_on_busy.yaml:11:53: rule \"review\": unknown `on_busy` \
           \"cancel-in-progress\" (expected one of: queue, replace, cancel, skip)",
        ],
    );
}

#[test]
fn bad_kill_grace_and_start_within_point_at_the_value() {
    assert_errors(
        "tests/fixtures/invalid/agent_durations.yaml",
        &[
            r#"tests/fixtures/invalid/agent_durations.yaml:13:23: rule "review": invalid duration "soon": expected number at 0 (write e.g. 30s, 5m, 1h)"#,
            r#"tests/fixtures/invalid/agent_durations.yaml:14:23: rule "review": invalid duration "15 mins or so": expected number at 8 (write e.g. 30s, 5m, 1h)"#,
            r#"tests/fixtures/invalid/agent_durations.yaml:16:23: rule "review": `start_within` must be longer than zero"#,
        ],
    );
}

#[test]
fn then_nested_deeper_than_eight_points_at_the_ninth() {
    assert_errors(
        "tests/fixtures/invalid/then_too_deep.yaml",
        &[
            r#"tests/fixtures/invalid/then_too_deep.yaml:28:45: rule "deep": `then:` nests at most 8 deep; this action is 9 deep"#,
        ],
    );
}

#[test]
fn cancel_finds_rules_of_later_files_and_names_unknown_ones() {
    assert_errors(
        "tests/fixtures/invalid/cancel_rules",
        &[
            r#"tests/fixtures/invalid/cancel_rules/a.yaml:13:25: rule "stop-review": `cancel` names unknown rule "reviews" (defined: review, stop-review)"#,
            r#"tests/fixtures/invalid/cancel_rules/b.yaml:8:25: rule "review": `cancel` names unknown rule "nowhere" (defined: review, stop-review)"#,
        ],
    );
}

#[test]
fn shell_only_fields_file_names_and_group_limit() {
    assert_errors(
        "tests/fixtures/invalid/shell_only_fields.yaml",
        &[
            r#"tests/fixtures/invalid/shell_only_fields.yaml:11:16: rule "notify": `stdin` applies only to `shell` actions"#,
            r#"tests/fixtures/invalid/shell_only_fields.yaml:12:16: rule "notify": `files` applies only to `shell` actions"#,
            r#"tests/fixtures/invalid/shell_only_fields.yaml:15:11: rule "notify": file name "../escape" must be a plain file name, without `/`"#,
            r#"tests/fixtures/invalid/shell_only_fields.yaml:16:11: rule "notify": file name "dir/name" must be a plain file name, without `/`"#,
            r#"tests/fixtures/invalid/shell_only_fields.yaml:17:11: rule "notify": file name "" is empty"#,
            r#"tests/fixtures/invalid/shell_only_fields.yaml:18:11: rule "notify": file name ".." must be a plain file name, not `.` or `..`"#,
            r#"tests/fixtures/invalid/shell_only_fields.yaml:20:51: rule "notify": `limit` must be at least 1"#,
        ],
    );
}

#[test]
fn cancelling_a_rule_without_groups_warns() {
    let out = check("tests/fixtures/valid/cancel_ungrouped.yaml");
    assert_eq!(
        stderr(&out),
        "warning: tests/fixtures/valid/cancel_ungrouped.yaml:16:25: rule \"stop-build\": `cancel` \
         names rule \"build\", which has no action with `group:`, so it never finds a delivery to \
         cancel\n"
    );
    assert_eq!(code(&out), 0);
}

#[test]
fn missing_rules_path_is_named() {
    let out = check("tests/fixtures/invalid/no-such-folder");
    assert_eq!(
        stderr(&out),
        "error: --rules tests/fixtures/invalid/no-such-folder: no such file or directory\n"
    );
    // A path that is not there is a usage error, not an invalid rule.
    assert_eq!(code(&out), 2);
}

// ---- machine-readable output ----

#[test]
fn json_format_lists_every_error_with_its_place_and_owner() {
    let out = run(&[
        "check",
        "--format",
        "json",
        "--rules",
        "tests/fixtures/invalid/three_errors.yaml",
    ]);
    assert_eq!(code(&out), 1);
    assert_eq!(stderr(&out), "", "JSON mode writes only to stdout");
    let v: Value = serde_json::from_str(&stdout(&out)).expect("stdout is one JSON document");
    assert_eq!(v["ok"], false);
    assert_eq!(v["warnings"], serde_json::json!([]));
    let errors = v["errors"].as_array().expect("errors array");
    let got: Vec<(u64, u64, &str, &str)> = errors
        .iter()
        .map(|e| {
            assert_eq!(e["file"], "tests/fixtures/invalid/three_errors.yaml");
            assert_eq!(e["owner"]["kind"], "rule");
            (
                e["line"].as_u64().unwrap(),
                e["column"].as_u64().unwrap(),
                e["owner"]["name"].as_str().unwrap(),
                e["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                10,
                23,
                "first",
                r#"condition "$.ref": invalid regex "(": unclosed group"#
            ),
            (
                15,
                13,
                "second",
                r#"unknown source "nowhere" (defined: gh)"#
            ),
            (
                22,
                14,
                "third",
                "invalid template: syntax error: unexpected end of input, expected end of variable block"
            ),
        ]
    );
}

#[test]
fn json_format_on_success_and_on_failed_tests() {
    let out = run(&["check", "--format", "json", "--rules", "rules/"]);
    assert_eq!(code(&out), 0, "{}", stdout(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], serde_json::json!([]));
    let tests = v["tests"].as_array().unwrap();
    assert!(!tests.is_empty());
    assert!(tests.iter().all(|t| t["passed"] == true), "{v}");

    let out = run(&[
        "check",
        "--format",
        "json",
        "--rules",
        "tests/fixtures/invalid/failing_test.yaml",
    ]);
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], false);
    let failed: Vec<&Value> = v["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["passed"] == false)
        .collect();
    assert_eq!(failed.len(), 2, "{v}");
    assert_eq!(failed[0]["name"], "a push to dev deploys");
    assert_eq!(
        failed[0]["origin"],
        "tests/fixtures/invalid/failing_test.yaml:16:11"
    );
    assert_eq!(failed[0]["expected"], serde_json::json!(["deploy-main"]));
    assert_eq!(failed[0]["matched"], serde_json::json!([]));
    assert_eq!(
        failed[0]["reasons"],
        serde_json::json!([[
            "deploy-main",
            r#"$.ref equals "refs/heads/main": saw "refs/heads/dev""#
        ]])
    );
}

// ---- warnings ----

const WARNINGS: &str = "\
warning: tests/fixtures/valid/warnings.yaml:3:15: source \"anyone\": `provider: none` accepts requests without checking any signature
warning: tests/fixtures/valid/warnings.yaml:10:16: rule \"forward\": the URL's host comes from a template: payload values must not choose where requests go
";

#[test]
fn templated_host_and_provider_none_warn_but_pass() {
    let out = check("tests/fixtures/valid/warnings.yaml");
    assert_eq!(stderr(&out), WARNINGS);
    assert_eq!(
        stdout(&out),
        "1 file, 1 source, 1 rule, 0 tests: 0 passed, 0 failed, 2 warnings\n"
    );
    assert_eq!(code(&out), 0);
}

#[test]
fn deny_warnings_fails_on_warnings() {
    let out = run(&[
        "check",
        "--deny-warnings",
        "--rules",
        "tests/fixtures/valid/warnings.yaml",
    ]);
    assert_eq!(
        stderr(&out),
        format!("{WARNINGS}error: 2 warnings and --deny-warnings\n")
    );
    assert_eq!(code(&out), 1);

    let out = run(&[
        "check",
        "--deny-warnings",
        "--format",
        "json",
        "--rules",
        "tests/fixtures/valid/warnings.yaml",
    ]);
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["ok"], false);
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{v}");
    assert_eq!(warnings[0]["line"], 3);
    assert_eq!(warnings[0]["owner"]["kind"], "source");
    assert_eq!(warnings[1]["line"], 10);
    assert_eq!(warnings[1]["column"], 16);
    assert_eq!(warnings[1]["owner"]["name"], "forward");

    // Without warnings, denying them changes nothing.
    let out = run(&["check", "--deny-warnings", "--rules", "rules/"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

// ---- embedded tests ----

#[test]
fn failing_embedded_tests_are_named_with_the_reason() {
    let out = check("tests/fixtures/invalid/failing_test.yaml");
    assert_eq!(
        stderr(&out),
        "\
error: tests/fixtures/invalid/failing_test.yaml:16:11: test \"a push to dev deploys\": expected [\"deploy-main\"], matched []
  deploy-main: $.ref equals \"refs/heads/main\": saw \"refs/heads/dev\"
error: tests/fixtures/invalid/failing_test.yaml:28:11: test \"a push to main does nothing\": expected [], matched [\"deploy-main\"]
"
    );
    assert_eq!(
        stdout(&out),
        "1 file, 1 source, 1 rule, 3 tests: 1 passed, 2 failed\n"
    );
    assert_eq!(code(&out), 1);
}

// ---- usage errors ----

#[test]
fn no_rules_is_a_usage_error() {
    let out = run(&["check"]);
    assert_eq!(
        stderr(&out),
        "error: no rules given: pass --rules PATH (a file or a folder) or set HOOKROUTER_RULES\n"
    );
    assert_eq!(code(&out), 2);
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = run(&["check", "--rules", "rules/", "--strict"]);
    assert!(
        stderr(&out).contains("unexpected argument '--strict'"),
        "{}",
        stderr(&out)
    );
    assert_eq!(code(&out), 2);

    let out = run(&["check", "--rules", "rules/", "--format", "yaml"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

// ---- tests that render actions ----

#[test]
fn a_matched_action_that_cannot_render_fails_check_at_the_template() {
    let out = check("tests/fixtures/invalid/render_error_test.yaml");
    // Action 3 reads the same missing field, but its `when:` skips it.
    assert_eq!(
        stderr(&out),
        "error: tests/fixtures/invalid/render_error_test.yaml:13:16: test \"a labeled issue\": \
         rule \"on-label\" action 2 cannot render: template failed: undefined value: \
         `body.comment` is undefined\n"
    );
    assert_eq!(
        stdout(&out),
        "1 file, 1 source, 1 rule, 1 test: 0 passed, 1 failed\n"
    );
    assert_eq!(code(&out), 1);

    let out = run(&[
        "check",
        "--format",
        "json",
        "--rules",
        "tests/fixtures/invalid/render_error_test.yaml",
    ]);
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let test = &v["tests"][0];
    assert_eq!(test["passed"], false, "{v}");
    assert_eq!(test["matched"], serde_json::json!(["on-label"]));
    assert_eq!(
        test["render_errors"],
        serde_json::json!([{
            "rule": "on-label",
            "action": "2",
            "origin": "tests/fixtures/invalid/render_error_test.yaml:13:16",
            "error": "template failed: undefined value: `body.comment` is undefined"
        }])
    );
}

#[test]
fn expected_actions_check_each_field_and_name_the_rendered_value() {
    let out = check("tests/fixtures/invalid/action_assertions.yaml");
    assert_eq!(
        stderr(&out),
        "\
error: tests/fixtures/invalid/action_assertions.yaml:54:22: test \"two fields fail\": rule \"review\" action 1 stdin: expected contains \"Summarise\", rendered \"Review https://github.com/o/r/pull/42\"
error: tests/fixtures/invalid/action_assertions.yaml:55:21: test \"two fields fail\": rule \"review\" action 2 url: expected regex \"^https://hooks\\\\.example\\\\.com/\", rendered \"https://api.example.com/pr/42\"
error: tests/fixtures/invalid/action_assertions.yaml:63:20: test \"the wrong type at a place\": rule \"review\" action 1: expected a log action, the action is shell
"
    );
    assert_eq!(
        stdout(&out),
        "1 file, 1 source, 1 rule, 3 tests: 1 passed, 2 failed\n"
    );
    assert_eq!(code(&out), 1);

    let out = run(&[
        "check",
        "--format",
        "json",
        "--rules",
        "tests/fixtures/invalid/action_assertions.yaml",
    ]);
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let tests = v["tests"].as_array().unwrap();
    assert_eq!(tests[0]["name"], "every field holds");
    assert_eq!(tests[0]["passed"], true, "{v}");
    assert_eq!(
        tests[1]["assertions"][0],
        serde_json::json!({
            "rule": "review",
            "action": 1,
            "origin": "tests/fixtures/invalid/action_assertions.yaml:54:22",
            "field": "stdin",
            "assertion": "contains \"Summarise\"",
            "rendered": "Review https://github.com/o/r/pull/42",
            "error": null
        })
    );
}

#[test]
fn mistakes_in_expected_actions_are_reported_where_written() {
    assert_errors(
        "tests/fixtures/invalid/bad_expect.yaml",
        &[
            "tests/fixtures/invalid/bad_expect.yaml:17:9: test \"mistakes in expect\": unknown field `action`; expected `rule` or `actions`",
            "tests/fixtures/invalid/bad_expect.yaml:20:20: test \"mistakes in expect\": `lines` is not a field of a log action; expected `line`",
            "tests/fixtures/invalid/bad_expect.yaml:21:35: test \"mistakes in expect\": invalid regex \"(\": unclosed group",
            "tests/fixtures/invalid/bad_expect.yaml:22:28: test \"mistakes in expect\": unknown assertion `starts_with`; expected `equals`, `contains` or `regex`",
            "tests/fixtures/invalid/bad_expect.yaml:23:13: test \"mistakes in expect\": unknown action type `mail`; expected `shell`, `http`, `log` or `cancel`",
            "tests/fixtures/invalid/bad_expect.yaml:24:9: test \"mistakes in expect\": an `expect:` entry is a rule name or { rule, actions }, not a number",
        ],
    );
}
