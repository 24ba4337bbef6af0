//! The MOSE paper's four hosts, emulated (docs/testbed.md#the-four-hosts): **edge1** (source
//! edge), **edge2** (destination edge), **mobile** (the client's device) and **ctrl** (the edge
//! controller); with [`Config::second_mobile`] a fifth, **mobile2**, a second device wired to
//! both edges like the first (see [`FourHost::up`] for how its wires stay loop-free).
//!
//! ```text
//!  root namespace: <prefix>br (LAN bridge, no address)   <prefix>api 10.98.N.1/30 ── HTTP API
//!        │ eth0 10.99.0.10   │ eth0 .11           │ eth0 .12            │ eth0 .13   │
//!   ┌────┴──────┐      ┌─────┴─────┐       ┌──────┴──────┐       ┌──────┴──────────┴─┐
//!   │ edge1     │      │ edge2     │       │ mobile      │       │ ctrl   api0 .N.2  │
//!   │ mose-agent│      │ mose-agent│       │ mose-agent  │       │ mose-orchestrator │
//!   │ podman    │      │ podman    │       │ client netns│       └───────────────────┘
//!   │ OvS br0   │      │ OvS br0   │       │ OvS br0     │
//!   └─┬─────────┘      └─┬─────────┘       └┬──────────┬─┘
//!     │to-mobile         │to-mobile   to-edge1│        │to-edge2     (veth wires: a star
//!     └──────────────────┼────────────────────┘        │              around the mobile host)
//!                        └─────────────────────────────┘
//! ```
//!
//! * The LAN (`10.99.0.0/24`) carries the control plane: Zenoh between the agents and the
//!   orchestrator, found by **multicast scouting on each host's eth0** (no endpoints configured),
//!   and the checkpoint images.
//! * The overlay (`10.88.0.0/24`, on the OvS bridges and their wires) carries the service
//!   traffic: the counter service in the namespace `/run/netns/mose-counter` of the host that
//!   runs it (10.88.0.100, MAC derived from it), the client in a namespace on the mobile host
//!   (10.88.0.2). The mobile bridge steers the service's IP/ARP/MAC toward the edge host that
//!   runs it (docs/overlay.md).
//! * The orchestrator's HTTP API listens on a point-to-point veth between the root namespace and
//!   ctrl (`10.98.N.0/30`), so it is reachable from here without giving the root namespace a
//!   foot on the LAN, where scouting happens.
//!
//! Everything is named `<prefix>*` or lives inside the hosts, so [`crate::sweep_stale`] (`down`)
//! removes all of it, also after a crash. [`FourHost`]'s `Drop` tears down what it made when a
//! step fails half-way.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mose_agent::coat::{host_ifname, netns_name, volume_of};
use mose_agent::runtime::{CreateSpec, Netns, Podman};
use mose_api::{AgentView, ApiClient, ClientError, DeployRequest};
use mose_command::Cmd;
use mose_overlay::{connect_wire, EndpointSpec, HostOverlay, MacAddr, Neighbour, ServiceAddr};
use mose_protocol::domain::{Member, MemberRole};
use serde::{Deserialize, Serialize};
use tokio::process::Child;

use crate::error::{Result, TestbedError};
use crate::host::Host;
use crate::images::{BuiltImage, ImageBuilder, COUNTER};
use crate::lan::Lan;

/// Agent ids and host names (the same): source edge, destination edge, mobile device.
pub const EDGE1: &str = "edge1";
/// The destination edge.
pub const EDGE2: &str = "edge2";
/// The mobile device.
pub const MOBILE: &str = "mobile";
/// The second mobile device ([`Config::second_mobile`]).
pub const MOBILE2: &str = "mobile2";
/// The edge controller's host name (short: `<prefix><name>` must fit an interface name).
pub const CONTROLLER: &str = "ctrl";
/// The edge hosts, in the order the demo migrates between them.
pub const EDGES: [&str; 2] = [EDGE1, EDGE2];

/// The stateful service the testbed deploys.
pub const SERVICE: &str = "counter";
/// Its TCP port (the counter image's).
pub const SERVICE_PORT: u16 = 7000;
/// Service address on the overlay (same on every host it runs on).
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 100);
/// The mobile client's address on the overlay.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
/// The second mobile's client address ([`Config::second_mobile`]).
pub const CLIENT2_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 3);
/// Prefix length of the overlay subnet.
pub const OVERLAY_PREFIX_LEN: u8 = 24;
/// Every host's OvS bridge (the agents' default `--ovs-bridge`).
pub const BRIDGE: &str = "br0";
/// Port of the orchestrator's HTTP API.
pub const API_PORT: u16 = 7070;
/// Name of the client's namespace (under `/run/netns`), after the prefix: swept with it.
const CLIENT_NETNS_SUFFIX: &str = "cli";
/// The second mobile's client namespace, after the prefix.
const CLIENT2_NETNS_SUFFIX: &str = "cli2";
/// The agents' work directory (checkpoint archives), inside each host's private `/var/tmp`.
pub const AGENT_WORK_DIR: &str = "/var/tmp/mose-agent";
/// The orchestrator's member id in the testbed's domain.
pub const ORCHESTRATOR_ID: &str = "orchestrator";
/// The operator identity the testbed's own Zenoh RPC calls use.
pub const OPERATOR: &str = "testbed";
/// How long the testbed's certificates are valid: a testbed left up for a month needs a new `up`.
const PKI_DAYS: u32 = 30;
/// Inside ctrl, the API link's end.
const API_IFNAME: &str = "api0";
/// How long agents may take to be listed with their profiles (capability probes run at start).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// The port toward another host's bridge: on a mobile bridge toward an edge (the agent's
/// `--flow-port <edge>=to-<edge>`), on an edge bridge toward a mobile.
pub fn port_toward(host: &str) -> String {
    format!("to-{host}")
}
/// How long `up` retries a deployment the agents cannot take yet.
const DEPLOY_RETRY: Duration = Duration::from_secs(10);

