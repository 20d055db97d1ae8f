//! The command line's own help: `completions` prints a script for each
//! shell, and the `--help` of every command has an example.

use crate::support;

#[test]
fn completions_print_a_script_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = support::run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = support::stdout(&out);
        assert!(
            script.len() > 200 && script.contains("hookrouter"),
            "{shell} completions:\n{script}"
        );
    }
    let out = support::run(&["completions", "no-such-shell"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn help_of_every_command_has_an_example() {
    let out = support::run(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = support::stdout(&out);
    assert!(help.contains("Example"), "hookrouter --help:\n{help}");
    // Subcommands as `--help` lists them.
    let commands: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description continues further indented.
        .filter(|l| !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    for want in [
        "serve",
        "check",
        "test",
        "events",
        "deliveries",
        "replay",
        "schema",
        "completions",
    ] {
        assert!(
            commands.iter().any(|c| c == want),
            "{want} is not listed in --help: {commands:?}\n{help}"
        );
    }
    for command in &commands {
        let out = support::run(&[command, "--help"]);
        assert!(out.status.success(), "{command} --help: {out:?}");
        let text = support::stdout(&out);
        assert!(
            text.contains("Example"),
            "hookrouter {command} --help has no example:\n{text}"
        );
    }
}
