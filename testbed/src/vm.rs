//! The four-VM testbed (docs/vm.md): the paper's four roles as QEMU VMs, each with its own kernel
//! (the guest kernel has the soft-dirty tracking pre-copy needs), booted from the guest image of
//! `testbed/vm/build-image.sh` (Debian 12, kernel 6.1, podman + runc, CRIU, OvS, our binaries).
//!
//! ```text
//!  root namespace: bridge mvm-br (no address)            127.0.0.1:17070 ── orchestrator API
//!     │ tap mvm-edge1   │ tap mvm-edge2   │ tap mvm-mobile   │ tap mvm-ctrl     (QEMU user net,
//!  ┌──┴────────────┐ ┌──┴────────────┐ ┌──┴─────────────┐ ┌──┴──────────────┐   restrict=on,
//!  │ VM1 edge1     │ │ VM2 edge2     │ │ VM3 mobile     │ │ VM4 ctrl        │   per VM: ssh
//!  │ eth0 10.77.0.11│ │ eth0 .12     │ │ eth0 .13       │ │ eth0 .14        │   127.0.0.1:1722N)
//!  │ agent, podman │ │ agent, podman │ │ agent, client  │ │ orchestrator    │
//!  │ OvS br0       │ │ OvS br0       │ │ OvS br0        │ └─────────────────┘
//!  └─┬─to-mobile───┘ └─┬─to-mobile───┘ └┬to-edge1──to-edge2┬
//!    └── wire (QEMU UDP socket netdev) ──┘                 │   service overlay 10.88.0.0/24:
//!                      └── wire ───────────────────────────┘   a star around the mobile VM
//! ```
//!
//! * LAN `10.77.0.0/24` on the bridge `mvm-br` carries the control plane: the agents and the
//!   orchestrator find each other by **multicast scouting on eth0**; the root namespace has no
//!   address there and sends nothing to it.
//! * The service overlay uses point-to-point wires between the OvS bridges, as in the emulated
//!   testbed (docs/overlay.md: VXLAN with the userspace datapath needs `br-phy` and has an MTU
//!   trap; a second NIC per VM pair is the VM equivalent of a veth wire).
//! * Roles, addresses and wires come from the kernel command line (`mose.role=… mose.id=…
//!   mose.ip=…`), read by `mose-node-setup` in the image.
//! * Management: one QEMU user-mode NIC per VM (`restrict=on`: the guest reaches nothing),
//!   forwarding 127.0.0.1:1722N to its ssh (key `target/testbed/vm/id_ed25519`) and, on ctrl,
//!   127.0.0.1:17070 to the orchestrator's HTTP API.
//!
//! QEMU runs under `nice -n 10` (shared 2-core machine), with KVM when a probe boot shows it
//! works and TCG (`-cpu max`) otherwise. Everything is named `mvm-*` or lives under
//! `target/testbed/vm/`; [`down`] removes it all, also after a crash.

use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mose_api::{AgentView, ApiClient};
use mose_protocol::messages::Phase;
use mose_protocol::units::BytesPerSec;
use serde::{Deserialize, Serialize};

use mose_protocol::domain::{Member, MemberRole};

use crate::error::{Result, TestbedError};

/// Prefix of every interface and QEMU name the VM testbed makes.
pub const PREFIX: &str = "mvm-";
/// The LAN bridge in the root namespace.
pub const BRIDGE: &str = "mvm-br";
/// Host port forwarded to the orchestrator's HTTP API on the controller VM.
pub const API_HOST_PORT: u16 = 17070;
/// Host ports forwarded to the VMs' ssh: base + index.
const SSH_PORT_BASE: u16 = 17221;
/// UDP ports of the overlay wires (QEMU socket netdevs on 127.0.0.1): base + 10·wire + side.
const WIRE_PORT_BASE: u16 = 17310;
/// Guest memory, MiB.
const MEM_MIB: u32 = 1280;
/// How long the VMs may take to boot and report ready (TCG on a busy 2-core machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
/// After boot, how long until the orchestrator lists the three agents with their profiles.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(300);
/// Zenoh lease inside the VMs (TCG: a 1 s lease would flap under load).
const LEASE_MS: u32 = 5000;

/// The four VMs: (name = agent id, role, last octet of the LAN address).
pub const VMS: [(&str, &str, u8); 4] = [
    ("edge1", "edge", 11),
    ("edge2", "edge", 12),
    ("mobile", "mobile", 13),
    ("ctrl", "controller", 14),
];
/// Wires of the service overlay: (edge VM, its port, mobile's port).
const WIRES: [(&str, &str, &str); 2] = [
    ("edge1", "to-mobile", "to-edge1"),
    ("edge2", "to-mobile", "to-edge2"),
];

