//! The host capability probe: what this host can do for migrations, published in the agent
//! profile ([`mose_protocol::messages::Capabilities`]) so the orchestrator never picks a
//! strategy a host cannot run.
//!
//! Every answer comes from doing the thing, not from version numbers or a successful write:
//! on the development kernel writing 4 to `clear_refs` "works" yet soft-dirty bits never
//! appear, CRIU 4.1 passes `criu check` yet fails on any TCP socket, and `uffd-noncoop` is
//! "supported" yet lazy restores fail. So:
//! * dirty tracking: a page we write must show bit 55 (soft-dirty) in `/proc/self/pagemap`, and
//!   `criu check --feature mem_dirty_track` must agree;
//! * TCP dump: CRIU dumps a real process holding an established TCP connection;
//! * lazy pages: CRIU dumps a real process with `--lazy-pages` and restores it through a
//!   `lazy-pages` daemon.
//!
//! The probe never fails: what cannot be established is reported as absent, with a note why.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mose_protocol::messages::Capabilities;
use tokio::process::{Child, Command};

use super::libpod::Podman;

/// Bit 55 of a `/proc/<pid>/pagemap` entry: the page was written since soft-dirty bits were cleared.
const PM_SOFT_DIRTY: u64 = 1 << 55;

/// Where and how to probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// The CRIU binary (podman runs the one on its PATH; this should be the same).
    pub criu: PathBuf,
    /// OVSDB socket to check; `None` skips the check (`ovs` is then false).
    pub ovsdb_socket: Option<PathBuf>,
    /// Scratch directory for the CRIU test dumps (removed afterwards).
    pub scratch: PathBuf,
    /// Deadline of each CRIU run.
    pub criu_timeout: Duration,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            criu: PathBuf::from("criu"),
            ovsdb_socket: Some(PathBuf::from("/run/openvswitch/db.sock")),
            scratch: std::env::temp_dir(),
            criu_timeout: Duration::from_secs(30),
        }
    }
}

/// The capabilities plus one line per capability found missing, saying why.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport {
    /// What the probe found.
    pub capabilities: Capabilities,
    /// One line per missing capability, saying why it is missing.
    pub notes: Vec<String>,
}

/// Probe this host and its podman service.
#[tracing::instrument(skip_all, fields(socket = %podman.socket().display()))]
pub async fn probe(podman: &Podman, opts: &ProbeOptions) -> ProbeReport {
    let t0 = Instant::now();
    let mut notes = Vec::new();
    let mut note = |s: String| {
        tracing::info!(note = %s, "capability missing");
        notes.push(s);
    };

    let podman_version = podman
        .version()
        .await
        .map_err(|e| note(format!("podman version: {e}")))
        .ok();
    let info = podman
        .info()
        .await
        .map_err(|e| note(format!("podman info: {e}")))
        .ok();
    let runtime = info
        .as_ref()
        .map(|i| i.host.oci_runtime.name.clone())
        .filter(|r| !r.is_empty());
    let cgroup_version = info.as_ref().map(|i| i.cgroup_version()).unwrap_or(0);

    let criu_version = match criu_version(&opts.criu, opts.criu_timeout).await {
        Ok(v) => Some(v),
        Err(e) => {
            note(format!("criu: {e}"));
            None
        }
    };

    let page_size = page_size();
    let kernel_dirty = kernel_soft_dirty(page_size as usize).unwrap_or_else(|e| {
        note(format!("soft-dirty test failed: {e}"));
        false
    });
    if !kernel_dirty {
        note("dirty tracking: a written page does not show the soft-dirty bit (pagemap bit 55); pre-copy impossible".into());
    }
    let (dirty_tracking, tcp_dump, lazy_pages) = if criu_version.is_none() {
        (false, false, false)
    } else {
        let criu_dirty = kernel_dirty
            && criu_ok(
                &opts.criu,
                &["check", "--feature", "mem_dirty_track"],
                opts.criu_timeout,
            )
            .await
            .map_err(|e| note(format!("criu check mem_dirty_track: {e}")))
            .is_ok();
        let tcp = tcp_dump_works(opts)
            .await
            .map_err(|e| note(format!("CRIU TCP dump: {e}")))
            .is_ok();
        let lazy = lazy_pages_work(opts)
            .await
            .map_err(|e| note(format!("CRIU lazy pages: {e}")))
            .is_ok();
        (criu_dirty, tcp, lazy)
    };

    let ovs = match &opts.ovsdb_socket {
        Some(p) => ovsdb_answers(p)
            .await
            .map_err(|e| note(format!("OVSDB {}: {e}", p.display())))
            .is_ok(),
        None => false,
    };

    let capabilities = Capabilities {
        podman_version,
        runtime,
        criu_version,
        dirty_tracking,
        tcp_dump,
        lazy_pages,
        page_size,
        cgroup_version,
        ovs,
    };
    tracing::info!(
        ?capabilities,
        ms = mose_protocol::units::millis(t0.elapsed()),
        "host capabilities probed"
    );
    ProbeReport {
        capabilities,
        notes,
    }
}

