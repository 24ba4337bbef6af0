//! The `mose` binary as a script sees it: its exit statuses for help, usage errors and an
//! orchestrator that is not there, and the help that documents them. (Its statuses for real
//! migrations, 0, 3 and 1, are checked against the four-host testbed in
//! `testbed/tests/services.rs`, which runs this binary.)

use std::process::Command;

fn mose(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mose"))
        .args(args)
        .env_remove("MOSE_API")
        .output()
        .expect("run mose")
}

#[test]
fn help_succeeds_and_documents_the_exit_statuses() {
    let out = mose(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Exit status:",
        "3  the migration rolled back",
        "4  the migration failed",
    ] {
        assert!(help.contains(needle), "{help}");
    }
}

#[test]
fn usage_errors_and_an_absent_orchestrator_exit_1_with_the_reason() {
    let out = mose(&["migrate", "redis"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "usage errors are 1, not clap's 2"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--to"));

    // Port 1 on loopback: nothing listens there.
    let out = mose(&["--api", "http://127.0.0.1:1", "services"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the orchestrator at http://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn completion_scripts_are_printed() {
    for shell in ["bash", "zsh", "fish"] {
        let out = mose(&["completion", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("mose"),
            "{shell}"
        );
    }
}