/// A MAC derived from an overlay address (the same rule as the LAN's, `02:00:<ip>`).
pub fn overlay_mac(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([2, 0, o[0], o[1], o[2], o[3]])
}

/// The binaries the testbed runs inside its hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binaries {
    /// `mose-agent`.
    pub agent: PathBuf,
    /// `mose-orchestrator`.
    pub orchestrator: PathBuf,
    /// `mose-testbed` itself: runs the service-placement helper inside edge1.
    pub testbed: PathBuf,
}

impl Binaries {
    /// `mose-agent` and `mose-orchestrator` in `dir` (a cargo profile directory such as
    /// `target/release`), with `testbed` as the helper. Fails naming what is missing.
    pub fn in_dir(dir: &Path, testbed: PathBuf) -> Result<Self> {
        let b = Binaries {
            agent: dir.join("mose-agent"),
            orchestrator: dir.join("mose-orchestrator"),
            testbed,
        };
        for p in [&b.agent, &b.orchestrator, &b.testbed] {
            if !p.is_file() {
                return Err(TestbedError::State(format!(
                    "{} is missing: build it with `cargo build -p mose-agent -p mose-orchestrator` \
                     (same profile as mose-testbed)",
                    p.display()
                )));
            }
        }
        Ok(b)
    }

    /// `cargo build -p mose-agent -p mose-orchestrator` into the cargo profile directory
    /// `profile_dir` (`<target>/debug` or `<target>/release`, the profile follows the name), run
    /// from `workspace`. Cargo does nothing when they are up to date; a lock wait behind another
    /// build is normal.
    pub async fn build(workspace: &Path, profile_dir: &Path) -> Result<()> {
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let target = profile_dir.parent().ok_or_else(|| {
            TestbedError::Invalid(format!("{} has no parent", profile_dir.display()))
        })?;
        let mut c = Cmd::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(workspace)
            .args(["build", "-p", "mose-agent", "-p", "mose-orchestrator"])
            .env("CARGO_TARGET_DIR", target);
        match profile {
            "release" => c = c.arg("--release"),
            "debug" => {}
            other => {
                return Err(TestbedError::Invalid(format!(
                    "cannot tell the cargo profile of {} (`{other}`); build mose-agent and \
                     mose-orchestrator yourself and pass --no-build",
                    profile_dir.display()
                )))
            }
        }
        // Progress on the terminal: a first build of zenoh takes minutes.
        c.no_deadline().run_inherited().await?;
        Ok(())
    }
}

/// What a four-host testbed is made of.
#[derive(Debug, Clone)]
pub struct Config {
    /// Name prefix of everything made (`mtb-` for the CLI); ≤ 10 characters of [a-z0-9-].
    pub prefix: String,
    /// The binaries to run in the hosts.
    pub binaries: Binaries,
    /// `target/testbed`: `state.json`, `logs/`, the report and the plot.
    pub out_dir: PathBuf,
    /// N of the API link `10.98.N.0/30` (differs between testbeds that run at the same time).
    pub api_net: u8,
    /// Zenoh lease of agents and orchestrator (how fast a vanished host is noticed).
    pub lease_ms: u64,
    /// Add **mobile2** (agent, bridge wired to both edges, client namespace at
    /// [`CLIENT2_IP`]): services with clients on two devices.
    pub second_mobile: bool,
}

impl Config {
    /// The API link: (root side, ctrl side) addresses.
    fn api_addrs(&self) -> (Ipv4Addr, Ipv4Addr) {
        (
            Ipv4Addr::new(10, 98, self.api_net, 1),
            Ipv4Addr::new(10, 98, self.api_net, 2),
        )
    }
    /// The root-namespace end of the API link (named with the prefix: the sweep removes it).
    fn api_link(&self) -> String {
        format!("{}api", self.prefix)
    }
    /// Where the testbed's state is saved.
    pub fn state_file(&self) -> PathBuf {
        self.out_dir.join("state.json")
    }
    /// Where the hosts' daemons log.
    pub fn log_dir(&self) -> PathBuf {
        self.out_dir.join("logs")
    }
    /// The run's domain: `ca/` and one TLS directory per member, `<role>-<id>/`.
    pub fn pki_dir(&self) -> PathBuf {
        self.out_dir.join("pki")
    }
    /// The TLS directory of member `role:id` (see [`Config::pki_dir`]).
    pub fn tls_dir(&self, role: MemberRole, id: &str) -> Result<PathBuf> {
        Ok(mose_pki::member_dir(
            &self.pki_dir(),
            &Member::new(role, id)?,
        ))
    }
}

/// One host as `state.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// Short name (`edge1`).
    pub name: String,
    /// Name with the prefix (its namespaces and links).
    pub full_name: String,
    /// Its address on the LAN.
    pub lan_addr: Ipv4Addr,
    /// What runs there: `edge`, `mobile` or `controller`.
    pub role: String,
    /// The podman API socket as seen from the root namespace (edge hosts).
    pub podman_socket: Option<PathBuf>,
}

/// What later commands (`status`, `down`, the demo) need to know about a running testbed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Name prefix of everything made.
    pub prefix: String,
    /// `http://10.98.N.2:7070`, reachable from the root namespace.
    pub api_url: String,
    /// The API's tokens file (the orchestrator's `--api-tokens`; `mose --token-file` reads it).
    pub api_tokens: PathBuf,
    /// Every host.
    pub hosts: Vec<HostState>,
    /// The service placed on edge1.
    pub service: String,
    /// The service's address and port, as the client dials it.
    pub service_addr: SocketAddr,
    /// The client's namespace on the mobile host (`/run/netns/<prefix>cli`).
    pub client_netns: PathBuf,
    /// The client's namespace on mobile2 (`/run/netns/<prefix>cli2`), if it is up.
    #[serde(default)]
    pub client2_netns: Option<PathBuf>,
    /// The daemons' log directory.
    pub log_dir: PathBuf,
}

