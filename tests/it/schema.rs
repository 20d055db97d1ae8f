//! `hookrouter schema` and the committed `schemas/rules.schema.json`: the
//! copy editors use must be exactly what the binary prints.

use serde_json::Value;

use crate::support::{root, run, stderr, stdout};

const COMMITTED: &str = "schemas/rules.schema.json";
const REGENERATE: &str = "cargo run -q -- schema > schemas/rules.schema.json";

fn generated() -> String {
    let out = run(&["schema"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn committed_schema_is_up_to_date() {
    let committed = std::fs::read_to_string(root().join(COMMITTED)).unwrap_or_else(|e| {
        panic!("cannot read {COMMITTED} ({e}); generate it with `{REGENERATE}`")
    });
    let generated = generated();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{COMMITTED} is out of date with the rule format (first difference at line {}: \
             committed {:?}, generated {:?}); regenerate it with `{REGENERATE}` and commit it",
            line + 1,
            committed.lines().nth(line).unwrap_or("<end of file>"),
            generated.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn schema_describes_the_rule_format() {
    let schema: Value = serde_json::from_str(&generated()).expect("the schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["type"], "object");
    // Unknown top-level keys are errors for `check`, and so for editors.
    assert_eq!(schema["additionalProperties"], false);
    let top = schema["properties"]
        .as_object()
        .expect("top-level properties");
    for key in ["sources", "rules", "tests"] {
        assert!(top.contains_key(key), "top level has `{key}`");
    }

    let defs = &schema["$defs"];
    let props = |def: &str| -> Vec<String> {
        defs[def]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("$defs.{def} has properties"))
            .keys()
            .cloned()
            .collect()
    };
    let rule = props("RuleConfig");
    for key in [
        "name",
        "source",
        "event",
        "match",
        "dedup",
        "actions",
        "on_failure",
    ] {
        assert!(
            rule.contains(&key.to_owned()),
            "a rule has `{key}`: {rule:?}"
        );
    }
    assert_eq!(
        defs["RuleConfig"]["required"],
        serde_json::json!(["name", "source", "actions"])
    );
    let action = props("ActionConfig");
    for key in ["log", "http", "shell", "retry", "timeout", "concurrency"] {
        assert!(
            action.contains(&key.to_owned()),
            "an action has `{key}`: {action:?}"
        );
    }
    // The agent controls, down to the words `on_busy` accepts.
    for key in ["when", "on_cancel"] {
        assert!(rule.contains(&key.to_owned()), "a rule has `{key}`");
    }
    for key in [
        "cancel",
        "when",
        "group",
        "then",
        "start_within",
        "stdin",
        "files",
    ] {
        assert!(
            action.contains(&key.to_owned()),
            "an action has `{key}`: {action:?}"
        );
    }
    assert_eq!(
        defs["ActionConfig"]["properties"]["then"]["items"]["$ref"], "#/$defs/ActionConfig",
        "`then:` holds actions"
    );
    assert_eq!(
        props("GroupConfig"),
        ["key", "kill_grace", "limit", "on_busy"]
    );
    assert_eq!(defs["GroupConfig"]["properties"]["limit"]["minimum"], 1);
    assert_eq!(
        defs["GroupConfig"]["properties"]["on_busy"]["enum"],
        serde_json::json!(["queue", "replace", "cancel", "skip", null])
    );
    assert_eq!(props("CancelConfig"), ["key", "rule"]);
    assert_eq!(
        defs["CancelConfig"]["required"],
        serde_json::json!(["rule", "key"])
    );
    let source = props("SourceConfig");
    for key in ["name", "provider", "secret", "path", "tolerance"] {
        assert!(
            source.contains(&key.to_owned()),
            "a source has `{key}`: {source:?}"
        );
    }
    let test = props("TestConfig");
    for key in ["name", "source", "headers", "body", "expect"] {
        assert!(
            test.contains(&key.to_owned()),
            "a test has `{key}`: {test:?}"
        );
    }
    // Descriptions travel to editors as hover text.
    let text = schema.to_string();
    assert!(text.contains("JSONPath"), "`match` is described");
}

#[test]
fn example_modelines_point_at_the_committed_schema() {
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("rules")).unwrap() {
        let path = entry.unwrap().path();
        if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let Some(target) = text
            .lines()
            .find_map(|l| l.strip_prefix("# yaml-language-server: $schema="))
        else {
            continue;
        };
        let resolved = path.parent().unwrap().join(target.trim());
        assert_eq!(
            resolved.canonicalize().ok(),
            root().join(COMMITTED).canonicalize().ok(),
            "{}: the modeline's schema path must resolve to {COMMITTED}",
            path.display()
        );
        seen += 1;
    }
    assert!(
        seen > 0,
        "the examples carry a yaml-language-server modeline"
    );
}

#[test]
fn schema_describes_expected_actions() {
    let schema: Value = serde_json::from_str(&generated()).expect("the schema is JSON");
    let defs = &schema["$defs"];
    assert_eq!(
        defs["TestConfig"]["properties"]["expect"]["items"]["$ref"],
        "#/$defs/ExpectSchema"
    );
    // A name, or `{ rule, actions }`.
    let entry = defs["ExpectSchema"]["anyOf"].as_array().expect("anyOf");
    assert_eq!(entry[0]["type"], "string");
    assert_eq!(entry[1]["$ref"], "#/$defs/ExpectActionsSchema");
    let with_actions = &defs["ExpectActionsSchema"];
    assert_eq!(with_actions["required"], serde_json::json!(["rule"]));
    assert_eq!(with_actions["additionalProperties"], false);
    assert_eq!(
        with_actions["properties"]["actions"]["items"]["$ref"],
        "#/$defs/ExpectActionSchema"
    );
    // One action type per entry, each a map of fields to assertions.
    let kinds: Vec<&Value> = defs["ExpectActionSchema"]["oneOf"]
        .as_array()
        .expect("oneOf")
        .iter()
        .map(|v| &v["required"][0])
        .collect();
    assert_eq!(kinds, ["shell", "http", "log", "cancel"]);
    let checks: Vec<&Value> = defs["CheckSchema"]["oneOf"]
        .as_array()
        .expect("oneOf")
        .iter()
        .map(|v| &v["required"][0])
        .collect();
    assert_eq!(checks, ["equals", "contains", "regex"]);
    assert_eq!(defs["AssertionSchema"]["anyOf"][0]["type"], "string");
}

#[test]
fn schema_describes_bursts_and_budgets() {
    let schema: Value = serde_json::from_str(&generated()).expect("the schema is JSON");
    let defs = &schema["$defs"];
    assert_eq!(
        schema["properties"]["limits"]["items"]["$ref"],
        "#/$defs/LimitConfig"
    );
    assert_eq!(
        defs["LimitConfig"]["required"],
        serde_json::json!(["name", "rate", "over"])
    );
    let rule = &defs["RuleConfig"]["properties"];
    assert_eq!(
        rule["debounce"]["anyOf"][0]["$ref"],
        "#/$defs/DebounceConfig"
    );
    assert_eq!(
        defs["DebounceConfig"]["required"],
        serde_json::json!(["key", "quiet", "max_wait"])
    );
    assert_eq!(rule["delay"]["type"], serde_json::json!(["string", "null"]));
    // `limit:` entries: a name, or `{ key, rate, over }`.
    assert_eq!(rule["limit"]["items"]["$ref"], "#/$defs/LimitItemSchema");
    let entry = defs["LimitItemSchema"]["anyOf"].as_array().expect("anyOf");
    assert_eq!(entry[0]["type"], "string");
    assert_eq!(entry[1]["$ref"], "#/$defs/InlineLimitSchema");
    let inline = &defs["InlineLimitSchema"];
    assert_eq!(inline["additionalProperties"], false);
    assert_eq!(inline["required"], serde_json::json!(["rate", "over"]));
    for def in [inline, &defs["LimitConfig"]] {
        assert_eq!(
            def["properties"]["over"]["enum"],
            serde_json::json!(["drop", "delay"])
        );
        let pattern = def["properties"]["rate"]["pattern"]
            .as_str()
            .expect("rate pattern");
        let re = regex::Regex::new(pattern).expect("a regex");
        assert!(re.is_match("20/m") && re.is_match("5/h") && !re.is_match("5/w"));
    }
}
