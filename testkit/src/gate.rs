//! The one gate of privileged (root) integration tests.
//!
//! Every test that needs root — network namespaces, bridges, OvS, podman, CRIU — starts with
//!
//! ```ignore
//! mose_testkit::root_test!();                          // root only
//! mose_testkit::root_test!(&["podman", "runc", "criu"]); // root and these programs on PATH
//! ```
//!
//! which decides, from [`ROOT_TESTS_ENV`], the effective uid and the programs on `PATH`:
//!
//! * `MOSE_ROOT_TESTS` unset (or `0`): the test returns at once and says so on stderr
//!   (`SKIPPED <test>: ...`). This is what a plain `cargo test --workspace` as a developer does.
//! * `MOSE_ROOT_TESTS=1` (`testbed/test.sh` sets it): the test runs, and a missing prerequisite
//!   (not root, a named program not on `PATH`) FAILS it with the reason. Never a silent skip.
//! * any other value is a typo and fails, so that a mistyped switch does not skip everything.
//!
//! Rust's test harness has no runtime skip, so a skipped test is reported as passed; the
//! `SKIPPED` line (written straight to stderr, not captured by the harness) tells them apart.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;

/// The switch of the root integration tests: `1` runs them (and fails on missing prerequisites).
pub const ROOT_TESTS_ENV: &str = "MOSE_ROOT_TESTS";

/// What a root integration test does, given the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Run the test.
    Run,
    /// Return at once; the line to print.
    Skip(String),
    /// Fail the test with this reason.
    Fail(String),
}

/// The decision, as a pure function: `env` is the value of [`ROOT_TESTS_ENV`] (`None` when
/// unset), `is_root` whether the effective uid is 0, `missing` the needed programs not found.
pub fn decide(test: &str, env: Option<&str>, is_root: bool, missing: &[&str]) -> Gate {
    match env.map(str::trim) {
        None | Some("") | Some("0") => {
            return Gate::Skip(format!(
                "SKIPPED {test}: root integration test; set {ROOT_TESTS_ENV}=1 \
                 (testbed/test.sh does) to run it"
            ))
        }
        Some("1") => {}
        Some(other) => {
            return Gate::Fail(format!(
                "{test}: {ROOT_TESTS_ENV}={other:?} is neither 1 (run the root integration \
                 tests) nor 0/unset (skip them)"
            ))
        }
    }
    let mut problems = Vec::new();
    if !is_root {
        problems.push("not running as root (run as root, e.g. `sudo -E`)".to_string());
    }
    if !missing.is_empty() {
        problems.push(format!(
            "not on PATH: {} (testbed/setup-host.sh installs them)",
            missing.join(", ")
        ));
    }
    if problems.is_empty() {
        Gate::Run
    } else {
        Gate::Fail(format!(
            "{test}: {ROOT_TESTS_ENV}=1 but this root integration test cannot run: {}",
            problems.join("; ")
        ))
    }
}

/// Applies the gate for `test` needing `programs`: true to run, false (after printing the
/// `SKIPPED` line to stderr) to return; panics with the reason when a prerequisite is missing.
/// Tests use [`root_test!`](crate::root_test), which calls this with the test's name.
pub fn privileged(test: &str, programs: &[&str]) -> bool {
    let env = std::env::var(ROOT_TESTS_ENV).ok();
    // Look for programs only when the tests are meant to run: a skip needs nothing.
    let enabled = env.as_deref().map(str::trim) == Some("1");
    let missing: Vec<&str> = if enabled {
        programs.iter().copied().filter(|p| !on_path(p)).collect()
    } else {
        Vec::new()
    };
    match decide(test, env.as_deref(), is_root(), &missing) {
        Gate::Run => true,
        Gate::Skip(line) => {
            // Straight to the stderr handle: the harness captures only `eprintln!`, so the line
            // shows in a normal run next to the harness's "... ok".
            let _ = writeln!(std::io::stderr().lock(), "{line}");
            false
        }
        Gate::Fail(reason) => panic!("{reason}"),
    }
}

/// True when the effective uid is 0 (from `/proc/self/status`; false if that cannot be read).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s))
        == Some(0)
}

/// The effective uid from the text of `/proc/<pid>/status` (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
}

/// True when `program` is an executable file: itself if it names a path, else in a `PATH` dir.
pub fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return is_executable(Path::new(program));
    }
    std::env::var_os("PATH")
        .map(|p| in_dirs(&p, program))
        .unwrap_or(false)
}

