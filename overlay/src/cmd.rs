//! Running external tools (ovs-*, tc, ethtool) with a deadline and a useful error.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{OverlayError, Result};

/// Default deadline for one external command: generous, these tools answer in ms.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// Render argv for messages.
pub(crate) fn show(argv: &[String]) -> String {
    argv.join(" ")
}

/// Run `argv` (first element = program), optionally with environment additions; return stdout.
/// Non-zero exit becomes `OverlayError::Command` carrying stderr.
pub(crate) async fn run(
    argv: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<String> {
    run_with_input(argv, env, None, timeout).await
}

/// As [`run`], feeding `input` to the command's stdin (e.g. a flow file for `ovs-ofctl ... -`).
pub(crate) async fn run_with_input(
    argv: &[String],
    env: &[(&str, &str)],
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<String> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| OverlayError::Invalid("empty command line".into()))?;
    let mut c = Command::new(prog);
    c.args(args)
        .kill_on_drop(true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        c.env(k, v);
    }
    tracing::debug!(cmd = %show(argv), "run");
    let what = || format!("`{}`", show(argv));
    let fut = async {
        let mut child = c
            .spawn()
            .map_err(|e| OverlayError::io(format!("cannot run {}", what()), e))?;
        if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(data)
                .await
                .map_err(|e| OverlayError::io(format!("write stdin of {}", what()), e))?;
            // Dropping stdin closes it: the tool sees EOF and starts working.
        }
        child
            .wait_with_output()
            .await
            .map_err(|e| OverlayError::io(format!("wait for {}", what()), e))
    };
    let out = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| OverlayError::Timeout {
            what: what(),
            after_ms: timeout.as_millis() as u64,
        })??;
    if !out.status.success() {
        return Err(OverlayError::Command {
            command: show(argv),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Build an argv from string-likes.
pub(crate) fn argv<I, S>(parts: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    parts.into_iter().map(Into::into).collect()
}