/// The kernel's page size (σ in the PAM model).
pub fn page_size() -> u32 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n).unwrap_or(4096)
}

/// Whether a pagemap entry carries the soft-dirty bit.
fn soft_dirty(entry: u64) -> bool {
    entry & PM_SOFT_DIRTY != 0
}

/// Write one page of ours and read its pagemap entry: a kernel that tracks dirty pages marks
/// it soft-dirty (new and written pages always are). No `clear_refs`: its success proves nothing.
pub(crate) fn kernel_soft_dirty(page: usize) -> Result<bool, String> {
    let mut buf = vec![0u8; 2 * page];
    let base = buf.as_mut_ptr() as usize;
    let aligned = base.div_ceil(page) * page;
    // SAFETY: `aligned` lies within `buf` (it has two pages), which lives to the end of the fn.
    unsafe { std::ptr::write_volatile((aligned as *mut u8).cast::<u8>(), 1) };
    let mut f = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
    let mut entry = [0u8; 8];
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start((aligned / page * 8) as u64))
        .and_then(|_| f.read_exact(&mut entry))
        .map_err(|e| format!("read /proc/self/pagemap: {e}"))?;
    let dirty = soft_dirty(u64::from_le_bytes(entry));
    drop(buf);
    Ok(dirty)
}

async fn criu_version(criu: &Path, timeout: Duration) -> Result<String, String> {
    let out = criu_output(criu, &["--version"], timeout).await?;
    parse_criu_version(&out).ok_or_else(|| format!("no version in `{}`", out.trim()))
}

/// `Version: 4.2.1` (and maybe a `GitID:` line) → `4.2.1`.
fn parse_criu_version(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `criu args…` within `timeout`: its stdout and stderr together (CRIU reports on either), or
/// why not, with the last lines of that text when it failed.
async fn criu_output(criu: &Path, args: &[&str], timeout: Duration) -> Result<String, String> {
    let out = mose_command::Cmd::new(criu)
        .args(args)
        .deadline(timeout)
        .output_any_status()
        .await
        .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "`criu {}` failed ({}): {}",
            args.join(" "),
            out.status,
            last_lines(&text, 3)
        ))
    }
}