fn in_dirs(path: &OsStr, program: &str) -> bool {
    std::env::split_paths(path).any(|d| is_executable(&d.join(program)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The name of the enclosing test from the type name of a function item defined in its body:
/// `flow_switch::some_test::{{closure}}::__gate` (an async test body is a closure) becomes
/// `flow_switch::some_test`.
#[doc(hidden)]
pub fn test_name_from(item_type_name: &str) -> &str {
    let mut name = item_type_name
        .strip_suffix("::__gate")
        .unwrap_or(item_type_name);
    while let Some(outer) = name.strip_suffix("::{{closure}}") {
        name = outer;
    }
    name
}

/// The gate at the top of a root integration test: returns from the test (printing why) unless
/// `MOSE_ROOT_TESTS=1`; then fails it if not root or if a named program is not on `PATH`.
///
/// `root_test!()` needs root only; `root_test!(&["podman", "criu"])` (any `&[&str]`
/// expression, e.g. a shared `const`) also needs those programs. The test must return `()`.
#[macro_export]
macro_rules! root_test {
    () => {
        $crate::root_test!(&[])
    };
    ($programs:expr $(,)?) => {{
        fn __gate() {}
        let programs: &[&str] = $programs;
        if !$crate::gate::privileged(
            $crate::gate::test_name_from(::std::any::type_name_of_val(&__gate)),
            programs,
        ) {
            return;
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "some_test";

    fn skip_line() -> String {
        "SKIPPED some_test: root integration test; set MOSE_ROOT_TESTS=1 (testbed/test.sh does) \
         to run it"
            .to_string()
    }

    #[test]
    fn unset_or_zero_skips_whatever_the_machine_has() {
        for env in [None, Some(""), Some("0"), Some(" 0 ")] {
            for root in [false, true] {
                for missing in [&[][..], &["podman"][..]] {
                    assert_eq!(
                        decide(T, env, root, missing),
                        Gate::Skip(skip_line()),
                        "{env:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn enabled_as_root_with_everything_runs() {
        assert_eq!(decide(T, Some("1"), true, &[]), Gate::Run);
        assert_eq!(decide(T, Some("1\n"), true, &[]), Gate::Run);
    }

    #[test]
    fn enabled_without_root_fails_with_the_reason() {
        let Gate::Fail(r) = decide(T, Some("1"), false, &[]) else {
            panic!("must fail")
        };
        assert!(r.starts_with("some_test: MOSE_ROOT_TESTS=1 but"), "{r}");
        assert!(r.contains("not running as root"), "{r}");
        assert!(!r.contains("PATH"), "{r}");
    }

    #[test]
    fn enabled_with_missing_programs_fails_naming_them() {
        let Gate::Fail(r) = decide(T, Some("1"), true, &["podman", "criu"]) else {
            panic!("must fail")
        };
        assert!(r.contains("not on PATH: podman, criu"), "{r}");
        assert!(!r.contains("root (run"), "{r}");
        let Gate::Fail(r) = decide(T, Some("1"), false, &["ovs-vsctl"]) else {
            panic!("must fail")
        };
        assert!(
            r.contains("not running as root") && r.contains("ovs-vsctl"),
            "{r}"
        );
    }

    #[test]
    fn other_values_are_a_typo_not_a_skip() {
        for v in ["true", "yes", "2"] {
            let Gate::Fail(r) = decide(T, Some(v), true, &[]) else {
                panic!("{v} must fail")
            };
            assert!(r.contains("neither 1"), "{r}");
        }
    }

    #[test]
    fn effective_uid_is_the_second_field() {
        let s = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(s), Some(0));
        assert_eq!(effective_uid("Uid:\t0\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(effective_uid("Name:\tx\n"), None);
        // This process: the parse finds a uid.
        assert!(effective_uid(&std::fs::read_to_string("/proc/self/status").unwrap()).is_some());
    }

    #[test]
    fn programs_are_found_on_path_or_by_path() {
        let p = OsStr::new("/nonexistent:/bin:/usr/bin");
        assert!(in_dirs(p, "sh"));
        assert!(!in_dirs(p, "surely-not-a-program-mose"));
        assert!(on_path("/bin/sh"));
        assert!(!on_path("/etc/passwd"), "not executable");
        assert!(!on_path("/nonexistent/sh"));
    }

    #[test]
    fn test_names_lose_the_gate_item_and_async_closures() {
        assert_eq!(test_name_from("lan::shaped::__gate"), "lan::shaped");
        assert_eq!(
            test_name_from("flow_switch::moves::{{closure}}::__gate"),
            "flow_switch::moves"
        );
        assert_eq!(
            test_name_from("a::b::{{closure}}::{{closure}}::__gate"),
            "a::b"
        );
    }

    // The macro in a real function: whatever this machine and environment are, it does what
    // `decide` says (skip: returns before the body; run: runs it; fail: panics with the reason).
    #[test]
    fn macro_returns_early_runs_or_fails_as_decided() {
        use std::sync::atomic::{AtomicBool, Ordering};
        static RAN: AtomicBool = AtomicBool::new(false);
        fn gated() {
            crate::root_test!(&["sh"]);
            RAN.store(true, Ordering::SeqCst);
        }
        fn gated_root_only() {
            crate::root_test!();
        }
        let env = std::env::var(ROOT_TESTS_ENV).ok();
        let expected = decide(T, env.as_deref(), is_root(), &[]);
        let result = std::panic::catch_unwind(gated);
        match expected {
            Gate::Run => assert!(result.is_ok() && RAN.load(Ordering::SeqCst)),
            Gate::Skip(_) => assert!(result.is_ok() && !RAN.load(Ordering::SeqCst)),
            Gate::Fail(_) => {
                let e = result.expect_err("must fail");
                let msg = e.downcast_ref::<String>().expect("a formatted reason");
                assert!(
                    msg.starts_with(concat!(
                        module_path!(),
                        "::macro_returns_early_runs_or_fails_as_decided::gated: "
                    )),
                    "{msg}"
                );
            }
        }
        assert_eq!(
            std::panic::catch_unwind(gated_root_only).is_ok(),
            !matches!(expected, Gate::Fail(_))
        );
        fn __gate() {}
        assert_eq!(
            test_name_from(std::any::type_name_of_val(&__gate)),
            "mose_testkit::gate::tests::macro_returns_early_runs_or_fails_as_decided"
        );
    }
}
