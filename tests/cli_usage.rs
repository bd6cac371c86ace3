//! Command-line messages: help texts, and usage mistakes answered with exit 2 and one
//! sentence naming the offending value.

mod common;

use std::process::Command;

use common::{stderr, stdout, EnvOptions, TestEnv, BIN};

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("VPP_RECONCILER_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn demo_and_sim_help_do_not_offer_config() {
    for cmd in ["demo", "sim"] {
        let out = run(&[cmd, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        let help = stdout(&out);
        assert!(!help.contains("--config"), "{cmd} --help:\n{help}");
    }
    let help = stdout(&run(&["sim", "--help"]));
    assert!(help.contains("--init <DIR>"), "{help}");
    let help = stdout(&run(&["demo", "--help"]));
    assert!(help.contains("--keep <DIR>"), "{help}");
    // The commands that read the configuration offer it, before or after the command.
    let help = stdout(&run(&["events", "--help"]));
    assert!(help.contains("--config <PATH>"), "{help}");
    let help = stdout(&run(&["--help"]));
    assert!(help.contains("--config <PATH>"), "{help}");
}

#[test]
fn every_option_in_help_is_explained() {
    for cmd in [
        "run",
        "check-config",
        "track",
        "events",
        "event",
        "tokens",
        "instances",
        "syncs",
        "sync",
        "sim",
        "demo",
    ] {
        let help = stdout(&run(&[cmd, "--help"]));
        for line in help.lines() {
            let l = line.trim_start();
            if l.starts_with("--") || l.starts_with("-h") {
                // "--flag <V>  Text": an option line carries its explanation.
                let parts: Vec<&str> = l.splitn(2, "  ").collect();
                assert!(
                    parts.len() == 2 && !parts[1].trim().is_empty(),
                    "{cmd}: {line:?} has no help text:\n{help}"
                );
            }
        }
    }
}

#[test]
fn events_limit_zero_and_unknown_token_are_usage_errors() {
    let env = TestEnv::new(EnvOptions::default());
    let daemon = env.start_daemon();
    let out = env.cli(&["events", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("'0'") || e.contains("\"0\""), "{e}");
    assert!(e.contains("from 1 to 10000"), "{e}");
    let out = env.cli(&["syncs", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2));

    for cmd in ["events", "syncs"] {
        let out = env.cli(&[cmd, "--token", "nope"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        let e = stderr(&out);
        assert!(
            e.contains("--token \"nope\" is not a configured token (tokens: acme)"),
            "{cmd}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let out = env.cli(&["events", "--token", "acme"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(daemon.terminate().success());
}
