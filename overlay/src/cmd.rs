//! Running external tools (ovs-*, tc, ethtool) with a deadline and a useful error.

use std::time::Duration;

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
pub(crate) async fn run(argv: &[String], env: &[(&str, &str)], timeout: Duration) -> Result<String> {
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| OverlayError::Invalid("empty command line".into()))?;
    let mut c = Command::new(prog);
    c.args(args).kill_on_drop(true).stdin(std::process::Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    tracing::debug!(cmd = %show(argv), "run");
    let out = tokio::time::timeout(timeout, c.output())
        .await
        .map_err(|_| OverlayError::Timeout { what: format!("`{}`", show(argv)), after_ms: timeout.as_millis() as u64 })?
        .map_err(|e| OverlayError::io(format!("cannot run `{}`", show(argv)), e))?;
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