/// The `vm` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum VmCmd {
    /// Build the guest image if needed, boot the four VMs (edge1, edge2, mobile, ctrl), wait until
    /// the orchestrator lists the agents; they keep running until `vm down`.
    Up {
        /// Accelerator: auto (KVM if a probe boot works, else TCG), kvm or tcg.
        #[arg(long, default_value = "auto")]
        accel: String,
    },
    /// The VMs, their boot times, and the agents as the orchestrator lists them.
    Status,
    /// Stop the VMs and remove taps, bridge and overlay disks (also after a crash).
    Down,
    /// `vm up`, the counter service on edge1 with a live client on mobile, migrations
    /// edge1 -> edge2 -> edge1 through the orchestrator's API, target/testbed/vm-report.json.
    Demo {
        /// Accelerator: auto (KVM if a probe boot works, else TCG), kvm or tcg.
        #[arg(long, default_value = "auto")]
        accel: String,
        /// Leave the VMs running afterwards (default: `vm down` at the end).
        #[arg(long)]
        keep: bool,
        /// θ_down of both migrations, ms.
        #[arg(long, default_value_t = 20_000.0)]
        target_downtime_ms: f64,
        /// θ_mig of both migrations, ms (loose: pre-copy rounds fit).
        #[arg(long, default_value_t = 120_000.0)]
        target_duration_ms: f64,
        /// Memory state the counter holds (incompressible), MiB: what the rounds move. (128
        /// MiB: a cold migration under TCG froze it 42 s and the client gave up.)
        #[arg(long, default_value_t = 16)]
        state_mib: u32,
        /// How fast the counter dirties its state, MiB/s: what each round leaves for the next.
        #[arg(long, default_value_t = 0.5)]
        dirty_mib_per_s: f64,
        /// Calibrate the edge VMs first (`mose-agent calibrate`, ≈7 min under TCG, refused
        /// when the shared cores make the fit too noisy); without it PAM plans with the paper's
        /// default parameters and says so.
        #[arg(long)]
        calibrate: bool,
    },
    /// Internal, inside the mobile VM: steer the service toward edge1 and make the client's
    /// namespace on br0.
    #[command(hide = true)]
    GuestMobile,
    /// Internal, inside the mobile VM: the live client; progress to /run/mose-client.progress,
    /// stops when /run/mose-client.stop exists, then writes its timeline JSON to `out`.
    #[command(hide = true)]
    GuestClient {
        /// Where to write the timeline JSON.
        out: PathBuf,
    },
}

/// Runs one `vm` subcommand.
pub async fn run(cmd: VmCmd) -> anyhow::Result<()> {
    match cmd {
        VmCmd::Up { accel } => {
            let lab = VmLab::up(&accel).await?;
            println!("{}", lab.state.summary());
            lab.persist();
            Ok(())
        }
        VmCmd::Status => {
            let st = VmState::load(&state_file())
                .context("no VM testbed state (run `mose-testbed vm up`)")?;
            println!("{}", st.summary());
            println!("agents ({}):", st.api_url);
            match st.api()?.agents().await {
                Ok(a) => print!("{}", mose_api::format::agents_table(&a)),
                Err(e) => println!("  {e}"),
            }
            Ok(())
        }
        VmCmd::Down => {
            let left = down()?;
            if left.is_empty() {
                println!("VM testbed down: no QEMU, tap, bridge or overlay left");
                Ok(())
            } else {
                bail!("left behind: {}", left.join(", "))
            }
        }
        VmCmd::GuestMobile => guest_mobile().await,
        VmCmd::GuestClient { out } => guest_client(&out).await,
        VmCmd::Demo {
            accel,
            keep,
            target_downtime_ms,
            target_duration_ms,
            state_mib,
            dirty_mib_per_s,
            calibrate,
        } => {
            if !(dirty_mib_per_s.is_finite() && dirty_mib_per_s >= 0.0) {
                bail!("--dirty-mib-per-s must be a finite number ≥ 0, not {dirty_mib_per_s}");
            }
            let lab = VmLab::up(&accel).await?;
            println!("{}", lab.state.summary());
            let workload = DemoWorkload {
                state_mib,
                dirty_mib_per_s,
            };
            let r = async {
                if calibrate {
                    calibrate_edges(&lab.state).await?;
                }
                demo(&lab, target_downtime_ms, target_duration_ms, workload).await
            }
            .await;
            if keep {
                lab.persist();
            } else {
                drop(lab);
                let left = down()?;
                if !left.is_empty() {
                    eprintln!("vm down left: {}", left.join(", "));
                }
            }
            r
        }
    }
}

/// `target/testbed/vm`: image, overlays, serial logs, state.
pub fn vm_dir() -> PathBuf {
    crate::out_dir().join("vm")
}
fn state_file() -> PathBuf {
    vm_dir().join("state.json")
}

/// What `vm up` left running, for `status`, `demo` and `down`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// QEMU's accelerator (`kvm` or `tcg`).
    pub accel: String,
    /// The orchestrator's API, reachable from the host.
    pub api_url: String,
    /// Its tokens file (handed to the controller VM; `mose --token-file` reads it).
    pub api_tokens: PathBuf,
    /// Every VM.
    pub vms: Vec<VmInfo>,
    /// From QEMU start to the orchestrator listing all agents with profiles, ms.
    pub discovery_ms: Option<u64>,
}

/// One VM of the testbed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    /// Its host name.
    pub name: String,
    /// `edge`, `mobile` or `controller`.
    pub role: String,
    /// Its address on the LAN.
    pub lan_ip: Ipv4Addr,
    /// QEMU's PID.
    pub pid: u32,
    /// Host port forwarded to its SSH.
    pub ssh_port: u16,
    /// Its tap device on the host.
    pub tap: String,
    /// Its copy-on-write disk.
    pub overlay: PathBuf,
    /// Its serial console log.
    pub serial_log: PathBuf,
    /// QEMU start → "MOSE-READY" on the serial console (host clock), ms.
    pub ready_ms: Option<u64>,
    /// The guest's uptime when its node setup finished, s.
    pub guest_uptime_s: Option<f64>,
}

impl VmState {
    /// A client of the controller VM's orchestrator API, with the testbed's token.
    pub fn api(&self) -> Result<ApiClient> {
        crate::api_client(&self.api_url, &self.api_tokens)
    }

