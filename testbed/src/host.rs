//! Emulated edge hosts: each is its own network + mount + UTS namespace on this machine.
//!
//! Why a mount namespace and not just `podman --root/--runroot`: a checkpoint carries absolute
//! paths (storage, runroot, conmon files), so two podman instances must each see their own files
//! at the *standard* paths. Inside a host these paths are private:
//!
//! | inside the host          | backed by (on the real fs)                       |
//! |--------------------------|--------------------------------------------------|
//! | `/run`                   | `/var/lib/mose-testbed/<host>/run`               |
//! | `/var/lib/containers`    | `/var/lib/mose-testbed/<host>/containers`        |
//! | `/var/lib/cni`           | `/var/lib/mose-testbed/<host>/cni`               |
//! | `/var/tmp`               | `/var/lib/mose-testbed/<host>/tmp`               |
//! | `/etc/containers`        | `/var/lib/mose-testbed/<host>/etc-containers` (copy + our containers.conf) |
//! | `/etc/cni/net.d`         | `/var/lib/mose-testbed/<host>/etc-cni` (copy, if the host has one) |
//! | `/dev/shm`               | a fresh tmpfs (podman's lock table lives there)  |
//! | `/sys`                   | a fresh sysfs of the host's netns (+ the real cgroup tree), like `ip netns exec` |
//!
//! Everything else (binaries, /work, /tmp) is shared with the machine. The namespace files are
//! bind-mounted at `/run/mose-testbed/<host>/{net,mnt,uts}` so the host outlives the process
//! that made it; `nsenter` with those files enters it. Processes of a host are found by their
//! namespace inodes, which is how [`Host::destroy`] and [`crate::sweep_stale`] stop them all.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mose_command::{Cmd, DEFAULT_DEADLINE};
use mose_overlay::OvsInstance;
use tokio::process::{Child, Command};

use crate::error::{Result, TestbedError};
use crate::images::BuiltImage;
use crate::lan::Lan;
use crate::sys;
use mose_agent::runtime::HostLimits;

/// Where the namespace files of every host are bind-mounted (a private mount, see [`sys::ensure_private_mount`]).
pub const RUN_BASE: &str = "/run/mose-testbed";
/// Where each host's private directories live on the real filesystem.
pub const STATE_BASE: &str = "/var/lib/mose-testbed";
/// The podman API socket as seen inside a host.
pub const PODMAN_SOCKET_INSIDE: &str = "/run/podman/podman.sock";
/// The host's LAN interface name inside its namespace.
pub const LAN_IFNAME: &str = "eth0";

/// (inside path, state subdirectory, seed from the machine's copy). `/dev/shm` and `/sys` are
/// handled separately (fresh filesystems, not directories).
const PRIVATE_DIRS: &[(&str, &str, bool)] = &[
    ("/run", "run", false),
    ("/var/lib/containers", "containers", false),
    ("/var/lib/cni", "cni", false),
    ("/var/tmp", "tmp", false),
    ("/etc/containers", "etc-containers", true),
    ("/etc/cni/net.d", "etc-cni", true),
];

/// Deadline for podman commands run during teardown.
const PODMAN_TEARDOWN: Duration = Duration::from_secs(60);

/// Runs inside the new namespaces (via `unshare`) and builds the host's private view.
/// $1 = hostname, $2 = state dir, $3.. = "inside:subdir" pairs to bind.
const SETUP_SCRIPT: &str = r#"
host="$1"; state="$2"; shift 2
hostname "$host"
# Copies of mounts below the paths we replace (other hosts' namespace files under /run, other
# podmans' overlay mounts) would pin those namespaces for as long as this host lives: detach them.
for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E '^(/run|/var/lib/containers|/var/lib/cni|/var/tmp|/etc/containers|/etc/cni/net.d|/dev/shm)(/|$)' | sort -r); do
  umount -l "$m" 2>/dev/null || true
