//! A private Open vSwitch (ovsdb-server + ovs-vswitchd) whose every file lives under one directory.
//!
//! Why: the testbed emulates several hosts on one machine (each a net+mount+uts namespace). Each
//! host needs its own OvS, and the system one (`/run/openvswitch`) must not be touched. OvS has no
//! kernel module here, so every bridge uses the userspace datapath (`datapath_type=netdev`), and
//! ovs-vswitchd must run *inside* the host's network namespace: that is where it opens its ports.
//!
//! Layout under `dir` (all absolute):
//! `conf.db`, `db.sock` (OVSDB, RFC 7047), `ovsdb-server.{pid,log,ctl}`, `ovs-vswitchd.{pid,log,ctl}`,
//! and, because ovs-vswitchd runs with `OVS_RUNDIR=dir`, `<bridge>.mgmt` (the OpenFlow socket that
//! `ovs-ofctl` uses). Unix sockets on a path are reachable from any network namespace, so the
//! caller can talk OVSDB/OpenFlow from where it runs as long as `dir` is visible in its mount
//! namespace too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use mose_command::{argv, Cmd};

use crate::error::{OverlayError, Result};

/// Where Debian's openvswitch-common puts the schema.
pub const DEFAULT_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Unix socket paths are limited to 108 bytes (sun_path) including the NUL.
const SUN_PATH_MAX: usize = 107;

/// A running private OvS pair. Dropping it stops both daemons (SIGTERM, then SIGKILL); prefer
/// [`OvsInstance::stop`] in async code, which waits politely.
///
/// ```no_run
/// # async fn demo() -> mose_overlay::Result<()> {
/// use mose_overlay::OvsInstance;
/// let prefix: Vec<String> = ["ip", "netns", "exec", "mose-edge1"].map(String::from).to_vec();
/// let ovs = OvsInstance::start("/run/mose/edge1/ovs", &prefix).await?;
/// println!("OVSDB at {}, ovs-ofctl rundir {}", ovs.db_socket().display(), ovs.rundir().display());
/// // e.g. ovs-vsctl --db=<ovs.db_url()> show ; ovs-ofctl -O OpenFlow13 dump-flows <ovs.mgmt_target("br0")>
/// ovs.stop().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct OvsInstance {
    dir: PathBuf,
    prefix: Vec<String>,
    stopped: bool,
}

impl OvsInstance {
    /// Start a fresh private OvS under `dir` (created if missing; any previous db, pid, socket or
    /// log files there are removed, and daemons still running from an earlier pidfile there are
    /// killed, so a crashed run cannot get in the way).
    ///
    /// `enter_prefix` is prepended to every daemon command line so it runs inside the caller's
    /// emulated host, e.g. `["ip","netns","exec","h1"]` or
    /// `["nsenter","--net=/run/mose/h1/net","--mount=/run/mose/h1/mnt","--"]`; empty = run here.
    /// `dir` must be an absolute path visible both here and inside the prefix's mount namespace.
    ///
    /// Returns once ovsdb-server listens, the `Open_vSwitch` root row exists and ovs-vswitchd has
    /// finished its first configuration pass (both use `--detach`, which returns only when ready).
    pub async fn start(dir: impl AsRef<Path>, enter_prefix: &[String]) -> Result<Self> {
        Self::start_with_schema(dir, enter_prefix, Path::new(DEFAULT_SCHEMA)).await
    }

    /// As [`OvsInstance::start`], with an explicit OVSDB schema file.
    pub async fn start_with_schema(
        dir: impl AsRef<Path>,
        enter_prefix: &[String],
        schema: &Path,
    ) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_absolute() {
            return Err(OverlayError::Invalid(format!(
                "OvS directory must be absolute: {}",
                dir.display()
            )));
        }
        if !schema.exists() {
            return Err(OverlayError::Path {
                what: "OVSDB schema not found (is openvswitch-common installed?)".into(),
                path: schema.to_path_buf(),
            });
        }
        let sock = dir.join("db.sock");
        // `<bridge>.mgmt` is longer than db.sock; leave room for a 15-char bridge name.
        if dir.as_os_str().len() + "/123456789012345.mgmt".len() > SUN_PATH_MAX {
            return Err(OverlayError::Invalid(format!(
                "OvS directory path too long for unix sockets (max ~{} bytes): {}",
                SUN_PATH_MAX - 21,
                dir.display()
            )));
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| OverlayError::io(format!("create OvS dir {}", dir.display()), e))?;