impl State {
    /// Read `state.json` (written by `up`).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            TestbedError::io(
                format!(
                    "read {} (is the testbed up? `mose-testbed up`)",
                    path.display()
                ),
                e,
            )
        })?;
        serde_json::from_str(&text).map_err(|e| TestbedError::Parse {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
    }

    fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| TestbedError::State(format!("encode the testbed state: {e}")))?;
        std::fs::write(path, json)
            .map_err(|e| TestbedError::io(format!("write {}", path.display()), e))
    }

    /// A client of the testbed's orchestrator API, with the testbed's token.
    pub fn api(&self) -> Result<ApiClient> {
        crate::api_client(&self.api_url, &self.api_tokens)
    }

    /// The edge host the service runs on now, asked from the hosts' podman (not remembered):
    /// `None` if it runs nowhere.
    pub async fn service_location(&self) -> Result<Option<String>> {
        for h in &self.hosts {
            let Some(sock) = &h.podman_socket else {
                continue;
            };
            let podman = Podman::new(sock.clone())
                .map_err(|e| TestbedError::State(format!("podman client for {}: {e}", h.name)))?;
            let running = match podman.exists(&self.service).await {
                Ok(true) => podman
                    .inspect(&self.service)
                    .await
                    .map(|i| i.state.running)
                    .unwrap_or(false),
                Ok(false) => false,
                Err(e) => {
                    return Err(TestbedError::State(format!(
                        "ask podman on {} about {}: {e}",
                        h.name, self.service
                    )))
                }
            };
            if running {
                return Ok(Some(h.name.clone()));
            }
        }
        Ok(None)
    }

    /// The `status` text: hosts, agents (from the API), where the service runs.
    pub async fn status(&self) -> String {
        let mut out = String::from("hosts:\n");
        for h in &self.hosts {
            let up = Path::new(crate::host::RUN_BASE).join(&h.full_name).is_dir();
            out.push_str(&format!(
                "  {:<8} {:<11} {:<15} {}\n",
                h.name,
                h.role,
                h.lan_addr,
                if up { "up" } else { "GONE" }
            ));
        }
        out.push_str(&format!("\nagents ({}):\n", self.api_url));
        let agents = match self.api() {
            Ok(api) => api.agents().await.map_err(TestbedError::from),
            Err(e) => Err(e),
        };
        match agents {
            Ok(agents) => out.push_str(&mose_api::format::agents_table(&agents)),
            Err(e) => out.push_str(&format!("  {e}\n")),
        }
        out.push_str(&format!(
            "\nservice {} at {} (client namespace {}): ",
            self.service,
            self.service_addr,
            self.client_netns.display()
        ));
        match self.service_location().await {
            Ok(Some(h)) => out.push_str(&format!("running on {h}\n")),
            Ok(None) => out.push_str("not running on any edge host\n"),
            Err(e) => out.push_str(&format!("unknown: {e}\n")),
        }
        out
    }
}

/// What the service-placement helper does inside an edge host (`mose-testbed place-endpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The service namespace's name.
    pub netns: String,
    /// The host-side veth, attached to the bridge.
    pub host_ifname: String,
    /// The service's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The service's MAC.
    pub mac: [u8; 6],
    /// The client, pre-loaded as a neighbour (COAT: no ARP wait after a restore).
    pub client_ip: Ipv4Addr,
    /// The client's MAC.
    pub client_mac: [u8; 6],
    /// The edge's OVSDB socket.
    pub ovsdb_socket: PathBuf,
    /// The edge's OvS run directory.
    pub ovs_rundir: PathBuf,
    /// The edge's bridge.
    pub bridge: String,
}

impl Placement {
    /// The testbed's service (its fixed overlay address and MAC, the client as neighbour) on the
    /// OvS whose database socket and run directory are given.
    pub fn of_service(ovsdb_socket: PathBuf, ovs_rundir: PathBuf) -> Self {
        Placement {
            netns: netns_name(SERVICE),
            host_ifname: host_ifname(SERVICE),
            ip: SERVICE_IP,
            prefix_len: OVERLAY_PREFIX_LEN,
            mac: overlay_mac(SERVICE_IP).0,
            client_ip: CLIENT_IP,
            client_mac: overlay_mac(CLIENT_IP).0,
            ovsdb_socket,
            ovs_rundir,
            bridge: BRIDGE.into(),
        }
    }

    /// Run inside the host (its network **and mount** namespace, so the service's namespace is
    /// made at the host's own `/run/netns/<netns>`, the path podman and the agents use there):
    /// the endpoint with its fixed IP/MAC on the bridge, and the flows for it on the local
    /// bridge, as the agent's Prepare does on a destination. Returns the OpenFlow port.
    pub async fn apply_here(&self) -> Result<u32> {
        let overlay = HostOverlay::new(&self.ovsdb_socket, &self.ovs_rundir, &self.bridge);
        let mut spec = EndpointSpec::new(
            &self.netns,
            &self.host_ifname,
            self.ip,
            self.prefix_len,
            MacAddr(self.mac),
        );
        spec.neighbours.push(Neighbour {
            ip: self.client_ip,
            mac: MacAddr(self.client_mac),
        });
        let attached = overlay.add_endpoint(&spec).await?;
        overlay
            .steer(
                ServiceAddr {
                    ip: self.ip,
                    mac: MacAddr(self.mac),
                },
                attached.ofport,
            )
            .await?;
        Ok(attached.ofport)
    }
}