async fn criu_ok(criu: &Path, args: &[&str], timeout: Duration) -> Result<(), String> {
    criu_output(criu, args, timeout).await.map(|_| ())
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The errors CRIU logged, for notes.
fn criu_log_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    if errors.is_empty() {
        last_lines(&text, 3)
    } else {
        errors[errors.len().saturating_sub(3)..].join(" | ")
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(base: &Path, what: &str) -> Result<Scratch, String> {
        let p = base.join(format!(
            "mose-probe-{what}-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Start `program args` as a session leader (so CRIU needs no `--shell-job`) with null stdio.
fn spawn_target(program: &str, args: &[&str]) -> Result<(Child, i32), String> {
    let mut c = Command::new("setsid");
    c.arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    no_inherited_fds(&mut c);
    let child = c.spawn().map_err(|e| format!("spawn {program}: {e}"))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or("spawned target has no pid")?;
    Ok((child, pid))
}

/// Wait until `pid` runs `comm` (the exec happened), so CRIU dumps the program we mean.
async fn wait_comm(pid: i32, comm: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim() == comm)
            .unwrap_or(false)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("process {pid} did not become `{comm}`"))
}

/// Dump a process that holds an established TCP connection (to a listener of ours), as podman
/// does with `--tcp-established`. The process is killed by the dump.
async fn tcp_dump_works(opts: &ProbeOptions) -> Result<(), String> {
    let dir = Scratch::new(&opts.scratch, "tcp")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("listen: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("listener address: {e}"))?
        .port();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{port} && exec sleep 300");
    let (mut child, pid) = spawn_target("bash", &["-c", &script])?;
    let _peer = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .map_err(|_| "test process did not connect".to_string())?
        .map_err(|e| format!("accept: {e}"))?;
    wait_comm(pid, "sleep").await?;
    let d = dir.0.to_string_lossy().into_owned();
    let pid_s = pid.to_string();
    let r = criu_ok(
        &opts.criu,
        &[
            "dump",
            "-t",
            &pid_s,
            "-D",
            &d,
            "-o",
            "dump.log",
            "--tcp-established",
        ],
        opts.criu_timeout,
    )
    .await
    .map_err(|e| format!("{e}; log: {}", criu_log_errors(&dir.0.join("dump.log"))));
    let _ = child.kill().await;
    r
}

/// Post-copy end to end: `criu dump --lazy-pages` serves the memory, a `criu lazy-pages`
/// daemon fetches it while `criu restore --lazy-pages` brings the process back. The target
/// runs as the init of its own PID namespace: a lazy dump keeps the original until all pages
/// are served, and only a fresh namespace lets the restore have the same PID meanwhile.
async fn lazy_pages_work(opts: &ProbeOptions) -> Result<(), String> {
    let dir = Scratch::new(&opts.scratch, "lazy")?;
    let d = dir.0.to_string_lossy().into_owned();
    let port = free_port()?;
    let port_s = port.to_string();
    let mut reaper = Reaper::default();
    let holder = spawn_group(
        "unshare",
        &["--pid", "--fork", "setsid", "sleep", "300"],
        &mut reaper,
    )?;
    let pid = ns_init_of(&holder).await?;
    reaper.pids.push(pid);
    wait_comm(pid, "sleep").await?;
    let pid_s = pid.to_string();
    let log_of = |name: &str| criu_log_errors(&dir.0.join(name));
    let criu = opts.criu.to_string_lossy().into_owned();

    let dump_args = [
        "dump",
        "-t",
        &pid_s,
        "-D",
        &d,
        "-o",
        "dump.log",
        "--lazy-pages",
        "--address",
        "127.0.0.1",
        "--port",
        &port_s,
    ];
    let mut dump = spawn_group(&criu, &dump_args, &mut reaper)?;
    wait_until(opts.criu_timeout, || tcp_listening(port), &mut dump)
        .await
        .map_err(|e| format!("dump page server: {e}; log: {}", log_of("dump.log")))?;
    let daemon_args = [
        "lazy-pages",
        "--page-server",
        "--address",
        "127.0.0.1",
        "--port",
        &port_s,
        "-D",
        &d,
        "-o",
        "lazy.log",
    ];
    let mut daemon = spawn_group(&criu, &daemon_args, &mut reaper)?;
    let sock = dir.0.join("lazy-pages.socket");
    wait_until(opts.criu_timeout, || sock.exists(), &mut daemon)
        .await
        .map_err(|e| format!("lazy-pages daemon: {e}; log: {}", log_of("lazy.log")))?;
    let pidfile = dir.0.join("restored.pid");
    let pidfile_s = pidfile.to_string_lossy().into_owned();
    let restore_args = [
        "restore",
        "-D",
        &d,
        "-o",
        "restore.log",
        "--lazy-pages",
        "--restore-detached",
        "--pidfile",
        &pidfile_s,
    ];
    let restored = criu_ok(&opts.criu, &restore_args, opts.criu_timeout).await;
    if let Some(p) = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        reaper.pids.push(p);
    }
    // Every page must arrive: both helpers then exit on their own, successfully.
    let helpers = tokio::time::timeout(opts.criu_timeout, async {
        (dump.wait().await, daemon.wait().await)
    })
    .await;
    restored.map_err(|e| {
        format!(
            "{e}; logs: {} / {}",
            log_of("dump.log"),
            log_of("restore.log")
        )
    })?;
    match helpers {
        Ok((Ok(d), Ok(l))) if d.success() && l.success() => Ok(()),
        Ok((d, l)) => Err(format!(
            "dump {d:?}, lazy-pages {l:?}; logs: {} / {}",
            log_of("dump.log"),
            log_of("lazy.log")
        )),
        Err(_) => Err(format!(
            "pages were not all transferred; lazy log: {}",
            log_of("lazy.log")
        )),
    }
}

/// Processes and process groups a probe started, killed (SIGKILL) when it ends whatever happened:
/// CRIU helpers fork children of their own, so their whole group goes.
#[derive(Default)]
struct Reaper {
    pids: Vec<i32>,
    groups: Vec<i32>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for &g in &self.groups {
            // SAFETY: kill(2) on a process group this probe created; no memory is involved.
            unsafe { libc::kill(-g, libc::SIGKILL) };
        }
        for &p in &self.pids {
            // SAFETY: as above, for a single process this probe started or restored.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// `CLOSE_RANGE_CLOEXEC` (linux/close_range.h; not in the libc crate).
const CLOSE_RANGE_CLOEXEC: libc::c_int = 1 << 2;

/// Keep descriptors the agent inherited without close-on-exec (e.g. a `/dev/null` of another
/// mount namespace when it was started through `nsenter`) out of the test processes: CRIU
/// refuses to dump a file whose mount it cannot see ("Can't lookup mount=N for fd=...").
/// Marking them close-on-exec, rather than closing them, leaves std's exec-error pipe working.
fn no_inherited_fds(c: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe
    // syscall; a kernel without close_range (< 5.11) just leaves the descriptors as they are.
    unsafe {
        c.pre_exec(|| {
            libc::close_range(3, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
}

/// Start `program args` as the leader of a new process group registered with `reaper`.
fn spawn_group(program: &str, args: &[&str], reaper: &mut Reaper) -> Result<Child, String> {
    let mut c = Command::new(program);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    no_inherited_fds(&mut c);
    let child = c.spawn().map_err(|e| format!("spawn {program}: {e}"))?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| format!("{program} has no pid"))?;
    reaper.groups.push(pid);
    Ok(child)
}

/// The PID (in our namespace) of the first child of `holder` (`unshare --fork`'s namespace init).
async fn ns_init_of(holder: &Child) -> Result<i32, String> {
    let h = holder.id().ok_or("namespace holder has exited")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{h}/task/{h}/children")).unwrap_or_default();
        if let Some(p) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return Ok(p);
        }
        if Instant::now() > deadline {
            return Err("unshare --pid --fork started no child".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Poll `cond` until it holds; fail if `helper` exits first or the deadline passes.
async fn wait_until(
    deadline: Duration,
    mut cond: impl FnMut() -> bool,
    helper: &mut Child,
) -> Result<(), String> {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return Ok(());
        }
        if let Ok(Some(st)) = helper.try_wait() {
            return Err(format!("exited early ({st})"));
        }
        if Instant::now() > end {
            return Err(format!("not ready within {deadline:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("find a free port: {e}"))
}

/// Something listens on 127.0.0.1:`port` (from `/proc/net/tcp`, without connecting: the page
/// server serves exactly one connection).
fn tcp_listening(port: u16) -> bool {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    listening_in(&text, port)
}

fn listening_in(proc_net_tcp: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    proc_net_tcp.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    })
}

async fn ovsdb_answers(socket: &Path) -> Result<(), String> {
    let mut c = tokio::time::timeout(
        Duration::from_secs(2),
        mose_overlay::ovsdb::OvsdbClient::connect(socket),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    c.set_timeout(Duration::from_secs(2));
    c.echo().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_dirty_is_bit_55() {
        // A present, written page on a kernel with soft-dirty: bits 63 (present) and 55.
        assert!(soft_dirty((1 << 63) | (1 << 55) | 0x1234));
        // This development kernel: present, exclusively mapped (bit 56), but no bit 55.
        assert!(!soft_dirty((1 << 63) | (1 << 56) | 0x1234));
    }

    #[test]
    fn kernel_test_runs_unprivileged() {
        kernel_soft_dirty(page_size() as usize).unwrap();
    }

    #[test]
    fn kernel_test_agrees_with_criu_here() {
        // `criu check` answers only to root.
        mose_testkit::root_test!(&["criu"]);
        let kernel = kernel_soft_dirty(page_size() as usize).unwrap();
        let out = std::process::Command::new("criu")
            .args(["check", "--feature", "mem_dirty_track"])
            .output()
            .expect("run criu");
        assert_eq!(
            kernel,
            out.status.success(),
            "pagemap test and `criu check --feature mem_dirty_track` disagree: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn criu_versions_parse() {
        assert_eq!(
            parse_criu_version("Version: 4.2.1\n").as_deref(),
            Some("4.2.1")
        );
        assert_eq!(
            parse_criu_version("Version: 3.17\nGitID: v3.17-1\n").as_deref(),
            Some("3.17")
        );
        assert_eq!(parse_criu_version("criu: command not found"), None);
    }

    #[test]
    fn listening_sockets_are_found() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue\n   \
                 0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n   \
                 1: 0100007F:1F91 0100007F:9C40 01 00000000:00000000\n";
        assert!(listening_in(t, 8080));
        assert!(!listening_in(t, 8081)); // established, not listening
        assert!(!listening_in(t, 80));
    }
}