        // A previous run may have left daemons behind: stop them before reusing their files.
        let mut this = OvsInstance {
            dir: dir.clone(),
            prefix: enter_prefix.to_vec(),
            stopped: false,
        };
        this.kill_daemons(Duration::from_secs(5)).await;
        for f in [
            "conf.db",
            ".conf.db.~lock~",
            "db.sock",
            "ovsdb-server.pid",
            "ovsdb-server.ctl",
            "ovs-vswitchd.pid",
            "ovs-vswitchd.ctl",
            "ovsdb-server.log",
            "ovs-vswitchd.log",
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        remove_mgmt_sockets(&dir);

        let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
        Cmd::new("ovsdb-tool")
            .arg("create")
            .arg(p("conf.db"))
            .arg(schema)
            .output()
            .await?;

        let dir_s = dir.to_string_lossy().into_owned();
        // OVS_RUNDIR etc. make every default path of the tools point into our dir, so nothing falls
        // back to /run/openvswitch or /var/log/openvswitch (the system instance's files).
        let env: Vec<(&str, &str)> = vec![
            ("OVS_RUNDIR", &dir_s),
            ("OVS_LOGDIR", &dir_s),
            ("OVS_DBDIR", &dir_s),
            ("OVS_SYSCONFDIR", &dir_s),
        ];

        let mut db_cmd = this.prefix.clone();
        db_cmd.extend(argv([
            "ovsdb-server".to_string(),
            p("conf.db"),
            format!("--remote=punix:{}", sock.display()),
            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options".into(),
            format!("--pidfile={}", p("ovsdb-server.pid")),
            format!("--unixctl={}", p("ovsdb-server.ctl")),
            format!("--log-file={}", p("ovsdb-server.log")),
            "-vconsole:off".into(),
            "-vfile:info".into(),
            "--no-chdir".into(),
            "--detach".into(),
        ]));
        let started = match Cmd::from_argv(&db_cmd) {
            Ok(c) => c.envs(env.iter().copied()).output().await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            this.stopped = true;
            return Err(e.into());
        }

        // The root row must exist before ovs-vswitchd starts, or it idles waiting for one.
        Cmd::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", sock.display()))
            .args(["--no-wait", "init"])
            .envs(env.iter().copied())
            .output()
            .await?;

        let mut sw_cmd = this.prefix.clone();
        sw_cmd.extend(argv([
            "ovs-vswitchd".to_string(),
            format!("unix:{}", sock.display()),
            format!("--pidfile={}", p("ovs-vswitchd.pid")),
            format!("--unixctl={}", p("ovs-vswitchd.ctl")),
            format!("--log-file={}", p("ovs-vswitchd.log")),
            "-vconsole:off".into(),
            "-vfile:info".into(),
            "--no-chdir".into(),
            "--detach".into(),
        ]));
        Cmd::from_argv(&sw_cmd)?
            .envs(env.iter().copied())
            .deadline(Duration::from_secs(30))
            .output()
            .await?;
        tracing::info!(dir = %dir.display(), prefix = ?this.prefix, "private OvS started");
        Ok(this)
    }

    /// The directory holding db, sockets, pidfiles and logs (also the OvS "rundir").
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rundir `ovs-ofctl`/`ovs-vsctl`/`ovs-appctl` need (`OVS_RUNDIR=<this>`); same as [`Self::dir`].
    pub fn rundir(&self) -> &Path {
        &self.dir
    }

