//! Removing what a crashed run left behind, found by name prefix.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use mose_command::Cmd;
use mose_overlay::netns::NETNS_DIR;

use crate::error::{Result, TestbedError};
use crate::host::{teardown_sync, RUN_BASE, STATE_BASE};
use crate::sys;

/// What [`sweep_stale`] removed, and what it could not.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Full names of hosts torn down.
    pub hosts: Vec<String>,
    /// Root-namespace interfaces (bridges, veths) and `/run/netns` namespaces deleted.
    pub links: Vec<String>,
    /// Things that could not be removed, with the reason.
    pub problems: Vec<String>,
}

impl SweepReport {
    /// Nothing was left behind.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Remove every host (processes, containers, OvS, namespaces, mounts, state) and every
/// root-namespace interface (LAN bridge, veths) whose name starts with `prefix`.
/// Safe to run when nothing is left, and while unrelated prefixes are in use.
pub async fn sweep_stale(prefix: &str) -> Result<SweepReport> {
    // A short prefix could match things we did not make (`m` matches every `mose-*`).
    if prefix.len() < 3
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(TestbedError::Invalid(format!(
            "sweep prefix `{prefix}` must be at least 3 characters of [a-z0-9-]"
        )));
    }
    let prefix = prefix.to_string();
    tokio::task::spawn_blocking(move || sweep_sync(&prefix))
        .await
        .map_err(|e| TestbedError::State(format!("sweep task failed: {e}")))
}

/// What of the testbed objects named `prefix*` still exists: host namespace/state directories,
/// root-namespace interfaces, and processes naming a host's state directory (private OvS
/// daemons). Empty after a complete teardown or sweep. Processes of a host that only its
/// namespaces identify are stopped by the teardown itself (see [`crate::Host::processes`]).
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut v = Vec::new();
    for base in [RUN_BASE, STATE_BASE] {
        v.extend(
            entries_with_prefix(Path::new(base), prefix)
                .into_iter()
                .map(|e| format!("directory {base}/{e}")),
        );
    }
    // Endpoint namespaces the testbed keeps in the machine's /run/netns (the four-host client).
    v.extend(
        entries_with_prefix(Path::new(NETNS_DIR), prefix)
            .into_iter()
            .map(|e| format!("namespace {NETNS_DIR}/{e}")),
    );
    v.extend(
        sys::link_names()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .map(|l| format!("interface {l}")),
    );
    for p in sys::pids_with_cmdline(&format!("{STATE_BASE}/{prefix}")) {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        v.push(format!(
            "process {p}: {}",
            String::from_utf8_lossy(&cmdline).replace('\0', " ").trim()
        ));
    }
    v
}

/// Names in `dir` starting with `prefix`.
fn entries_with_prefix(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn sweep_sync(prefix: &str) -> SweepReport {
    let mut report = SweepReport::default();
    let mut hosts: BTreeSet<String> = entries_with_prefix(Path::new(RUN_BASE), prefix)
        .into_iter()
        .collect();
    hosts.extend(entries_with_prefix(Path::new(STATE_BASE), prefix));
    for h in hosts {
        tracing::info!(host = %h, "sweeping stale host");
        report.problems.extend(
            teardown_sync(&h, None)
                .into_iter()
                .map(|p| format!("{h}: {p}")),
        );
        report.hosts.push(h);
    }
    // Namespaces the testbed made in the machine's /run/netns (the four-host client's); their
    // veths go with them.
    match mose_overlay::netns::sweep_netns(Path::new(NETNS_DIR), prefix) {
        Ok(names) => report
            .links
            .extend(names.into_iter().map(|n| format!("{NETNS_DIR}/{n}"))),
        Err(e) => report
            .problems
            .push(format!("sweep namespaces {NETNS_DIR}/{prefix}*: {e}")),
    }
    // Bridges last: veths first so nothing is enslaved while the bridge goes.
    let mut links: Vec<String> = sys::link_names()
        .into_iter()
        .filter(|l| l.starts_with(prefix))
        .collect();
    links.sort_by_key(|l| l.ends_with("br"));
    for l in links {
        let del = Cmd::new("ip")
            .args(["link", "del", &l])
            .deadline(Duration::from_secs(10));
        match del.stdout_blocking() {
            Ok(_) => report.links.push(l),
            // A veth vanishes with its peer's namespace: gone by now is fine.
            Err(_) if !sys::link_names().contains(&l) => report.links.push(l),
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    report
}