/// A running four-host testbed. Dropping it tears everything down (agents and orchestrator
/// first, then the hosts, then the LAN); [`FourHost::persist`] leaves it running instead.
pub struct FourHost {
    cfg: Config,
    state: State,
    /// (what, process) of the agents and the orchestrator.
    processes: Vec<(String, Child)>,
    /// The client namespaces made on the mobile hosts.
    client_netns: Vec<PathBuf>,
    api_link: Option<String>,
    /// Field order = drop order: the hosts before the LAN they hang on.
    hosts: Vec<Host>,
    lan: Option<Lan>,
}

/// Timings of `up`, for the log and the docs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpTimings {
    /// Building and loading the images.
    pub images_ms: u64,
    /// Creating the hosts and their daemons.
    pub hosts_ms: u64,
    /// The LAN, bridges and ports.
    pub wiring_ms: u64,
    /// Until the orchestrator listed every agent with its profile.
    pub discovery_ms: u64,
    /// Placing the service and its client.
    pub service_ms: u64,
}

fn since(t: Instant) -> u64 {
    mose_protocol::units::millis(t.elapsed())
}

impl FourHost {
    /// Bring the four hosts up (see the module docs), wait until the orchestrator lists the three
    /// agents with their profiles, deploy the counter on edge1 with the mobile flow toward it,
    /// and write `state.json`. On failure everything made so far is removed.
    ///
    /// Every mobile is wired to every edge, so with a second mobile the bridges form a loop
    /// (edge1–mobile–edge2–mobile2–edge1) and OvS runs no spanning tree. Only flooding can
    /// circle, so the second mobile's wires to edges other than edge1 do not flood (the
    /// OpenFlow `no-flood` port flag, at both ends): floods follow the tree
    /// mobile2–edge1–mobile–edge2, while steered traffic still takes any wire.
    pub async fn up(cfg: Config) -> Result<(FourHost, UpTimings)> {
        Self::up_with(cfg, Vec::new()).await
    }

