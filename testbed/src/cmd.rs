//! Running external tools (ip, tc, nsenter, podman, cargo) with a deadline and a useful error.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::error::{Result, TestbedError};

/// Default deadline for one short tool call (ip, tc, mount helpers answer in milliseconds).
pub const SHORT: Duration = Duration::from_secs(20);

/// `program arg arg...` for messages.
pub fn show(c: &Command) -> String {
    let std = c.as_std();
    std::iter::once(std.get_program())
        .chain(std.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `c` to completion within `timeout`; non-zero exit is an error carrying stderr. Returns stdout.
pub async fn output(mut c: Command, timeout: Duration) -> Result<String> {
    let shown = show(&c);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tracing::debug!(cmd = %shown, "run");
    let out = tokio::time::timeout(timeout, c.output())
        .await
        .map_err(|_| TestbedError::Timeout {
            what: format!("`{shown}`"),
            after_ms: timeout.as_millis() as u64,
        })?
        .map_err(|e| TestbedError::io(format!("cannot run `{shown}`"), e))?;
    if !out.status.success() {
        return Err(TestbedError::Command {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Build a command from a program and its arguments.
pub fn new<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Run `program args...` with the short deadline.
pub async fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output(new(program, args), SHORT).await
}

/// Synchronous variant for teardown paths that run in `Drop` (no runtime guaranteed there).
/// Failures are returned as text: teardown collects them and carries on.
pub fn run_sync(
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> std::result::Result<String, String> {
    let shown = format!("{program} {}", args.join(" "));
    let child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    // Read output on a helper thread so a chatty child cannot block on a full pipe while we wait.
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(|e| format!("reading output of `{shown}`: {e}"))?,
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(format!(
                "`{shown}` timed out after {} ms",
                timeout.as_millis()
            ));
        }
    };
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