done
# sysfs shows the netns of whoever mounts it: remount it here, keeping the real cgroup tree.
if mountpoint -q /sys/fs/cgroup; then mkdir -p "$state/.cgroup"; mount --rbind /sys/fs/cgroup "$state/.cgroup"; fi
umount -l /sys
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
if [ -d "$state/.cgroup" ] && mountpoint -q "$state/.cgroup"; then mount --move "$state/.cgroup" /sys/fs/cgroup; fi
for pair in "$@"; do
  inside="${pair%%:*}"; sub="${pair#*:}"
  mkdir -p "$inside"
  mount --bind "$state/$sub" "$inside"
done
mount -t tmpfs -o nosuid,nodev,mode=1777,size=1g shm /dev/shm
mkdir -p /run/podman /run/lock /run/netns
ip link set lo up
"#;

/// Which namespaces make up a host, by inode (stable while the host exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NsInodes {
    /// Network namespace.
    pub net: u64,
    /// Mount namespace.
    pub mnt: u64,
    /// UTS namespace.
    pub uts: u64,
}

/// One emulated host. Dropping it without [`Host::destroy`] still tears it down (synchronously,
/// best effort), so a failing test leaves nothing behind.
#[derive(Debug)]
pub struct Host {
    name: String,
    full_name: String,
    addr: Ipv4Addr,
    prefix_len: u8,
    mac: String,
    veth_outside: String,
    ns_dir: PathBuf,
    state_dir: PathBuf,
    inodes: NsInodes,
    limits: HostLimits,
    ovs: Option<OvsInstance>,
    podman_service: Option<Child>,
    torn_down: bool,
}

/// Host names: short, lowercase, usable in interface names, paths and hostnames.
pub(crate) fn validate_name(kind: &str, name: &str, max: usize) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TestbedError::Invalid(format!(
            "{kind} `{name}` must be 1..={max} characters of [a-z0-9-] (it becomes part of interface names and paths)"
        )))
    }
}