    /// [`FourHost::up`] with `orchestrator_args` added to the orchestrator's command line
    /// (e.g. `--config <file>` with short step timeouts for fault injection).
    pub async fn up_with(
        cfg: Config,
        orchestrator_args: Vec<String>,
    ) -> Result<(FourHost, UpTimings)> {
        let mut timings = UpTimings::default();
        crate::host::validate_name("prefix", &cfg.prefix, crate::lan::MAX_PREFIX_LEN)?;
        for dir in [cfg.out_dir.clone(), cfg.log_dir()] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| TestbedError::io(format!("create {}", dir.display()), e))?;
        }
        let t = Instant::now();
        let images = ImageBuilder::default().build_all().await?;
        timings.images_ms = since(t);

        let t = Instant::now();
        let lan = Lan::create(&cfg.prefix).await?;
        let (api_root, api_ctrl) = cfg.api_addrs();
        let mut tb = FourHost {
            state: State {
                prefix: cfg.prefix.clone(),
                api_url: format!("http://{api_ctrl}:{API_PORT}"),
                api_tokens: cfg.pki_dir().join("api-tokens"),
                hosts: Vec::new(),
                service: SERVICE.into(),
                service_addr: SocketAddr::from((SERVICE_IP, SERVICE_PORT)),
                client_netns: mose_overlay::netns::netns_path(
                    Path::new(mose_overlay::netns::NETNS_DIR),
                    &format!("{}{CLIENT_NETNS_SUFFIX}", cfg.prefix),
                ),
                client2_netns: None,
                log_dir: cfg.log_dir(),
            },
            cfg,
            processes: Vec::new(),
            client_netns: Vec::new(),
            api_link: None,
            hosts: Vec::new(),
            lan: None,
        };
        let mut hosts = vec![
            (EDGE1, "edge"),
            (EDGE2, "edge"),
            (MOBILE, "mobile"),
            (CONTROLLER, "controller"),
        ];
        if tb.cfg.second_mobile {
            hosts.push((MOBILE2, "mobile"));
        }
        for (i, (name, role)) in hosts.into_iter().enumerate() {
            let mut h = Host::create(
                name,
                &lan,
                lan.host_addr(u8::try_from(i).unwrap_or(u8::MAX))?,
            )
            .await?;
            let mut podman_socket = None;
            if role != "controller" {
                h.start_ovs().await?;
                overlay_of(&h)?.ensure_bridge().await?;
            }
            if role == "edge" {
                podman_socket = Some(h.start_podman_service().await?);
                for image in &images {
                    h.load_image(image).await?;
                }
            }
            tb.state.hosts.push(HostState {
                name: name.into(),
                full_name: h.full_name().into(),
                lan_addr: h.addr(),
                role: role.into(),
                podman_socket,
            });
            tb.hosts.push(h);
        }
        tb.lan = Some(lan);
        timings.hosts_ms = since(t);

        let t = Instant::now();
        for mobile_name in tb.mobiles() {
            let mobile = overlay_of(tb.host(mobile_name)?)?;
            for edge_name in EDGES {
                let edge = overlay_of(tb.host(edge_name)?)?;
                let (to_edge, to_mobile) = (port_toward(edge_name), port_toward(mobile_name));
                connect_wire(&mobile, &to_edge, &edge, &to_mobile).await?;
                if mobile_name != MOBILE && edge_name != EDGE1 {
                    mobile.set_flooding(&to_edge, false).await?;
                    edge.set_flooding(&to_mobile, false).await?;
                }
            }
        }
        tb.make_api_link(api_root, api_ctrl).await?;
        timings.wiring_ms = since(t);

        let t = Instant::now();
        tb.issue_domain()?;
        tb.start_processes(api_ctrl, orchestrator_args)?;
        tb.wait_for_agents().await?;
        timings.discovery_ms = since(t);

        let t = Instant::now();
        let counter = images
            .iter()
            .find(|i| i.spec == COUNTER)
            .ok_or_else(|| TestbedError::State("the counter image was not built".into()))?;
        tb.deploy_service(counter).await?;
        timings.service_ms = since(t);
        tb.state.save(&tb.cfg.state_file())?;
        Ok((tb, timings))
    }

    /// What `state.json` records.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The LAN the hosts hang on (e.g. to shape a host's link).
    pub fn lan(&self) -> Result<&Lan> {
        self.lan
            .as_ref()
            .ok_or_else(|| TestbedError::State("the testbed's LAN is gone".into()))
    }

    /// The mobile hosts: [`MOBILE`], and [`MOBILE2`] with [`Config::second_mobile`].
    pub fn mobiles(&self) -> Vec<&'static str> {
        if self.cfg.second_mobile {
            vec![MOBILE, MOBILE2]
        } else {
            vec![MOBILE]
        }
    }

    /// Every agent's id: the edges, then the mobiles.
    fn agent_ids(&self) -> Vec<&'static str> {
        EDGES.into_iter().chain(self.mobiles()).collect()
    }

    /// One host by short name.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name() == name)
            .ok_or_else(|| TestbedError::Invalid(format!("no host `{name}` in the testbed")))
    }

    /// A veth between the root namespace and ctrl, addressed as a /30: the HTTP API's path.
    async fn make_api_link(&mut self, root: Ipv4Addr, ctrl: Ipv4Addr) -> Result<()> {
        let link = self.cfg.api_link();
        let ctrl_host = self.host(CONTROLLER)?;
        let netns = ctrl_host.netns_path().to_string_lossy().into_owned();
        mose_command::run(
            "ip",
            [
                "link", "add", &link, "type", "veth", "peer", "name", API_IFNAME, "netns", &netns,
            ],
        )
        .await?;
        self.api_link = Some(link.clone());
        crate::lan::disable_ipv6(&link);
        mose_command::run("ip", ["addr", "add", &format!("{root}/30"), "dev", &link]).await?;
        mose_command::run("ip", ["link", "set", &link, "up"]).await?;
        let ctrl_host = self.host(CONTROLLER)?;
        ctrl_host
            .run(
                "ip",
                ["addr", "add", &format!("{ctrl}/30"), "dev", API_IFNAME],
            )
            .await?;
        ctrl_host
            .run("ip", ["link", "set", API_IFNAME, "up"])
            .await?;
        Ok(())
    }

    /// Spawn `program args` inside `host`, its output to `<logs>/<host>-<what>.log` (appended
    /// to with `append`, as a restarted process's log, else started afresh).
    fn spawn_in(
        &mut self,
        host: &str,
        what: &str,
        program: &Path,
        args: &[String],
        append: bool,
    ) -> Result<()> {
        let log_path = self.cfg.log_dir().join(format!("{host}-{what}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log_path)
            .map_err(|e| TestbedError::io(format!("open {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| TestbedError::io("duplicate log file handle", e))?;
        let mut c = self.host(host)?.command(program);
        c.args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,zenoh=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = c
            .spawn()
            .map_err(|e| TestbedError::io(format!("start {} in {host}", program.display()), e))?;
        tracing::info!(host, what, log = %log_path.display(), "started");
        self.processes.push((format!("{what} on {host}"), child));
        Ok(())
    }

    /// A new domain CA for this run and a certificate for every member: the orchestrator,
    /// each agent, and [`OPERATOR`] (what the tests call the orchestrator's RPC as).
    fn issue_domain(&self) -> Result<()> {
        let dir = self.cfg.pki_dir();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(TestbedError::io(format!("remove {}", dir.display()), e)),
        }
        let mut members = vec![Member::new(MemberRole::Orchestrator, ORCHESTRATOR_ID)?];
        for id in self.agent_ids() {
            members.push(Member::new(self.agent_role(id), id)?);
        }
        members.push(Member::new(MemberRole::Operator, OPERATOR)?);
        let name = format!("MOSE testbed {}", self.cfg.prefix);
        mose_pki::issue_domain(&dir, &name, &members, PKI_DAYS)?;
        crate::api_tokens_file(&dir)?;
        Ok(())
    }

    /// Mutual TLS as member `role:id`; scouting only on the LAN interface of each host (never
    /// in the root namespace).
    fn zenoh_args(&self, role: MemberRole, id: &str) -> Result<Vec<String>> {
        Ok(vec![
            "--tls-dir".into(),
            self.cfg.tls_dir(role, id)?.to_string_lossy().into_owned(),
            "--multicast-interface".into(),
            "eth0".into(),
            "--lease-ms".into(),
            self.cfg.lease_ms.to_string(),
        ])
    }

    fn agent_role(&self, id: &str) -> MemberRole {
        if self.mobiles().contains(&id) {
            MemberRole::Mobile
        } else {
            MemberRole::Edge
        }
    }

    fn start_processes(&mut self, api_ctrl: Ipv4Addr, extra: Vec<String>) -> Result<()> {
        let mut args: Vec<String> = vec![
            "--http".into(),
            format!("{api_ctrl}:{API_PORT}"),
            // /var/tmp is private to each emulated host (/var/lib is shared with the machine).
            "--state-dir".into(),
            "/var/tmp/mose-orchestrator".into(),
            "--api-tokens".into(),
            self.state.api_tokens.to_string_lossy().into_owned(),
        ];
        args.extend(self.zenoh_args(MemberRole::Orchestrator, ORCHESTRATOR_ID)?);
        args.extend(extra);
        let orchestrator = self.cfg.binaries.orchestrator.clone();
        self.spawn_in(CONTROLLER, "orchestrator", &orchestrator, &args, false)?;
        for id in self.agent_ids() {
            self.spawn_agent(id, false)?;
        }
        Ok(())
    }

    /// Start the agent of `id` (an edge host or the mobile host) inside its host.
    fn spawn_agent(&mut self, id: &str, append_log: bool) -> Result<()> {
        let member_role = self.agent_role(id);
        let role = member_role.to_string();
        let ovs = self
            .host(id)?
            .ovs()
            .ok_or_else(|| TestbedError::State(format!("OvS of {id} is not running")))?;
        let mut args: Vec<String> = vec![
            "--id".into(),
            id.into(),
            "--role".into(),
            role.clone(),
            "--ovs-bridge".into(),
            BRIDGE.into(),
            "--ovsdb-socket".into(),
            ovs.db_socket().to_string_lossy().into_owned(),
            "--ovs-rundir".into(),
            ovs.rundir().to_string_lossy().into_owned(),
            "--work-dir".into(),
            AGENT_WORK_DIR.into(),
        ];
        if member_role == MemberRole::Edge {
            args.extend([
                "--podman-socket".into(),
                crate::host::PODMAN_SOCKET_INSIDE.into(),
            ]);
        } else {
            for edge in EDGES {
                args.extend([
                    "--flow-port".into(),
                    format!("{edge}={}", port_toward(edge)),
                ]);
            }
        }
        args.extend(self.zenoh_args(member_role, id)?);
        let agent = self.cfg.binaries.agent.clone();
        self.spawn_in(id, "agent", &agent, &args, append_log)
    }

    /// Starts `host`'s agent again after [`FourHost::kill_agent`], with the same arguments and
    /// work directory (what a supervisor restarting a crashed agent does); its log is appended
    /// to. It is not waited for: see [`FourHost::wait_for_agents`].
    pub async fn restart_agent(&mut self, host: &str) -> Result<()> {
        let what = format!("agent on {host}");
        if self.processes.iter().any(|(w, _)| *w == what) {
            return Err(TestbedError::State(format!("the {what} is still running")));
        }
        self.spawn_agent(host, true)
    }

    /// SIGSTOP `host`'s agent (fault injection: a hung or descheduled agent; its Zenoh links stay
    /// open until the lease passes, and podman finishes whatever the agent asked of it).
    pub fn pause_agent(&self, host: &str) -> Result<()> {
        self.signal_agent(host, nix::sys::signal::Signal::SIGSTOP)
    }

    /// SIGCONT `host`'s agent after [`FourHost::pause_agent`].
    pub fn continue_agent(&self, host: &str) -> Result<()> {
        self.signal_agent(host, nix::sys::signal::Signal::SIGCONT)
    }

    fn signal_agent(&self, host: &str, signal: nix::sys::signal::Signal) -> Result<()> {
        let what = format!("agent on {host}");
        let pid = self
            .processes
            .iter()
            .find(|(w, _)| *w == what)
            .and_then(|(_, c)| c.id())
            .ok_or_else(|| TestbedError::State(format!("no {what} is running")))?;
        // nsenter execs the agent, so the child's pid is the agent's.
        nix::sys::signal::kill(crate::sys::pid(pid), signal)
            .map_err(|e| TestbedError::io(format!("{signal} the {what}"), e.into()))
    }

    /// What of the service is on `host` (an edge host) that a host not running it must not
    /// keep: the container, its volumes, its namespace, its bridge port/veth, steering flows for
    /// its address, and task directories (checkpoint archives) in the agent's work directory. Empty
    /// when the host is clean.
    pub async fn service_traces(&self, host: &str) -> Result<Vec<String>> {
        self.traces_of(host, SERVICE, SERVICE_IP).await
    }

    /// [`FourHost::service_traces`] of any service `service` at `ip`.
    pub async fn traces_of(&self, host: &str, service: &str, ip: Ipv4Addr) -> Result<Vec<String>> {
        let h = self.host(host)?;
        let mut found = Vec::new();
        let podman = Podman::new(h.podman_socket())
            .map_err(|e| TestbedError::State(format!("podman client for {host}: {e}")))?;
        match podman.exists(service).await {
            Ok(false) => {}
            Ok(true) => found.push(format!("container {service}")),
            Err(e) => found.push(format!("podman on {host} cannot tell: {e}")),
        }
        match podman.volumes().await {
            Ok(all) => found.extend(
                all.into_iter()
                    .filter(|v| volume_of(service, &v.name))
                    .map(|v| format!("volume {}", v.name)),
            ),
            Err(e) => found.push(format!("podman on {host} cannot list volumes: {e}")),
        }
        let netns = Path::new(mose_overlay::netns::NETNS_DIR).join(netns_name(service));
        if h.outside_path(&netns).is_some_and(|p| p.exists()) {
            found.push(format!("namespace {}", netns.display()));
        }
        let ifname = host_ifname(service);
        let links = h.run("ip", ["-o", "link", "show"]).await?;
        if links
            .lines()
            // `7: mv-counter@if6: <...>`: a veth's name carries its peer's index.
            .any(|l| l.split(':').nth(1).and_then(|n| n.trim().split('@').next()) == Some(&ifname))
        {
            found.push(format!("interface {ifname}"));
        }
        let flows = overlay_of(h)?.steering().flows(ip).await?;
        if !flows.is_empty() {
            found.push(format!("flows for {ip}: {flows:?}"));
        }
        if let Some(dir) = h.outside_path(AGENT_WORK_DIR) {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                // Task directories hold checkpoint archives; files (calibration) are the agent's.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push(format!("task files {}", e.path().display()));
                }
            }
        }
        Ok(found)
    }

    /// Kills `host`'s agent without warning (fault injection): no FIN, no withdrawal, the host
    /// and its service stay as they are.
    pub async fn kill_agent(&mut self, host: &str) -> Result<()> {
        let what = format!("agent on {host}");
        let i = self
            .processes
            .iter()
            .position(|(w, _)| *w == what)
            .ok_or_else(|| TestbedError::State(format!("no {what} is running")))?;
        let (_, mut child) = self.processes.remove(i);
        child
            .kill()
            .await
            .map_err(|e| TestbedError::io(format!("kill {what}"), e))
    }

    /// Until `GET /v1/agents` lists every agent (edge1, edge2, the mobiles), each with its
    /// profile (edge agents: with their probed capabilities, see [`profiled`]).
    pub async fn wait_for_agents(&mut self) -> Result<Vec<AgentView>> {
        let api = self.state.api()?;
        let t = Instant::now();
        let mut last;
        loop {
            if let Some((what, status)) = self
                .processes
                .iter_mut()
                .find_map(|(w, c)| c.try_wait().ok().flatten().map(|s| (w.clone(), s)))
            {
                return Err(TestbedError::State(format!(
                    "{what} exited ({status}) during start-up; see {}",
                    self.cfg.log_dir().display()
                )));
            }
            match api.agents().await {
                Ok(agents) => {
                    let ready = self
                        .agent_ids()
                        .iter()
                        .all(|id| agents.iter().any(|a| a.id == *id && profiled(a)));
                    if ready {
                        tracing::info!(ms = since(t), "all agents discovered and profiled");
                        return Ok(agents);
                    }
                    last = format!(
                        "listed: {:?}",
                        agents
                            .iter()
                            .map(|a| format!(
                                "{}{}",
                                a.id,
                                if profiled(a) {
                                    ""
                                } else {
                                    " (not profiled yet)"
                                }
                            ))
                            .collect::<Vec<_>>()
                    );
                }
                Err(e) => last = e.to_string(),
            }
            if t.elapsed() > DISCOVERY_TIMEOUT {
                return Err(TestbedError::Timeout {
                    what: format!(
                        "the orchestrator to list {} with profiles ({last}); logs in {}",
                        self.agent_ids().join(", "),
                        self.cfg.log_dir().display()
                    ),
                    after_ms: mose_protocol::units::millis(DISCOVERY_TIMEOUT),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The counter deployed on edge1 through the orchestrator's service API (its namespace,
    /// flows and container; the first mobile's flow toward it), and the client namespaces on
    /// the mobile hosts.
    async fn deploy_service(&mut self, counter: &BuiltImage) -> Result<()> {
        let request = DeployRequest {
            name: SERVICE.into(),
            image: counter.reference.clone(),
            host: EDGE1.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            volumes: Vec::new(),
            mobiles: Some(vec![MOBILE.into()]),
        };
        let api = self.state.api()?;
        let t = Instant::now();
        let record = loop {
            match api.deploy(&request).await {
                Ok(record) => break record,
                // Right after discovery a first query can find no step queryable yet.
                Err(ClientError::Api { status: 502, .. }) if t.elapsed() < DEPLOY_RETRY => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        // The client's namespace is made for the service's address: a fresh orchestrator
        // hands out the first of its pool, which is that address.
        if record.network.ip != SERVICE_IP {
            return Err(TestbedError::State(format!(
                "the orchestrator deployed {SERVICE} at {}, but the testbed's client expects {SERVICE_IP}",
                record.network.ip
            )));
        }

        let mobile = overlay_of(self.host(MOBILE)?)?;
        let netns = format!("{}{CLIENT_NETNS_SUFFIX}", self.cfg.prefix);
        let path = attach_client(&mobile, &netns, CLIENT_NETNS_SUFFIX, CLIENT_IP).await?;
        self.client_netns.push(path);
        if self.cfg.second_mobile {
            let mobile2 = overlay_of(self.host(MOBILE2)?)?;
            let netns = format!("{}{CLIENT2_NETNS_SUFFIX}", self.cfg.prefix);
            let path = attach_client(&mobile2, &netns, CLIENT2_NETNS_SUFFIX, CLIENT2_IP).await?;
            self.state.client2_netns = Some(path.clone());
            self.client_netns.push(path);
        }
        Ok(())
    }

    /// The service's namespace with its fixed IP/MAC and the client as neighbour on `edge`,
    /// and the flows toward it on `edge`'s bridge (what COAT's Prepare makes on a destination).
    pub async fn place_endpoint(&self, edge: &str) -> Result<u32> {
        let host = self.host(edge)?;
        let ovs = host
            .ovs()
            .ok_or_else(|| TestbedError::State(format!("OvS of {edge} is not running")))?;
        let placement = Placement::of_service(ovs.db_socket(), ovs.rundir().to_path_buf());
        let json = serde_json::to_string(&placement)
            .map_err(|e| TestbedError::State(format!("encode the placement: {e}")))?;
        // In the host's mount namespace: the service namespace must be at its own /run/netns.
        let mut c = host.command(&self.cfg.binaries.testbed);
        c.args(["place-endpoint", &json]);
        let out = Cmd::from(c).stdout().await?;
        out.trim().parse().map_err(|_| {
            TestbedError::State(format!(
                "place-endpoint on {edge} answered `{}`, not an OpenFlow port",
                out.trim()
            ))
        })
    }

    /// Create and start the service on `edge` in its namespace (made by
    /// [`FourHost::place_endpoint`]) from `image`, with `env` (e.g. the counter's `STATE_MIB`).
    pub async fn start_service(
        &self,
        edge: &str,
        image: &str,
        env: BTreeMap<String, String>,
    ) -> Result<()> {
        let host = self.host(edge)?;
        let podman = Podman::new(host.podman_socket())
            .map_err(|e| TestbedError::State(format!("podman client for {edge}: {e}")))?;
        let spec = CreateSpec {
            name: SERVICE.into(),
            image: image.into(),
            env,
            netns: Netns::Path(Path::new("/run/netns").join(netns_name(SERVICE))),
            ulimits: host.limits().container_ulimits(),
            ..CreateSpec::default()
        };
        let podman_err = |what: &str, e: mose_agent::runtime::RuntimeError| {
            TestbedError::State(format!("{what} {SERVICE} on {edge}: {e}"))
        };
        podman
            .create(&spec)
            .await
            .map_err(|e| podman_err("create", e))?;
        podman
            .start(SERVICE)
            .await
            .map_err(|e| podman_err("start", e))
    }

    /// The overlay handle of `host`'s OvS, driven from the root namespace.
    pub fn overlay(&self, host: &str) -> Result<HostOverlay> {
        overlay_of(self.host(host)?)
    }

    /// Leave everything running after this process exits (`mose-testbed up`); `down` removes it.
    pub fn persist(mut self) {
        // Dropping a tokio Child without kill_on_drop leaves the process running.
        self.processes.clear();
        self.client_netns.clear();
        self.api_link = None;
        for h in self.hosts.drain(..) {
            h.persist();
        }
        if let Some(lan) = self.lan.take() {
            lan.persist();
        }
    }

    /// Orderly teardown with errors reported (what `Drop` does, best effort, on failures).
    pub async fn destroy(mut self) -> Result<()> {
        let mut problems = self.stop_root_side();
        for h in self.hosts.drain(..) {
            if let Err(e) = h.destroy().await {
                problems.push(e.to_string());
            }
        }
        if let Some(lan) = self.lan.take() {
            if let Err(e) = lan.destroy().await {
                problems.push(e.to_string());
            }
        }
        let _ = std::fs::remove_file(self.cfg.state_file());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TestbedError::State(format!(
                "teardown left problems: {}",
                problems.join("; ")
            )))
        }
    }

    /// Kill the agents and the orchestrator, delete the client namespace and the API link: what
    /// the hosts' own teardown does not cover (or should not wait for).
    fn stop_root_side(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        for (what, mut c) in self.processes.drain(..) {
            if let Err(e) = c.start_kill() {
                // Already gone is fine: it is what we want.
                if e.kind() != std::io::ErrorKind::InvalidInput {
                    problems.push(format!("stop {what}: {e}"));
                }
            }
        }
        for ns in self.client_netns.drain(..) {
            if let Err(e) = mose_overlay::netns::delete_netns(&ns) {
                problems.push(format!("delete {}: {e}", ns.display()));
            }
        }
        if let Some(link) = self.api_link.take() {
            if crate::sys::link_names().contains(&link) {
                if let Err(e) = Cmd::new("ip")
                    .args(["link", "del", &link])
                    .stdout_blocking()
                {
                    problems.push(e.to_string());
                }
            }
        }
        problems
    }
}

impl Drop for FourHost {
    fn drop(&mut self) {
        let problems = self.stop_root_side();
        if !problems.is_empty() {
            tracing::warn!(
                ?problems,
                "four-host testbed torn down on drop, with problems"
            );
        }
        // The hosts and the LAN follow through their own Drops; state.json would be stale.
        if !self.hosts.is_empty() {
            let _ = std::fs::remove_file(self.cfg.state_file());
        }
    }
}

/// An agent is ready for migrations once its profile carries the result of its capability
/// probe (an edge agent's podman version comes from it). The agent answers steps before the
/// probe ends, but a restore that ran while edge2's probe was still going hung for its whole
/// timeout in one demo run, and the designer would plan without the host's capabilities.
fn profiled(agent: &AgentView) -> bool {
    match &agent.profile {
        Some(p) if p.role == mose_protocol::messages::Role::Edge => p
            .capabilities
            .as_ref()
            .is_some_and(|c| c.podman_version.is_some()),
        Some(_) => true,
        None => false,
    }
}

/// On the mobile host's bridge `mobile`: a client's namespace `netns` at `ip` (MAC derived
/// from it, the counter pre-loaded as its neighbour) attached through the port `ifname`.
/// Steering toward a service is its mobile agent's, installed when the service is deployed.
/// Returns the namespace's path. Shared with the VM testbed.
pub async fn attach_client(
    mobile: &HostOverlay,
    netns: &str,
    ifname: &str,
    ip: Ipv4Addr,
) -> Result<PathBuf> {
    let mut cli = EndpointSpec::new(netns, ifname, ip, OVERLAY_PREFIX_LEN, overlay_mac(ip));
    cli.neighbours.push(Neighbour {
        ip: SERVICE_IP,
        mac: overlay_mac(SERVICE_IP),
    });
    Ok(mobile.add_endpoint(&cli).await?.endpoint.netns_path)
}

/// The overlay handle of a host's OvS, driven from the root namespace.
fn overlay_of(host: &Host) -> Result<HostOverlay> {
    let ovs = host.ovs().ok_or_else(|| {
        TestbedError::State(format!("OvS of {} is not running", host.full_name()))
    })?;
    Ok(HostOverlay::for_instance(ovs, BRIDGE).with_host_netns(host.netns_path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_survives_its_trip_through_the_command_line() {
        let p = Placement::of_service("/x/db.sock".into(), "/x".into());
        let back: Placement = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(p.netns, "mose-counter");
        assert_eq!(p.host_ifname, "mv-counter");
        assert_eq!(p.mac, [2, 0, 10, 88, 0, 100]);
    }

    #[test]
    fn names_fit_interface_names_with_the_cli_prefix() {
        let cfg = Config {
            prefix: crate::DEFAULT_PREFIX.into(),
            binaries: Binaries {
                agent: "a".into(),
                orchestrator: "o".into(),
                testbed: "t".into(),
            },
            out_dir: "/tmp/x".into(),
            api_net: 0,
            lease_ms: 1000,
            second_mobile: true,
        };
        for name in [EDGE1, EDGE2, MOBILE, MOBILE2, CONTROLLER] {
            assert!(cfg.prefix.len() + name.len() <= 15, "{name}");
        }
        assert!(cfg.api_link().len() <= 15);
        assert_eq!(
            cfg.api_addrs(),
            (Ipv4Addr::new(10, 98, 0, 1), Ipv4Addr::new(10, 98, 0, 2))
        );
    }
}