    /// Reads a saved state.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TestbedError::io(format!("read {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| TestbedError::Parse {
            path: path.into(),
            why: e.to_string(),
        })
    }
    fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("state serialises");
        std::fs::write(path, text)
            .map_err(|e| TestbedError::io(format!("write {}", path.display()), e))
    }
    /// One line per VM, for `status`.
    pub fn summary(&self) -> String {
        let mut out = format!("VMs (accel {}, API {}):\n", self.accel, self.api_url);
        for v in &self.vms {
            out.push_str(&format!(
                "  {:<7} {:<10} {:<12} pid {:<8} {:<5} ssh 127.0.0.1:{}  ready after {} (guest uptime {})\n",
                v.name,
                v.role,
                v.lan_ip,
                v.pid,
                if pid_alive(v.pid) { "up" } else { "GONE" },
                v.ssh_port,
                v.ready_ms.map(|m| format!("{:.1} s", m as f64 / 1000.0)).unwrap_or("-".into()),
                v.guest_uptime_s.map(|s| format!("{s:.1} s")).unwrap_or("-".into()),
            ));
        }
        if let Some(d) = self.discovery_ms {
            out.push_str(&format!(
                "  all agents listed with profiles {:.1} s after QEMU start\n",
                d as f64 / 1000.0
            ));
        }
        out
    }
    /// One VM by name.
    pub fn vm(&self, name: &str) -> Result<&VmInfo> {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| TestbedError::Invalid(format!("no VM `{name}`")))
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A running VM testbed. Dropping it stops everything ([`down`]); [`VmLab::persist`] keeps it.
pub struct VmLab {
    /// What `vm up` left running.
    pub state: VmState,
    armed: bool,
}

impl Drop for VmLab {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = down() {
                tracing::warn!("VM teardown on drop: {e}");
            }
        }
    }
}

impl VmLab {
    /// Keeps the VMs running when this is dropped.
    pub fn persist(mut self) {
        self.armed = false;
    }