/// A locally administered MAC derived from the IPv4 address: predictable in captures and ARP tables.
pub fn mac_for(addr: Ipv4Addr) -> String {
    let o = addr.octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

impl Host {
    /// Create host `name` on `lan` with address `addr` (inside `lan`'s subnet). Its full name,
    /// used for paths, processes and the LAN-side veth, is `lan.prefix() + name`.
    /// Fails if a host of that full name already exists (e.g. left over by a crashed run:
    /// [`crate::sweep_stale`] removes it).
    pub async fn create(name: &str, lan: &Lan, addr: Ipv4Addr) -> Result<Host> {
        let t0 = Instant::now();
        validate_name("host name", name, 32)?;
        if name == "br" {
            return Err(TestbedError::Invalid(
                "host name `br` is reserved for the LAN bridge".into(),
            ));
        }
        let full_name = format!("{}{}", lan.prefix(), name);
        if full_name.len() > 15 {
            return Err(TestbedError::Invalid(format!(
                "`{full_name}` (LAN prefix + host name) is {} characters; it names the host's veth, and \
                 Linux interface names are at most 15",
                full_name.len()
            )));
        }
        lan.check_host_addr(addr)?;
        let ns_dir = Path::new(RUN_BASE).join(&full_name);
        let state_dir = Path::new(STATE_BASE).join(&full_name);
        if ns_dir.exists() || state_dir.exists() || sys::link_names().contains(&full_name) {
            return Err(TestbedError::State(format!(
                "host `{full_name}` already exists ({} / {} / link {full_name}); a crashed run? \
                 `mose-testbed down` or sweep_stale(\"{}\") removes it",
                ns_dir.display(),
                state_dir.display(),
                lan.prefix()
            )));
        }
        let limits = HostLimits::detect()
            .map_err(|e| TestbedError::io("read this machine's capabilities and rlimits", e))?;
        let mut host = Host {
            name: name.to_string(),
            full_name: full_name.clone(),
            addr,
            prefix_len: lan.prefix_len(),
            mac: mac_for(addr),
            veth_outside: full_name.clone(),
            ns_dir,
            state_dir,
            inodes: NsInodes {
                net: 0,
                mnt: 0,
                uts: 0,
            },
            limits,
            ovs: None,
            podman_service: None,
            torn_down: false,
        };
        // From here on a failure must undo what was done: the Drop of `host` does exactly that.
        host.make_namespaces().await?;
        host.plug_into(lan).await?;
        tracing::info!(host = %host.full_name, addr = %addr, ms = mose_protocol::units::millis(t0.elapsed()), "host up");
        Ok(host)
    }

    async fn make_namespaces(&mut self) -> Result<()> {
        let base = Path::new(RUN_BASE);
        sys::ensure_private_mount(base).map_err(|e| {
            TestbedError::io(
                format!("make {RUN_BASE} a private mount for namespace files"),
                e,
            )
        })?;
        let io = |what: &str, p: &Path, e| TestbedError::io(format!("{what} {}", p.display()), e);
        tokio::fs::create_dir_all(&self.ns_dir)
            .await
            .map_err(|e| io("create", &self.ns_dir, e))?;
        for f in ["net", "mnt", "uts"] {
            let p = self.ns_dir.join(f);
            tokio::fs::write(&p, b"")
                .await
                .map_err(|e| io("create namespace file", &p, e))?;
        }
        let mut binds = Vec::new();
        for &(inside, sub, seed) in PRIVATE_DIRS {
            let dir = self.state_dir.join(sub);
            if seed && !Path::new(inside).is_dir() {
                continue; // nothing to copy and nothing to hide (e.g. no /etc/cni here)
            }
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| io("create state dir", &dir, e))?;
            if seed {
                mose_command::run(
                    "cp",
                    [
                        "-a".to_string(),
                        format!("{inside}/."),
                        format!("{}/", dir.display()),
                    ],
                )
                .await?;
            }
            binds.push(format!("{inside}:{sub}"));
        }
        // /var/tmp semantics: world-writable, sticky.
        set_mode(&self.state_dir.join("tmp"), 0o1777)?;
        self.write_containers_conf().await?;

        Cmd::new("unshare")
            .args([
                format!("--net={}", self.netns_path().display()),
                format!("--mount={}", self.mntns_path().display()),
                format!("--uts={}", self.ns_dir.join("uts").display()),
                "--propagation".into(),
                "private".into(),
                "--".into(),
                "sh".into(),
                "-euc".into(),
                SETUP_SCRIPT.into(),
                "sh".into(),
                self.name.clone(),
                self.state_dir.to_string_lossy().into_owned(),
            ])
            .args(&binds)
            .output()
            .await?;
        let ino = |f: &str| {
            sys::ns_inode(&self.ns_dir.join(f)).ok_or_else(|| {
                TestbedError::State(format!(
                    "namespace file {} is not bound after unshare",
                    self.ns_dir.join(f).display()
                ))
            })
        };
        self.inodes = NsInodes {
            net: ino("net")?,
            mnt: ino("mnt")?,
            uts: ino("uts")?,
        };
        Ok(())
    }

    /// Podman settings every host needs; each line's reason is in docs/testbed.md.
    async fn write_containers_conf(&self) -> Result<()> {
        let dir = self.state_dir.join("etc-containers");
        let path = dir.join("containers.conf");
        if path.exists() {
            tracing::warn!(path = %path.display(), "replacing the machine's containers.conf inside the emulated host");
        }
        let ulimits: Vec<String> = self
            .limits
            .container_ulimits()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect();
        let text = format!(
            "# Written by mose-testbed for emulated host {name}.\n\
             [containers]\n\
             # Empty unless this machine lacks CAP_SYS_RESOURCE (see agent/src/runtime/limits.rs).\n\
             default_ulimits = [{ulimits}]\n\
             [engine]\n\
             # No systemd inside an emulated host.\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             # crun 1.8 (Debian 12) cannot checkpoint; API-created containers must use runc too.\n\
             runtime = \"runc\"\n",
            name = self.full_name,
            ulimits = ulimits.join(", ")
        );
        tokio::fs::write(&path, text)
            .await
            .map_err(|e| TestbedError::io(format!("write {}", path.display()), e))
    }

    async fn plug_into(&self, lan: &Lan) -> Result<()> {
        let netns = self.netns_path().to_string_lossy().into_owned();
        let out = self.veth_outside.as_str();
        mose_command::run(
            "ip",
            [
                "link", "add", out, "type", "veth", "peer", "name", LAN_IFNAME, "address",
                &self.mac, "netns", &netns,
            ],
        )
        .await?;
        crate::lan::disable_ipv6(out);
        mose_command::run("ip", ["link", "set", out, "master", lan.bridge(), "up"]).await?;
        let cidr = format!("{}/{}", self.addr, self.prefix_len);
        self.run("ip", ["addr", "add", &cidr, "dev", LAN_IFNAME])
            .await?;
        self.run("ip", ["link", "set", LAN_IFNAME, "up"]).await?;
        Ok(())
    }

    /// Short name (as given to [`Host::create`]; also the host's hostname).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// LAN prefix + name: the key for paths, processes and the LAN-side veth.
    pub fn full_name(&self) -> &str {
        &self.full_name
    }
    /// The host's LAN address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    /// MAC of the host's LAN interface (`eth0` inside).
    pub fn mac(&self) -> &str {
        &self.mac
    }
    /// The LAN interface inside the host.
    pub fn lan_ifname(&self) -> &str {
        LAN_IFNAME
    }
    /// The veth end in the root namespace, enslaved to the LAN bridge.
    pub fn veth_outside(&self) -> &str {
        &self.veth_outside
    }
    /// `/var/lib/mose-testbed/<full name>`.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
    /// `/run/mose-testbed/<full name>`: the namespace files.
    pub fn ns_dir(&self) -> &Path {
        &self.ns_dir
    }
    /// The network namespace file (usable with `nsenter --net=`, `ip link ... netns <path>`, setns).
    pub fn netns_path(&self) -> PathBuf {
        self.ns_dir.join("net")
    }
    /// The mount namespace file.
    pub fn mntns_path(&self) -> PathBuf {
        self.ns_dir.join("mnt")
    }
    /// Namespace inodes (what `/proc/<pid>/ns/*` of the host's processes point to).
    pub fn inodes(&self) -> NsInodes {
        self.inodes
    }
    /// The container rlimits this machine needs, detected when the host was made.
    pub fn limits(&self) -> &HostLimits {
        &self.limits
    }

    /// Command prefix that runs a program inside this host, e.g. for [`OvsInstance::start`].
    pub fn enter_prefix(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--net={}", self.netns_path().display()),
            format!("--mount={}", self.mntns_path().display()),
            format!("--uts={}", self.ns_dir.join("uts").display()),
            "--".into(),
        ]
    }

    /// A command that runs `program` inside this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let p = self.enter_prefix();
        let mut c = Command::new(&p[0]);
        c.args(&p[1..]).arg(program);
        c
    }

    /// Run `program args...` inside the host (short deadline); returns stdout.
    pub async fn run<I, S>(&self, program: &str, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = self.command(program);
        c.args(args);
        Ok(Cmd::from(c).stdout().await?)
    }

    /// `podman --runtime runc <args>` inside the host (runc: crun 1.8 cannot checkpoint).
    pub fn podman(&self) -> Command {
        let mut c = self.command("podman");
        c.args(["--runtime", "runc"]);
        c
    }

    /// Run podman with `args` inside the host within `timeout`; returns stdout.
    pub async fn podman_output<I, S>(&self, args: I, timeout: Duration) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = self.podman();
        c.args(args);
        Ok(Cmd::from(c).deadline(timeout).stdout().await?)
    }

    /// `--ulimit ...` arguments every `podman create/run` needs on this machine (empty on real hosts).
    pub fn container_ulimit_args(&self) -> Vec<String> {
        self.limits
            .container_ulimits()
            .iter()
            .flat_map(|u| ["--ulimit".to_string(), u.to_string()])
            .collect()
    }

    /// Where an inside path lives on the real filesystem (the private directories map into the
    /// host's state dir; other paths are shared and map to themselves). `None` for `/dev/shm`,
    /// which is a tmpfs of the host's own, and for relative paths.
    pub fn outside_path(&self, inside: impl AsRef<Path>) -> Option<PathBuf> {
        let inside = inside.as_ref();
        if !inside.is_absolute() || inside.starts_with("/dev/shm") {
            return None;
        }
        for &(dir, sub, _) in PRIVATE_DIRS {
            if let Ok(rest) = inside.strip_prefix(dir) {
                if self.state_dir.join(sub).is_dir() {
                    return Some(self.state_dir.join(sub).join(rest));
                }
            }
        }
        Some(inside.to_path_buf())
    }

    /// Start this host's private Open vSwitch (ovsdb-server + ovs-vswitchd inside the host, files
    /// under `<state dir>/ovs`).
    pub async fn start_ovs(&mut self) -> Result<&OvsInstance> {
        if self.ovs.is_none() {
            let ovs = OvsInstance::start(self.state_dir.join("ovs"), &self.enter_prefix()).await?;
            self.ovs = Some(ovs);
        }
        Ok(self.ovs.as_ref().expect("set above"))
    }

    /// The running OvS, if started.
    pub fn ovs(&self) -> Option<&OvsInstance> {
        self.ovs.as_ref()
    }

    /// The podman API socket as seen from outside the host (the machine's root mount namespace).
    pub fn podman_socket(&self) -> PathBuf {
        self.state_dir.join("run/podman/podman.sock")
    }

    /// Start `podman --runtime runc system service --time=0 unix:///run/podman/podman.sock` inside
    /// the host (runc on the command line: otherwise API restores pick crun and fail). Returns the
    /// socket path as seen from outside once it accepts connections. Log: `<state dir>/podman-service.log`.
    pub async fn start_podman_service(&mut self) -> Result<PathBuf> {
        let sock = self.podman_socket();
        if self.podman_service.is_some() {
            return Ok(sock);
        }
        let _ = std::fs::remove_file(&sock);
        let log_path = self.state_dir.join("podman-service.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| TestbedError::io(format!("create {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| TestbedError::io("duplicate log file handle", e))?;
        let mut c = self.podman();
        c.args([
            "system",
            "service",
            "--time=0",
            &format!("unix://{PODMAN_SOCKET_INSIDE}"),
        ])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true);
        let mut child = c
            .spawn()
            .map_err(|e| TestbedError::io("spawn podman system service", e))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::UnixStream::connect(&sock).await.is_ok() {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(TestbedError::State(format!(
                    "podman system service in host {} exited ({st}) before listening: {}",
                    self.full_name,
                    tail.trim()
                )));
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(TestbedError::Timeout {
                    what: format!(
                        "podman API socket {} of host {}",
                        sock.display(),
                        self.full_name
                    ),
                    after_ms: 20_000,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.podman_service = Some(child);
        tracing::info!(host = %self.full_name, socket = %sock.display(), "podman API service up");
        Ok(sock)
    }

    /// Load a testbed image (a `docker-archive` made by [`crate::images::ImageBuilder`]) and
    /// check it got the expected image ID, which is what lets a checkpoint from another host restore here.
    pub async fn load_image(&self, image: &BuiltImage) -> Result<String> {
        let archive = image.archive.to_string_lossy().into_owned();
        self.podman_output(["load", "-q", "-i", &archive], Duration::from_secs(120))
            .await?;
        let id = self
            .podman_output(
                ["image", "inspect", "--format", "{{.Id}}", &image.reference],
                DEFAULT_DEADLINE,
            )
            .await?
            .trim()
            .to_string();
        // podman prints the bare hex digest, the archive names it `sha256:<hex>`.
        if id != image.id.trim_start_matches("sha256:") {
            return Err(TestbedError::State(format!(
                "image {} loaded into host {} has ID {id}, expected {} (the archive's config digest)",
                image.reference, self.full_name, image.id
            )));
        }
        Ok(id)
    }

    /// Run `f` on a thread inside this host's network namespace (e.g. to open a client socket
    /// there: sockets keep their namespace whichever thread uses them later).
    pub async fn in_netns<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> std::io::Result<T> + Send + 'static,
    {
        let ns = self.netns_path();
        let host = self.full_name.clone();
        tokio::task::spawn_blocking(move || sys::in_netns(&ns, f))
            .await
            .map_err(|e| TestbedError::State(format!("netns task of host {host} failed: {e}")))?
            .map_err(|e| TestbedError::io(format!("in netns of host {host}"), e))
    }

    /// A TCP connection from inside this host to `to`.
    pub async fn tcp_connect(
        &self,
        to: SocketAddr,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream> {
        let s = self
            .in_netns(move || {
                let s = std::net::TcpStream::connect_timeout(&to, timeout)?;
                s.set_nodelay(true)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .await?;
        tokio::net::TcpStream::from_std(s)
            .map_err(|e| TestbedError::io("register socket with tokio", e))
    }

    /// A TCP listener inside this host bound to `at`.
    pub async fn tcp_listen(&self, at: SocketAddr) -> Result<tokio::net::TcpListener> {
        let l = self
            .in_netns(move || {
                let l = std::net::TcpListener::bind(at)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .await?;
        tokio::net::TcpListener::from_std(l)
            .map_err(|e| TestbedError::io("register listener with tokio", e))
    }

    /// Processes currently running in this host (its namespaces, plus descendants such as containers).
    pub fn processes(&self) -> Vec<i32> {
        sys::pids_in_namespaces(Some(self.inodes.net), Some(self.inodes.mnt))
    }

    /// Stop everything of this host: the API service, containers (`podman rm -af`), OvS, any other
    /// process in its namespaces, its veth, the namespaces and its state directory.
    pub async fn destroy(mut self) -> Result<()> {
        let t0 = Instant::now();
        self.stop_podman_service().await;
        let mut problems = Vec::new();
        if let Some(ovs) = self.ovs.take() {
            if let Err(e) = ovs.stop().await {
                problems.push(format!("stop OvS: {e}"));
            }
        }
        self.torn_down = true;
        let (full, veth) = (self.full_name.clone(), self.veth_outside.clone());
        let more = tokio::task::spawn_blocking(move || teardown_sync(&full, Some(&veth)))
            .await
            .map_err(|e| {
                TestbedError::State(format!(
                    "teardown task of host {} failed: {e}",
                    self.full_name
                ))
            })?;
        problems.extend(more);
        tracing::info!(host = %self.full_name, ms = mose_protocol::units::millis(t0.elapsed()), "host down");
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TestbedError::State(format!(
                "teardown of host {} left problems: {}",
                self.full_name,
                problems.join("; ")
            )))
        }
    }

    /// Leave the host running after this process exits (`mose-testbed up`): no teardown on
    /// drop, the podman service and OvS keep running; [`crate::sweep_stale`] (`mose-testbed
    /// down`) removes it later, from what is on disk.
    pub fn persist(mut self) {
        self.torn_down = true;
        // Their own Drops would stop them (kill_on_drop, OvsInstance's Drop): hand them over
        // to the system instead; the sweep finds them by namespace and state directory.
        std::mem::forget(self.podman_service.take());
        std::mem::forget(self.ovs.take());
    }

    /// SIGTERM the API service and give it time to finish what it does: killing it mid-request can
    /// leave one of podman's shared-memory locks held, and the `podman rm` after it would hang.
    async fn stop_podman_service(&mut self) {
        if let Some(mut child) = self.podman_service.take() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(sys::pid(pid), nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                tracing::warn!(host = %self.full_name, "podman service ignored SIGTERM, killing it");
                let _ = child.kill().await;
            }
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        if let Some(child) = self.podman_service.take() {
            if let Some(pid) = child.id() {
                let _ = sys::terminate(&[sys::raw_pid(pid)], Duration::from_secs(10));
            }
        }
        drop(self.ovs.take()); // OvsInstance's own Drop stops its daemons
        let problems = teardown_sync(&self.full_name, Some(&self.veth_outside));
        if problems.is_empty() {
            tracing::info!(host = %self.full_name, "host torn down on drop");
        } else {
            tracing::warn!(host = %self.full_name, ?problems, "host torn down on drop, with problems");
        }
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| TestbedError::io(format!("chmod {mode:o} {}", p.display()), e))
}

/// Tear down host `full_name` using only what is on disk (also used for stale hosts of a crashed
/// run). Best effort: carries on after errors and returns them.
pub(crate) fn teardown_sync(full_name: &str, veth: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    let ns_dir = Path::new(RUN_BASE).join(full_name);
    let state_dir = Path::new(STATE_BASE).join(full_name);
    let net = sys::ns_inode(&ns_dir.join("net"));
    let mnt = sys::ns_inode(&ns_dir.join("mnt"));
    let uts = sys::ns_inode(&ns_dir.join("uts"));

    // Containers first, through podman, so their storage is unmounted and cgroups removed cleanly.
    if let (Some(_), Some(_)) = (net, mnt) {
        let n = ns_dir.join("net").to_string_lossy().into_owned();
        let m = ns_dir.join("mnt").to_string_lossy().into_owned();
        let args = [
            &format!("--net={n}")[..],
            &format!("--mount={m}"),
            "--",
            "podman",
            "--runtime",
            "runc",
            "rm",
            "--all",
            "--force",
            "--time",
            "0",
        ];
        if which("podman") {
            let rm = Cmd::new("nsenter").args(args).deadline(PODMAN_TEARDOWN);
            if let Err(e) = rm.stdout_blocking() {
                problems.push(format!("remove containers: {e}"));
            }
        }
    }
    let container_ids = container_ids(&state_dir);

    // Everything else in the host: podman service, OvS, conmon, leftovers; then anything that
    // still names the state dir on its command line (a daemon whose namespace files are gone).
    let pids = sys::pids_in_namespaces(net, mnt);
    let mut survivors = sys::terminate(&pids, Duration::from_secs(5));
    let needle = format!("{}/", state_dir.display());
    let strays = sys::pids_with_cmdline(&needle);
    survivors.extend(sys::terminate(&strays, Duration::from_secs(3)));
    if !survivors.is_empty() {
        problems.push(format!("processes survived SIGKILL: {survivors:?}"));
    }

    if let Some(v) = veth {
        if sys::link_names().iter().any(|l| l == v) {
            let del = Cmd::new("ip")
                .args(["link", "del", v])
                .deadline(Duration::from_secs(10));
            if let Err(e) = del.stdout_blocking() {
                problems.push(e.to_string());
            }
        }
    }
    problems.extend(sys::unmount_all_under(&ns_dir));
    if ns_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&ns_dir) {
            problems.push(format!("remove {}: {e}", ns_dir.display()));
        }
    }
    remove_container_cgroups(&container_ids);
    // The state dir may still hold mounts if the host's mount namespace is pinned elsewhere;
    // those are detached first (they only exist in our namespace if something leaked).
    problems.extend(sys::unmount_all_under(&state_dir));
    if state_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&state_dir) {
            problems.push(format!("remove {}: {e}", state_dir.display()));
        }
    }
    tracing::debug!(
        host = full_name,
        ?net,
        ?mnt,
        ?uts,
        killed = pids.len(),
        "teardown done"
    );
    problems
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// IDs of the containers a host's storage knows (for cgroup cleanup after a crash).
fn container_ids(state_dir: &Path) -> Vec<String> {
    let dir = state_dir.join("containers/storage/overlay-containers");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                .collect()
        })
        .unwrap_or_default()
}

/// With cgroupfs, runc makes `<controller>/libpod_parent/libpod-<id>` (v1) or the same under the
/// v2 root. `podman rm` removes them; after a crash they stay empty and are removed here.
fn remove_container_cgroups(ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let root = Path::new("/sys/fs/cgroup");
    let mut parents = vec![root.join("libpod_parent")];
    if let Ok(rd) = std::fs::read_dir(root) {
        parents.extend(rd.flatten().map(|e| e.path().join("libpod_parent")));
    }
    for parent in parents {
        for id in ids {
            for name in [format!("libpod-{id}"), format!("libpod-conmon-{id}")] {
                let p = parent.join(&name);
                if p.is_dir() {
                    // rmdir only: a cgroup with processes is busy and stays (and is reported by tests).
                    let _ = std::fs::remove_dir(&p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("host name", "edge1", 32).is_ok());
        for bad in ["", "Edge", "a b", "x/y", "ä", &"a".repeat(33)] {
            let e = validate_name("host name", bad, 32).unwrap_err().to_string();
            assert!(e.contains("[a-z0-9-]"), "{e}");
        }
    }

    #[test]
    fn macs_follow_addresses() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 99, 0, 11)), "02:00:0a:63:00:0b");
    }
}