    /// Path of the OVSDB unix socket.
    pub fn db_socket(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    /// `unix:<db socket>` for `ovs-vsctl --db=`.
    pub fn db_url(&self) -> String {
        format!("unix:{}", self.db_socket().display())
    }

    /// OpenFlow management target of `bridge` for `ovs-ofctl` (`unix:<rundir>/<bridge>.mgmt`).
    pub fn mgmt_target(&self, bridge: &str) -> String {
        format!("unix:{}", self.dir.join(format!("{bridge}.mgmt")).display())
    }

    /// The namespace-entering prefix the daemons were started with.
    pub fn enter_prefix(&self) -> &[String] {
        &self.prefix
    }

    /// Environment for OvS command-line tools aimed at this instance.
    pub fn tool_env(&self) -> Vec<(String, String)> {
        let d = self.dir.to_string_lossy().into_owned();
        vec![
            ("OVS_RUNDIR".into(), d.clone()),
            ("OVS_LOGDIR".into(), d.clone()),
            ("OVS_DBDIR".into(), d),
        ]
    }

    /// Pids of the daemons, as their pidfiles say (None if absent or unreadable).
    pub fn pids(&self) -> (Option<i32>, Option<i32>) {
        (
            read_pid(&self.dir.join("ovsdb-server.pid")),
            read_pid(&self.dir.join("ovs-vswitchd.pid")),
        )
    }

    /// True while both daemons are alive.
    pub fn is_running(&self) -> bool {
        let (a, b) = self.pids();
        a.is_some_and(alive) && b.is_some_and(alive)
    }

    /// Stop both daemons (vswitchd first so it can release its ports cleanly), waiting up to 5 s
    /// for each before SIGKILL.
    pub async fn stop(mut self) -> Result<()> {
        self.kill_daemons(Duration::from_secs(5)).await;
        self.stopped = true;
        tracing::info!(dir = %self.dir.display(), "private OvS stopped");
        Ok(())
    }

    async fn kill_daemons(&mut self, grace: Duration) {
        for name in ["ovs-vswitchd", "ovsdb-server"] {
            if let Some(pid) = read_pid(&self.dir.join(format!("{name}.pid"))) {
                if is_our_daemon(pid, name) {
                    terminate(pid, grace, true).await;
                }
            }
        }
    }
}

impl Drop for OvsInstance {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Sync fallback: no runtime is guaranteed here, so poll with std sleeps.
        for name in ["ovs-vswitchd", "ovsdb-server"] {
            if let Some(pid) = read_pid(&self.dir.join(format!("{name}.pid"))) {
                if is_our_daemon(pid, name) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                    let mut waited = 0;
                    while alive(pid) && waited < 3000 {
                        std::thread::sleep(Duration::from_millis(10));
                        waited += 10;
                    }
                    if alive(pid) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
        }
    }
}

fn remove_mgmt_sockets(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.ends_with(".mgmt") || n.ends_with(".snoop") || n.ends_with(".ctl") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Alive and not a zombie (a zombie child of ours would otherwise look alive forever).
pub(crate) fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z"),
        Err(_) => false,
    }
}

/// Only signal a pid from a stale pidfile if it still is that daemon (pids get reused).
fn is_our_daemon(pid: i32, name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| name.starts_with(c.trim()))
        .unwrap_or(false)
}

/// SIGTERM, wait up to `grace`, then SIGKILL if `force`.
pub(crate) async fn terminate(pid: i32, grace: Duration, force: bool) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while alive(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if force && alive(pid) {
        tracing::warn!(pid, "daemon ignored SIGTERM, killing");
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_relative_and_too_long_dirs() {
        let e = OvsInstance::start("relative/dir", &[]).await.unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let long = format!("/tmp/{}", "x".repeat(100));
        let e = OvsInstance::start(&long, &[]).await.unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
    }

    #[tokio::test]
    async fn missing_schema_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let e = OvsInstance::start_with_schema(d.path(), &[], Path::new("/nonexistent/schema"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("schema"), "{e}");
    }

    #[test]
    fn alive_detects_self_and_dead() {
        assert!(alive(i32::try_from(std::process::id()).unwrap()));
        assert!(!alive(i32::MAX));
    }
}