    /// Builds the image if needed and boots the four VMs.
    pub async fn up(accel: &str) -> anyhow::Result<VmLab> {
        let dir = vm_dir();
        if state_file().exists()
            || crate::sys::link_names()
                .iter()
                .any(|l| l.starts_with(PREFIX))
        {
            bail!("a VM testbed exists already (state.json or mvm-* links): run `mose-testbed vm down` first");
        }
        // A no-op when its inputs are unchanged.
        crate::run_script("testbed/vm/build-image.sh").await?;
        let accel = choose_accel(accel, &dir).await?;
        tracing::info!(%accel, "accelerator");
        let mut lab = VmLab {
            state: VmState {
                accel: accel.clone(),
                api_url: format!("http://127.0.0.1:{API_HOST_PORT}"),
                api_tokens: PathBuf::new(),
                vms: Vec::new(),
                discovery_ms: None,
            },
            armed: true,
        };
        // LAN bridge without address (IPv6 off: the root namespace sends nothing onto it),
        // multicast snooping off (Zenoh scouting must flood).
        ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])
        .await?;
        crate::lan::disable_ipv6(BRIDGE);
        ip(&["link", "set", BRIDGE, "up"]).await?;
        if std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .map(|s| s.trim() == "1")
            .unwrap_or(false)
        {
            tracing::warn!("br_netfilter is on: bridged VM traffic passes iptables FORWARD");
        }
        let pki = issue_domain(&dir)?;
        lab.state.api_tokens = crate::api_tokens_file(&pki)?;
        let t0 = Instant::now();
        // Mobile first: nothing depends on the order with UDP wires, but its log comes first.
        for (i, (name, role, octet)) in VMS.into_iter().enumerate() {
            let tls = mose_pki::member_dir(&pki, &member_of(name, role)?);
            let info = start_vm(&dir, &accel, i, name, role, octet, &tls).await?;
            lab.state.vms.push(info);
            lab.state.save(&state_file())?;
        }
        // Wait for every VM's node setup.
        loop {
            let mut pending = Vec::new();
            for v in lab.state.vms.iter_mut() {
                if v.ready_ms.is_some() {
                    continue;
                }
                if !pid_alive(v.pid) {
                    bail!(
                        "QEMU of {} exited; see {} and {}",
                        v.name,
                        v.serial_log.display(),
                        v.serial_log.with_extension("qemu.log").display()
                    );
                }
                if let Some(up) = ready_line(&v.serial_log) {
                    v.ready_ms = Some(mose_protocol::units::millis(t0.elapsed()));
                    v.guest_uptime_s = Some(up);
                    tracing::info!(vm = %v.name, secs = t0.elapsed().as_secs_f64(), guest_uptime = up, "ready");
                } else {
                    pending.push(v.name.clone());
                }
            }
            lab.state.save(&state_file())?;
            if pending.is_empty() {
                break;
            }
            if t0.elapsed() > BOOT_TIMEOUT {
                bail!(
                    "VMs not ready after {} s: {pending:?} (serial logs in {})",
                    BOOT_TIMEOUT.as_secs(),
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        wait_for_agents(&lab.state).await?;
        lab.state.discovery_ms = Some(mose_protocol::units::millis(t0.elapsed()));
        lab.state.save(&state_file())?;
        Ok(lab)
    }
}

/// KVM if asked for or if a probe boot of the guest kernel gets to its init under KVM within
/// 30 s (this machine's /dev/kvm is a PVM variant that cannot boot stock kernels: docs/vm.md);
/// TCG otherwise. The probe's verdict is cached in `accel.probe`.
async fn choose_accel(want: &str, dir: &Path) -> anyhow::Result<String> {
    match want {
        "kvm" | "tcg" => return Ok(want.into()),
        "auto" => {}
        other => bail!("--accel {other}: use auto, kvm or tcg"),
    }
    let cache = dir.join("accel.probe");
    if let Ok(v) = std::fs::read_to_string(&cache) {
        return Ok(v.trim().to_string());
    }
    let verdict = if !Path::new("/dev/kvm").exists() {
        "tcg"
    } else {
        let log = dir.join("accel-probe.log");
        let _ = std::fs::remove_file(&log);
        let mut child = tokio::process::Command::new("nice")
            .args([
                "-n",
                "10",
                "qemu-system-x86_64",
                "-accel",
                "kvm",
                "-cpu",
                "host",
                "-m",
                "256",
                "-nographic",
                "-monitor",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-kernel")
            .arg(dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(dir.join("initrd.img"))
            .args(["-append", "console=ttyS0 panic=-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start the KVM probe")?;
        let t = Instant::now();
        let mut ok = false;
        while t.elapsed() < Duration::from_secs(30) {
            if std::fs::read_to_string(&log)
                .map(|s| s.contains("Run /init"))
                .unwrap_or(false)
            {
                ok = true;
                break;
            }
            if child.try_wait()?.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let _ = child.kill().await;
        let _ = std::fs::remove_file(&log);
        if ok {
            "kvm"
        } else {
            "tcg"
        }
    };
    std::fs::write(&cache, verdict)?;
    Ok(verdict.into())
}

async fn ip(args: &[&str]) -> Result<String> {
    Ok(mose_command::run("ip", args).await?)
}

fn lan_ip(octet: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, octet)
}
fn lan_mac(octet: u8) -> String {
    format!("52:54:00:77:00:{octet:02x}")
}
/// MAC of a wire NIC: wire w (0, 1), side 0 = edge, 1 = mobile.
fn wire_mac(w: usize, side: usize) -> String {
    format!("52:54:00:78:{w:02x}:{side:02x}")
}
/// (local, remote) UDP ports of wire w's side.
fn wire_ports(w: usize, side: usize) -> (u16, u16) {
    // A handful of wires (WIRES), each with side 0 or 1.
    let (w, side) = (u16::try_from(w).unwrap_or(0), u16::from(side == 1));
    let base = WIRE_PORT_BASE + 10 * w;
    (base + side, base + 1 - side)
}

/// The domain member a VM's node is: its agent, or on the controller the orchestrator.
fn member_of(name: &str, role: &str) -> Result<Member> {
    let role = match role {
        "controller" => MemberRole::Orchestrator,
        other => other
            .parse()
            .map_err(|e| TestbedError::Invalid(format!("VM {name}: {e}")))?,
    };
    Ok(Member::new(role, name)?)
}

/// A new domain CA for this VM testbed and one TLS directory per VM (`<role>-<id>/` under
/// `vm/pki/`), handed to each guest through QEMU's fw_cfg (see [`FW_CFG_TLS`]).
fn issue_domain(dir: &Path) -> Result<PathBuf> {
    let pki = dir.join("pki");
    match std::fs::remove_dir_all(&pki) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(TestbedError::io(format!("remove {}", pki.display()), e)),
    }
    let members = VMS
        .into_iter()
        .map(|(name, role, _)| member_of(name, role))
        .collect::<Result<Vec<_>>>()?;
    mose_pki::issue_domain(&pki, "MOSE VM testbed", &members, 30)?;
    Ok(pki)
}

/// fw_cfg names under which a guest finds its TLS directory's files (`mose-node-setup` copies
/// them to /etc/mose/tls): no disk image has to be rewritten per run, and only the guest's
/// root can read them.
const FW_CFG_TLS: &str = "opt/mose/tls";
/// fw_cfg name of the orchestrator's HTTP API tokens file (controller VM only).
const FW_CFG_API_TOKENS: &str = "opt/mose/api-tokens";

#[allow(clippy::too_many_arguments)]
async fn start_vm(
    dir: &Path,
    accel: &str,
    i: usize,
    name: &str,
    role: &str,
    octet: u8,
    tls: &Path,
) -> anyhow::Result<VmInfo> {
    let tap = format!("{PREFIX}{name}");
    ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]).await?;
    crate::lan::disable_ipv6(&tap);
    ip(&["link", "set", &tap, "master", BRIDGE]).await?;
    ip(&["link", "set", &tap, "up"]).await?;

    let overlay = dir.join(format!("{name}.qcow2"));
    let _ = std::fs::remove_file(&overlay);
    mose_command::run(
        "qemu-img",
        ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]
            .into_iter()
            .map(String::from)
            .chain([
                dir.join("base.qcow2").display().to_string(),
                overlay.display().to_string(),
            ]),
    )
    .await?;

    // One port per VM (four of them).
    let ssh_port = SSH_PORT_BASE + u16::try_from(i).unwrap_or(0);
    let mut hostfwd = format!("hostfwd=tcp:127.0.0.1:{ssh_port}-10.0.2.15:22");
    if role == "controller" {
        hostfwd.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{API_HOST_PORT}-10.0.2.15:7070"
        ));
    }
    let mut cmdline = format!(
        "console=ttyS0 root=/dev/vda rw net.ifnames=0 mose.role={role} mose.id={name} \
         mose.ip={}/24 mose.mgmt=10.0.2.15/24 mose.lease={LEASE_MS}",
        lan_ip(octet)
    );
    if role == "controller" {
        cmdline.push_str(" mose.api=0.0.0.0:7070");
    }
    let mut extra: Vec<String> = Vec::new();
    let mut wires = Vec::new();
    for (w, (edge, edge_port, mobile_port)) in WIRES.iter().enumerate() {
        let side = if *edge == name {
            0
        } else if role == "mobile" {
            1
        } else {
            continue;
        };
        let (local, remote) = wire_ports(w, side);
        let id = format!("wire{w}");
        extra.extend([
            "-netdev".into(),
            format!("socket,id={id},udp=127.0.0.1:{remote},localaddr=127.0.0.1:{local}"),
            "-device".into(),
            format!("virtio-net-pci,netdev={id},mac={}", wire_mac(w, side)),
        ]);
        wires.push(format!(
            "{}@{}",
            if side == 0 { edge_port } else { mobile_port },
            wire_mac(w, side)
        ));
    }
    if !wires.is_empty() {
        cmdline.push_str(&format!(" mose.wires={}", wires.join(",")));
    }
    if role == "mobile" {
        cmdline.push_str(" mose.flowports=edge1=to-edge1,edge2=to-edge2");
    }

    let serial_log = dir.join(format!("{name}.log"));
    let qemu_log = dir.join(format!("{name}.qemu.log"));
    let pidfile = dir.join(format!("{name}.pid"));
    let _ = std::fs::remove_file(&serial_log);
    let qlog = std::fs::File::create(&qemu_log)?;
    let mut c = std::process::Command::new("nice");
    c.args([
        "-n",
        "10",
        "qemu-system-x86_64",
        "-name",
        &format!("{PREFIX}{name}"),
    ]);
    if accel == "kvm" {
        c.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        // TCG's translation cache defaults to 1 GiB per VM (RSS ≈ 1.7 GiB each): 256 MiB is plenty.
        c.args(["-accel", "tcg,tb-size=256", "-cpu", "max"]);
    }
    c.args([
        "-smp",
        "1",
        "-m",
        &MEM_MIB.to_string(),
        "-nographic",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", serial_log.display()))
    .arg("-pidfile")
    .arg(&pidfile)
    .arg("-kernel")
    .arg(dir.join("vmlinuz"))
    .arg("-initrd")
    .arg(dir.join("initrd.img"))
    .arg("-append")
    .arg(&cmdline)
    .arg("-drive")
    .arg(format!(
        "file={},if=virtio,format=qcow2,cache=unsafe",
        overlay.display()
    ))
    .args(
        [
            mose_pki::CA_CERT,
            mose_pki::NODE_CERT,
            mose_pki::NODE_KEY,
            mose_pki::ROSTER,
        ]
        .iter()
        .flat_map(|f| {
            [
                "-fw_cfg".to_string(),
                format!("name={FW_CFG_TLS}/{f},file={}", tls.join(f).display()),
            ]
        }),
    )
    .args(match role {
        "controller" => vec![
            "-fw_cfg".to_string(),
            format!(
                "name={FW_CFG_API_TOKENS},file={}",
                dir.join("pki").join("api-tokens").display()
            ),
        ],
        _ => Vec::new(),
    })
    // eth0: the LAN (tap on mvm-br); eth1: management (user net, nothing reachable).
    .arg("-netdev")
    .arg(format!("tap,id=lan,ifname={tap},script=no,downscript=no"))
    .arg("-device")
    .arg(format!("virtio-net-pci,netdev=lan,mac={}", lan_mac(octet)))
    .arg("-netdev")
    .arg(format!(
        "user,id=mgmt,restrict=on,net=10.0.2.0/24,{hostfwd}"
    ))
    .arg("-device")
    .arg("virtio-net-pci,netdev=mgmt,mac=52:54:00:79:00:01")
    .args(&extra)
    .stdin(Stdio::null())
    .stdout(qlog.try_clone()?)
    .stderr(qlog)
    .process_group(0);
    let child = c
        .spawn()
        .with_context(|| format!("start QEMU for {name}"))?;
    // `nice` execs QEMU: the child's pid is QEMU's.
    let pid = child.id();
    std::mem::forget(child);
    tracing::info!(vm = name, pid, log = %serial_log.display(), "QEMU started");
    Ok(VmInfo {
        name: name.into(),
        role: role.into(),
        lan_ip: lan_ip(octet),
        pid,
        ssh_port,
        tap,
        overlay,
        serial_log,
        ready_ms: None,
        guest_uptime_s: None,
    })
}

/// The guest uptime in the "MOSE-READY" line of a serial log, once it is there.
fn ready_line(log: &Path) -> Option<f64> {
    let mut s = String::new();
    std::fs::File::open(log).ok()?.read_to_string(&mut s).ok()?;
    let line = s.lines().find(|l| l.contains("MOSE-READY"))?;
    line.split("uptime=").nth(1)?.trim().parse().ok()
}

/// Until `GET /v1/agents` lists edge1, edge2 and mobile, edge agents with their probed podman.
async fn wait_for_agents(st: &VmState) -> anyhow::Result<Vec<AgentView>> {
    let api = st.api()?;
    let t = Instant::now();
    let mut last;
    loop {
        match api.agents().await {
            Ok(agents) => {
                let ready = ["edge1", "edge2", "mobile"].iter().all(|id| {
                    agents.iter().any(|a| {
                        a.id == *id
                            && match &a.profile {
                                Some(p) if p.role == mose_protocol::messages::Role::Edge => p
                                    .capabilities
                                    .as_ref()
                                    .is_some_and(|c| c.podman_version.is_some()),
                                Some(_) => true,
                                None => false,
                            }
                    })
                });
                if ready {
                    tracing::info!(
                        secs = t.elapsed().as_secs_f64(),
                        "agents listed with profiles"
                    );
                    return Ok(agents);
                }
                last = format!(
                    "listed: {:?}",
                    agents.iter().map(|a| a.id.clone()).collect::<Vec<_>>()
                );
            }
            Err(e) => last = e.to_string(),
        }
        if t.elapsed() > DISCOVERY_TIMEOUT {
            bail!("the orchestrator did not list edge1, edge2, mobile with profiles within {} s ({last})",
                DISCOVERY_TIMEOUT.as_secs());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Stop every VM and remove what `vm up` made: QEMU (by the pids in state.json and the pid
/// files), taps and bridge (`mvm-*`), overlay disks, state. Returns what is still there.
pub fn down() -> Result<Vec<String>> {
    let dir = vm_dir();
    let mut pids: Vec<u32> = VmState::load(&state_file())
        .map(|s| s.vms.iter().map(|v| v.pid).collect())
        .unwrap_or_default();
    for (name, _, _) in VMS {
        if let Ok(p) = std::fs::read_to_string(dir.join(format!("{name}.pid"))) {
            if let Ok(p) = p.trim().parse() {
                pids.push(p);
            }
        }
    }
    pids.sort();
    pids.dedup();
    // Only pids that are our QEMUs (a stale pid file may name a recycled pid).
    let ours: Vec<u32> = pids.into_iter().filter(|p| is_our_qemu(*p)).collect();
    for p in &ours {
        let _ = nix::sys::signal::kill(crate::sys::pid(*p), nix::sys::signal::Signal::SIGTERM);
    }
    let t = Instant::now();
    while ours.iter().any(|p| pid_alive(*p)) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for p in ours.iter().filter(|p| pid_alive(**p)) {
        let _ = nix::sys::signal::kill(crate::sys::pid(*p), nix::sys::signal::Signal::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut links: Vec<String> = crate::sys::link_names()
        .into_iter()
        .filter(|l| l.starts_with(PREFIX))
        .collect();
    // Taps first, the bridge last.
    links.sort_by_key(|l| l == BRIDGE);
    for l in &links {
        if let Err(e) = mose_command::Cmd::new("ip")
            .args(["link", "del", l])
            .stdout_blocking()
        {
            tracing::warn!("{e}");
        }
    }
    for (name, _, _) in VMS {
        for ext in ["qcow2", "pid"] {
            let _ = std::fs::remove_file(dir.join(format!("{name}.{ext}")));
        }
    }
    let _ = std::fs::remove_file(state_file());
    Ok(leftovers())
}

/// QEMU processes named `mvm-*`, `mvm-*` links, overlay disks: what `down` must leave none of.
pub fn leftovers() -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if is_our_qemu(pid) {
                    left.push(format!("QEMU pid {pid}"));
                }
            }
        }
    }
    left.extend(
        crate::sys::link_names()
            .into_iter()
            .filter(|l| l.starts_with(PREFIX))
            .map(|l| format!("link {l}")),
    );
    for (name, _, _) in VMS {
        let p = vm_dir().join(format!("{name}.qcow2"));
        if p.exists() {
            left.push(p.display().to_string());
        }
    }
    left
}

/// A QEMU whose `-name` is one of ours.
fn is_our_qemu(pid: u32) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    args.first()
        .map(|a| a.ends_with(b"qemu-system-x86_64"))
        .unwrap_or(false)
        && args
            .windows(2)
            .any(|w| w[0] == b"-name" && w[1].starts_with(PREFIX.as_bytes()))
}

/// Run `script` as root in VM `vm` over its management ssh; returns stdout.
pub async fn ssh(vm: &VmInfo, script: &str, timeout: Duration) -> Result<String> {
    let key = vm_dir().join("id_ed25519");
    let c = mose_command::Cmd::new("ssh").arg("-i").arg(&key).args([
        "-p",
        &vm.ssh_port.to_string(),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=20",
        "-o",
        "BatchMode=yes",
        "root@127.0.0.1",
        script,
    ]);
    Ok(c.deadline(timeout).stdout().await?)
}

/// Inside VMs: the OvS of the image (Debian's openvswitch-switch).
const GUEST_OVSDB: &str = "/run/openvswitch/db.sock";
const GUEST_OVS_RUNDIR: &str = "/var/run/openvswitch";
/// The client's namespace inside the mobile VM.
const GUEST_CLIENT_NETNS: &str = "mvm-cli";
const CLIENT_PROGRESS: &str = "/run/mose-client.progress";
const CLIENT_STOP: &str = "/run/mose-client.stop";
const CLIENT_TIMELINE: &str = "/var/tmp/mose-client-timeline.json";

fn guest_overlay() -> mose_overlay::HostOverlay {
    mose_overlay::HostOverlay::new(GUEST_OVSDB, GUEST_OVS_RUNDIR, crate::fourhost::BRIDGE)
}

/// In the mobile VM: the client namespace on br0 (the deployment steers the service).
async fn guest_mobile() -> anyhow::Result<()> {
    let ov = guest_overlay();
    ov.ensure_bridge().await?;
    let path =
        crate::fourhost::attach_client(&ov, GUEST_CLIENT_NETNS, "cli", crate::fourhost::CLIENT_IP)
            .await?;
    println!("{}", path.display());
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct ClientProgress {
    replies: u64,
    now_ms: f64,
    stopped: bool,
}

/// In the mobile VM: the live client of the emulated testbed, driven through files.
async fn guest_client(out: &Path) -> anyhow::Result<()> {
    use crate::fourhost::{SERVICE_IP, SERVICE_PORT};
    let _ = std::fs::remove_file(CLIENT_STOP);
    let netns = mose_overlay::netns::netns_path(
        Path::new(mose_overlay::netns::NETNS_DIR),
        GUEST_CLIENT_NETNS,
    );
    let to = std::net::SocketAddr::from((SERVICE_IP, SERVICE_PORT));
    let client = crate::client::LiveClient::start(&netns, to, Duration::from_secs(60)).await?;
    loop {
        let p = ClientProgress {
            replies: client.replies(),
            now_ms: client.now_ms(),
            stopped: client.has_stopped(),
        };
        std::fs::write(format!("{CLIENT_PROGRESS}.new"), serde_json::to_vec(&p)?)?;
        std::fs::rename(format!("{CLIENT_PROGRESS}.new"), CLIENT_PROGRESS)?;
        if Path::new(CLIENT_STOP).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let timeline = client.finish();
    std::fs::write(out, serde_json::to_vec(&timeline)?)?;
    Ok(())
}

async fn client_progress(mobile: &VmInfo) -> anyhow::Result<ClientProgress> {
    let text = ssh(
        mobile,
        &format!("cat {CLIENT_PROGRESS}"),
        Duration::from_secs(30),
    )
    .await?;
    Ok(serde_json::from_str(text.trim())?)
}

/// Until the client has `n` more replies than `from` (its connection still up).
async fn served_again(
    mobile: &VmInfo,
    from: u64,
    n: u64,
    within: Duration,
) -> anyhow::Result<ClientProgress> {
    let t = Instant::now();
    loop {
        let p = client_progress(mobile).await?;
        if p.stopped {
            bail!(
                "the client stopped (connection lost) after {} replies",
                p.replies
            );
        }
        if p.replies >= from + n {
            return Ok(p);
        }
        if t.elapsed() > within {
            bail!(
                "the client got {} replies, not {} more than {from}, within {} s",
                p.replies,
                n,
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The line the calibration script ends with, followed by calibrate's exit status.
const CALIBRATE_STATUS: &str = "calibrate exit status ";

/// What `vm demo` calibrates: the demo's state size within the sizes, its dirty rate within
/// the rates, three runs each (their medians: under TCG on shared cores single runs vary 2×).
const CALIBRATION_ARGS: &str = "--sizes-mib 4,16,32 --rates-mib-per-s 0,2 --repeats 3";

/// Calibrates both edge VMs at once (`mose-agent calibrate`, stored where their agents look),
/// then restarts their agents so their profiles carry the fitted parameters. A refused fit
/// leaves that host uncalibrated, which the designer states in its plan: the demo goes on.
async fn calibrate_edges(st: &VmState) -> anyhow::Result<()> {
    let t = Instant::now();
    println!("calibrating edge1 and edge2 ({CALIBRATION_ARGS}) ...");
    // The outcome travels on stdout either way (a failed command's stdout is dropped): the
    // fit table, or calibrate's reason for refusing it, then its exit status.
    let script = format!(
        "/usr/local/bin/mose-agent --work-dir {} calibrate {CALIBRATION_ARGS} 2>&1 \
         | grep -v ' INFO ' | tail -n 30; echo \"{CALIBRATE_STATUS}${{PIPESTATUS[0]}}\"; \
         systemctl restart mose-agent",
        crate::fourhost::AGENT_WORK_DIR
    );
    let long = Duration::from_secs(900);
    let (edge1, edge2) = (st.vm("edge1")?, st.vm("edge2")?);
    let (r1, r2) = tokio::join!(ssh(edge1, &script, long), ssh(edge2, &script, long));
    for (name, r) in [("edge1", r1), ("edge2", r2)] {
        let out = r.unwrap_or_else(|e| e.to_string());
        let ok = out.lines().any(|l| l == format!("{CALIBRATE_STATUS}0"));
        let text: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with(CALIBRATE_STATUS))
            .collect();
        let what = match ok {
            true => "calibrated",
            false => "NOT calibrated (PAM uses the paper's defaults for it)",
        };
        println!("{name} {what}:\n{}", indent(&text.join("\n")));
    }
    wait_for_agents(st).await?;
    println!(
        "calibration done in {:.0} s; agents back with their profiles",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The counter's memory in the demo: state it holds and how fast it dirties it.
#[derive(Debug, Clone, Copy)]
struct DemoWorkload {
    state_mib: u32,
    dirty_mib_per_s: f64,
}

/// The demo on running VMs: counter on edge1 (its service namespace on br0), the mobile flow
/// toward edge1, the live client on mobile; migrations edge1 -> edge2 (objective resources:
/// the designer picks cold) and edge2 -> edge1 (objective downtime with a loose θ_mig: the
/// designer picks iterative pre-copy on hosts with dirty tracking), each through the API;
/// target/testbed/vm-report.json and vm-client-timeline.json. The second migration is planned
/// with the bandwidth the first one's transfer achieved between the same two VMs (the agents
/// estimate no links; the paper's default would be a guess).
/// Bytes per second a finished migration's image transfer achieved (final image over the
/// destination's transfer phase); `None` without both.
fn achieved_bandwidth(task: &mose_api::tasks::TaskRecord) -> Option<BytesPerSec> {
    let bytes = task.measurements.image_bytes? as f64;
    let ms = *task.measurements.phases_ms.get(&Phase::Transfer)?;
    (ms > 0.0 && bytes > 0.0)
        .then(|| BytesPerSec(mose_protocol::units::saturating_u64(bytes * 1e3 / ms)))
}

async fn demo(
    lab: &VmLab,
    target_downtime_ms: f64,
    target_duration_ms: f64,
    workload: DemoWorkload,
) -> anyhow::Result<()> {
    use crate::fourhost::{self as fh, SERVICE, SERVICE_IP, SERVICE_PORT};
    use crate::report::{MigrationReport, Report};
    use mose_api::tasks::TaskStatus;
    use mose_protocol::model::Objective;
    let st = &lab.state;
    let (edge1, mobile) = (st.vm("edge1")?, st.vm("mobile")?);
    let long = Duration::from_secs(180);
    let t = Instant::now();
    // 1. The counter deployed on edge1 through the orchestrator's service API.
    let api = st.api()?;
    let deploy = mose_api::DeployRequest {
        name: SERVICE.into(),
        image: crate::images::COUNTER.reference.into(),
        host: "edge1".into(),
        args: vec![
            "--state-mib".into(),
            workload.state_mib.to_string(),
            "--dirty-mib-per-sec".into(),
            workload.dirty_mib_per_s.to_string(),
        ],
        env: std::collections::BTreeMap::new(),
        volumes: Vec::new(),
        mobiles: Some(vec!["mobile".into()]),
    };
    let record = api.deploy(&deploy).await?;
    if record.network.ip != SERVICE_IP {
        bail!(
            "the orchestrator deployed {SERVICE} at {}, but the guest client expects {SERVICE_IP}",
            record.network.ip
        );
    }
    // 2. The mobile side and the live client.
    ssh(mobile, "/usr/local/bin/mose-testbed vm guest-mobile", long).await?;
    ssh(
        mobile,
        &format!(
            "rm -f {CLIENT_PROGRESS} {CLIENT_TIMELINE}; systemd-run --quiet --unit=mose-client \
         /usr/local/bin/mose-testbed vm guest-client {CLIENT_TIMELINE}"
        ),
        long,
    )
    .await?;
    let t_wait = Instant::now();
    let p0 = loop {
        if let Ok(p) = client_progress(mobile).await {
            if p.replies >= 50 {
                break p;
            }
        }
        if t_wait.elapsed() > Duration::from_secs(120) {
            let log = ssh(
                mobile,
                "journalctl -u mose-client --no-pager | tail -5",
                long,
            )
            .await
            .unwrap_or_default();
            bail!("the client on mobile got no steady replies within 120 s: {log}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "service on edge1, client on mobile served ({} replies) after {:.1} s",
        p0.replies,
        t.elapsed().as_secs_f64()
    );

    // 3. Migrations through the orchestrator's API.
    let state = fh::State {
        prefix: PREFIX.into(),
        api_url: st.api_url.clone(),
        api_tokens: st.api_tokens.clone(),
        hosts: Vec::new(),
        service: SERVICE.into(),
        service_addr: std::net::SocketAddr::from((SERVICE_IP, SERVICE_PORT)),
        client_netns: PathBuf::from("/run/netns").join(GUEST_CLIENT_NETNS),
        client2_netns: None,
        log_dir: vm_dir(),
    };
    let mut done: Vec<(mose_api::tasks::TaskRecord, f64, f64)> = Vec::new();
    let mut failure = None;
    for (from, to, objective) in [
        ("edge1", "edge2", Objective::Resources),
        ("edge2", "edge1", Objective::Downtime),
    ] {
        println!("\n== {from} -> {to} (objective {objective:?})");
        if !done.is_empty() {
            // The new host's profiler needs a baseline sample and a measured one before its
            // dirty rate of the service means anything.
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let measured = done
            .last()
            .and_then(|(task, _, _)| achieved_bandwidth(task));
        if let Some(l) = measured {
            println!(
                "  planned with L = {:.2} MB/s: what the previous migration's transfer achieved",
                l.as_f64() / 1e6
            );
        }
        let targets = crate::demo::Targets {
            downtime_ms: target_downtime_ms,
            duration_ms: target_duration_ms,
            objective,
            bandwidth_bytes_per_s: measured,
        };
        let before = client_progress(mobile).await?;
        let task = match crate::demo::migrate(&state, from, to, targets, &mut |l| println!("  {l}"))
            .await
        {
            Ok(t) => t,
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        };
        let served = served_again(
            mobile,
            client_progress(mobile).await?.replies,
            20,
            Duration::from_secs(90),
        )
        .await;
        let after = client_progress(mobile).await?;
        let status = task.status;
        done.push((task, before.now_ms, after.now_ms));
        if let Err(e) = served {
            failure = Some(e.to_string());
            break;
        }
        if status != TaskStatus::Succeeded {
            failure = Some(format!("{from} -> {to} ended {status}"));
            break;
        }
    }
    // 4. Stop the client, fetch its timeline, write the report.
    ssh(mobile, &format!("touch {CLIENT_STOP}; for i in $(seq 1 60); do [ -s {CLIENT_TIMELINE} ] && break; sleep 1; done; cat {CLIENT_TIMELINE}"), long).await
        .and_then(|raw| {
            let out = crate::out_dir().join("vm-client-timeline.json");
            std::fs::write(&out, &raw).map_err(|e| TestbedError::io(format!("write {}", out.display()), e))?;
            Ok(())
        })?;
    let raw = std::fs::read(crate::out_dir().join("vm-client-timeline.json"))?;
    let timeline: crate::client::Timeline =
        serde_json::from_slice(&raw).context("the client's timeline")?;
    let migrations: Vec<MigrationReport> = done
        .iter()
        .map(|(task, t0, t1)| {
            MigrationReport::from_task(task, "counter-service", timeline.kpis(*t0, *t1))
        })
        .collect();
    // The agents' profile gives CRIU, podman and dirty tracking; the kernel is the guest's
    // (host_info reads this machine's).
    let mut host = crate::demo::host_info(&st.api()?).await?;
    host.kernel = ssh(edge1, "uname -r", long).await?.trim().to_string();
    let report = Report {
        host,
        raw_floor_ms: None,
        migrations,
    };
    // A migration that "succeeded" but lost the client's connection or the service's state
    // is a failed demo.
    for (i, m) in report.migrations.iter().enumerate() {
        if m.ok && !(m.same_connection && m.state_continuous) {
            failure.get_or_insert(format!(
                "migration {} ({} -> {}) kept the connection: {}, the state: {}",
                i + 1,
                m.from,
                m.to,
                m.same_connection,
                m.state_continuous
            ));
        }
    }
    let path = crate::out_dir().join("vm-report.json");
    report.write(&path)?;
    println!("\n{}", report.kpi_table());
    println!("report: {}", path.display());
    match failure {
        Some(f) => bail!("the demo stopped: {f}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_sides_point_at_each_other() {
        for w in 0..WIRES.len() {
            let (a_local, a_remote) = wire_ports(w, 0);
            let (b_local, b_remote) = wire_ports(w, 1);
            assert_eq!((a_local, a_remote), (b_remote, b_local));
            assert_ne!(wire_mac(w, 0), wire_mac(w, 1));
        }
        assert_ne!(wire_ports(0, 0).0, wire_ports(1, 0).0);
    }

    #[test]
    fn names_fit_interface_names_and_the_prefix() {
        for (name, _, _) in VMS {
            let tap = format!("{PREFIX}{name}");
            assert!(tap.len() <= 15, "{tap}");
        }
        assert!(BRIDGE.starts_with(PREFIX));
    }

    #[test]
    fn ready_line_gives_the_guest_uptime() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("edge1.log");
        assert_eq!(ready_line(&log), None, "no log yet");
        std::fs::write(&log, "[ 1.0] booting\n").unwrap();
        assert_eq!(ready_line(&log), None);
        std::fs::write(
            &log,
            "[ 1.0] booting\n[ 44.5] mose-node-setup[405]: mose-node: MOSE-READY role=edge id=edge1 uptime=44.52\r\n",
        )
        .unwrap();
        assert_eq!(ready_line(&log), Some(44.52));
    }

    #[test]
    fn this_process_is_not_taken_for_a_vm() {
        assert!(!is_our_qemu(std::process::id()));
    }
}
