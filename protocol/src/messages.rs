//! Every message that crosses the wire between agents and the orchestrator.
//!
//! Times on the wire are Unix microseconds (`*_us`) so events from different hosts can be put on
//! one timeline; durations carry their unit in the field name.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::codec::{Message, MessageKind};
use crate::model::{PamParams, Plan};
use crate::units::BytesPerSec;

/// What an agent runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// An edge host next to a base station: runs services, can be a source or destination.
    Edge,
    /// A mobile device (drone, vehicle): runs the client, steers its flow, never hosts services.
    Mobile,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Edge => "edge",
            Role::Mobile => "mobile",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "edge" => Ok(Role::Edge),
            "mobile" => Ok(Role::Mobile),
            other => Err(format!(
                "unknown role '{other}': expected 'edge' or 'mobile'"
            )),
        }
    }
}

/// What the host can do; the orchestrator never plans a strategy a host cannot run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Capabilities {
    /// `podman version` of the host, if podman answered.
    pub podman_version: Option<String>,
    /// The OCI runtime podman uses (`runc`), if known.
    pub runtime: Option<String>,
    /// `criu --version` of the host, if CRIU is installed.
    pub criu_version: Option<String>,
    /// Kernel soft-dirty tracking works, so pre-copy rounds are possible.
    pub dirty_tracking: bool,
    /// CRIU can dump established TCP connections here.
    pub tcp_dump: bool,
    /// CRIU lazy pages (post-copy) work here.
    pub lazy_pages: bool,
    /// Memory page size in bytes.
    pub page_size: u32,
    /// 1 or 2; 0 when unknown.
    pub cgroup_version: u8,
    /// Open vSwitch is reachable for flow steering.
    pub ovs: bool,
}

/// Who an agent is and what its host can do. Served by the agent's profile queryable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentProfile {
    /// The agent's id, unique in the key space.
    pub id: String,
    /// Edge host or mobile device.
    pub role: Role,
    /// The host's name, for operators.
    pub hostname: String,
    /// The agent binary's version.
    pub agent_version: String,
    /// When the agent started, Unix microseconds.
    pub started_us: u64,
    /// What the host can do; `None` until the agent's capability probe has run (it takes
    /// seconds of real CRIU dumps, and "not probed yet" must not read as "cannot").
    pub capabilities: Option<Capabilities>,
    /// Calibrated model parameters of this host, once calibration has run.
    pub pam: Option<PamParams>,
    /// How the agent's links are secured.
    pub security: LinkSecurity,
}

/// How a node's Zenoh links are secured (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum LinkSecurity {
    /// Plaintext and no access control (`--insecure`).
    Insecure,
    /// Mutual TLS with the domain's certificates and its access control.
    MutualTls {
        /// The node's certificate name, `{role}:{id}`.
        common_name: String,
        /// When the node's certificate expires, Unix seconds.
        not_after_unix_s: i64,
    },
}

/// Host-wide load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostMetrics {
    /// CPU busy over the last sample interval, in percent of the whole host.
    pub cpu_percent: f32,
    /// Online CPUs.
    pub cpus: u32,
    /// 1, 5 and 15 minute load averages.
    pub load_avg: [f32; 3],
    /// Physical memory.
    pub mem_total_bytes: u64,
    /// Memory in use (total minus available).
    pub mem_used_bytes: u64,
}

/// How a dirty rate was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DirtyMethod {
    /// Kernel soft-dirty bits: pages really written.
    SoftDirty,
    /// Accessed bits (clear_refs 1 + Referenced): pages touched, an upper bound on pages written.
    AccessedBit,
}

/// One container's migration-relevant state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerMetrics {
    /// The container's (service's) name.
    pub name: String,
    /// M: anonymous memory of the container's processes.
    pub state_bytes: u64,
    /// R: estimated bytes dirtied per second, if measured.
    pub dirty_rate_bytes_per_s: Option<BytesPerSec>,
    /// How the dirty rate was measured, if it was.
    pub dirty_method: Option<DirtyMethod>,
}

/// An estimate of the bandwidth towards a peer agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LinkEstimate {
    /// The peer agent's id.
    pub peer: String,
    /// Estimated bandwidth from this agent to the peer.
    pub bandwidth_bytes_per_s: BytesPerSec,
}

/// Periodic sample published by every agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetricsSample {
    /// The publishing agent.
    pub agent: String,
    /// Sequence number, increasing per agent.
    pub seq: u64,
    /// When the sample was taken, Unix microseconds.
    pub taken_us: u64,
    /// Host-wide load.
    pub host: HostMetrics,
    /// One entry per service container on the host.
    pub containers: Vec<ContainerMetrics>,
    /// Bandwidth estimates towards peer agents.
    pub links: Vec<LinkEstimate>,
}

/// The network identity a service keeps wherever it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceNetwork {
    /// The service's address, the same on every host.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub ip: Ipv4Addr,
    /// Prefix length of the service subnet.
    pub prefix_len: u8,
    /// The service's MAC, kept so the client's neighbour entry stays valid.
    pub mac: [u8; 6],
    /// The on-link peers the service talks to (its clients), with their MACs: the
    /// destination pre-loads each as a neighbour, so no reply waits for ARP after a restore.
    pub clients: Vec<Peer>,
}

/// A host on the service's subnet: its address and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Peer {
    /// The peer's IPv4 address.
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: [u8; 6],
}

impl ServiceNetwork {
    /// The identity a service is deployed with: no clients known yet.
    pub fn new(ip: Ipv4Addr, prefix_len: u8) -> Self {
        ServiceNetwork {
            ip,
            prefix_len,
            mac: overlay_mac(ip),
            clients: Vec::new(),
        }
    }
}

/// The MAC of an overlay address: locally administered `02:00:<the four address bytes>`, so
/// two services never share one while their addresses differ, and a MAC names its address.
pub fn overlay_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [2, 0, o[0], o[1], o[2], o[3]]
}

/// What a destination needs to recreate a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceSpec {
    /// The service (and container) name.
    pub name: String,
    /// The container image the service runs (its reference: `localhost/mose/redis:latest`).
    pub image: String,
    /// That image's ID where the service runs (as its podman reports it), once a host has
    /// described it:
    /// a destination looks for the image by this ID, so another image under the same name is
    /// not taken for it. `None` before the service runs anywhere (a deployment names the
    /// image by reference only).
    #[serde(default)]
    pub image_id: Option<String>,
    /// Its network identity.
    pub network: ServiceNetwork,
}

/// A migration task as published on `tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The task's id, unique per orchestrator.
    pub id: String,
    /// The service being migrated.
    pub service: String,
    /// The agent the service runs on now.
    pub source: String,
    /// The agent it moves to.
    pub destination: String,
    /// The mobile agents whose client flows follow the service.
    pub mobiles: Vec<String>,
    /// The plan the migration follows.
    pub plan: Plan,
    /// When the task was submitted, Unix microseconds.
    pub created_us: u64,
}

/// CRIU statistics of a dump or restore, in microseconds and pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CriuStats {
    /// CRIU's time to freeze the process tree.
    pub freezing_time_us: Option<u64>,
    /// How long the tree stayed frozen during the dump.
    pub frozen_time_us: Option<u64>,
    /// Time to collect memory pages.
    pub memdump_time_us: Option<u64>,
    /// Time to write the pages to the image.
    pub memwrite_time_us: Option<u64>,
    /// Pages written to the image.
    pub pages_written: Option<u64>,
    /// CRIU's restore time.
    pub restore_time_us: Option<u64>,
}

/// A migration phase, as in MOSE's downtime breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Phase {
    /// Destination readiness before the freeze (its namespace is [`Phase::Netns`]).
    Prepare,
    /// Moving the service's container image to a destination that lacks it, before the
    /// freeze.
    Image,
    /// Pre-copy rounds and their fetches, the service running.
    PreCopy,
    /// The final dump.
    Checkpoint,
    /// Moving the final image (inside the restore step).
    Transfer,
    /// The destination's service namespace (inside the prepare step).
    Netns,
    /// The restore, including its transfer.
    Restore,
    /// Steering the client's flow.
    FlowSwitch,
    /// Releasing the source.
    Cleanup,
    /// Undoing a migration that did not pass its point of no return.
    Rollback,
}

impl Phase {
    /// Every phase, in the order of a migration.
    pub const ALL: &'static [Phase] = &[
        Phase::Prepare,
        Phase::Image,
        Phase::PreCopy,
        Phase::Checkpoint,
        Phase::Transfer,
        Phase::Netns,
        Phase::Restore,
        Phase::FlowSwitch,
        Phase::Cleanup,
        Phase::Rollback,
    ];

    /// The phase's name in reports, events and the API (its serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Image => "image",
            Phase::PreCopy => "pre_copy",
            Phase::Checkpoint => "checkpoint",
            Phase::Transfer => "transfer",
            Phase::Netns => "netns",
            Phase::Restore => "restore",
            Phase::FlowSwitch => "flow_switch",
            Phase::Cleanup => "cleanup",
            Phase::Rollback => "rollback",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a phase went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum PhaseStatus {
    /// The phase began.
    Started,
    /// The phase ended successfully.
    Finished,
    /// The phase failed.
    Failed {
        /// Why, in one sentence.
        error: String,
    },
}

/// A phase start/end on `tasks/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseEvent {
    /// The task the phase belongs to.
    pub task: String,
    /// The agent (or the orchestrator) that ran it.
    pub agent: String,
    /// Which phase.
    pub phase: Phase,
    /// Started, finished or failed.
    pub status: PhaseStatus,
    /// When it happened, Unix microseconds.
    pub at_us: u64,
}

macro_rules! impl_message {
    ($($ty:ident),*) => { $(impl Message for $ty { const KIND: MessageKind = MessageKind::$ty; })* };
}
impl_message!(AgentProfile, MetricsSample, Task, PhaseEvent);

/// Microseconds since the Unix epoch, for `*_us` fields.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(crate::units::micros)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode, CodecError, PROTOCOL_VERSION};
    use crate::model::{Objective, Strategy};
    use proptest::prelude::*;

    fn profile() -> AgentProfile {
        AgentProfile {
            security: LinkSecurity::MutualTls {
                common_name: "edge:edge1".into(),
                not_after_unix_s: 1_900_000_000,
            },
            id: "edge1".into(),
            role: Role::Edge,
            hostname: "edge1".into(),
            agent_version: "0.1.0".into(),
            started_us: 1,
            capabilities: Some(Capabilities {
                podman_version: Some("4.3.1".into()),
                runtime: Some("runc".into()),
                criu_version: Some("4.2.1".into()),
                dirty_tracking: false,
                tcp_dump: true,
                lazy_pages: false,
                page_size: 4096,
                cgroup_version: 2,
                ovs: true,
            }),
            pam: None,
        }
    }

    fn metrics() -> MetricsSample {
        MetricsSample {
            agent: "edge1".into(),
            seq: 7,
            taken_us: 123,
            host: HostMetrics {
                cpu_percent: 12.5,
                cpus: 2,
                load_avg: [0.1, 0.2, 0.3],
                mem_total_bytes: 1 << 34,
                mem_used_bytes: 1 << 30,
            },
            containers: vec![ContainerMetrics {
                name: "counter".into(),
                state_bytes: 10 << 20,
                dirty_rate_bytes_per_s: Some(BytesPerSec(1 << 20)),
                dirty_method: Some(DirtyMethod::AccessedBit),
            }],
            links: vec![LinkEstimate {
                peer: "edge2".into(),
                bandwidth_bytes_per_s: BytesPerSec(125_000_000),
            }],
        }
    }

    fn task() -> Task {
        Task {
            id: "t1".into(),
            service: "counter".into(),
            source: "edge1".into(),
            destination: "edge2".into(),
            mobiles: vec!["mobile1".into()],
            plan: Plan {
                strategy: Strategy::Cold,
                objective: Objective::Resources,
                bandwidth_bytes_per_s: BytesPerSec(12_500_000),
                rounds: 0,
                predicted_downtime_s: 0.8,
                predicted_total_s: 0.8,
                target_met: true,
                explanation: "cold at 100 Mbit/s".into(),
            },
            created_us: 5,
        }
    }

    fn all_events() -> Vec<PhaseEvent> {
        [
            PhaseStatus::Started,
            PhaseStatus::Finished,
            PhaseStatus::Failed {
                error: "timeout".into(),
            },
        ]
        .into_iter()
        .map(|status| PhaseEvent {
            task: "t1".into(),
            agent: "edge2".into(),
            phase: Phase::Restore,
            status,
            at_us: 99,
        })
        .collect()
    }

    fn roundtrip<M: Message + PartialEq + std::fmt::Debug>(m: &M) {
        let bytes = encode(m).unwrap();
        let back: M = decode(&bytes).unwrap();
        assert_eq!(&back, m);
    }

    #[test]
    fn every_message_round_trips() {
        roundtrip(&profile());
        roundtrip(&metrics());
        roundtrip(&task());
        for event in all_events() {
            roundtrip(&event);
        }
    }

    #[test]
    fn phase_names_are_their_serde_names_and_all_is_complete() {
        for &phase in Phase::ALL {
            assert_eq!(
                crate::test_support::from_name::<Phase>(phase.as_str()),
                Ok(phase)
            );
        }
        let mut names: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 10);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&profile()).unwrap();
        for len in 0..bytes.len() {
            assert!(
                decode::<AgentProfile>(&bytes[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn wrong_version_kind_magic_and_trailing_bytes_are_typed_errors() {
        let bytes = encode(&task()).unwrap();

        let mut v = bytes.clone();
        v[2..4].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        assert!(matches!(
            decode::<Task>(&v),
            Err(CodecError::UnsupportedVersion { got }) if got == PROTOCOL_VERSION + 1
        ));
        let old = {
            let mut o = bytes.clone();
            o[2..4].copy_from_slice(&2u16.to_le_bytes());
            o
        };
        assert_eq!(
            decode::<Task>(&old).unwrap_err().to_string(),
            format!("unsupported protocol version 2, this node speaks {PROTOCOL_VERSION}")
        );

        assert!(matches!(
            decode::<AgentProfile>(&bytes),
            Err(CodecError::WrongKind {
                expected: "AgentProfile",
                ..
            })
        ));

        let mut m = bytes.clone();
        m[0] = b'X';
        assert!(matches!(
            decode::<Task>(&m),
            Err(CodecError::BadMagic { .. })
        ));

        let mut t = bytes.clone();
        t.push(0);
        assert!(matches!(
            decode::<Task>(&t),
            Err(CodecError::TrailingBytes { count: 1, .. })
        ));
        assert!(matches!(
            decode::<Task>(&[]),
            Err(CodecError::Truncated { got: 0 })
        ));
    }

    /// Decodes `bytes` as every message type; the result does not matter, only that none panics.
    fn decode_as_every_message(bytes: &[u8]) {
        let _ = decode::<AgentProfile>(bytes);
        let _ = decode::<MetricsSample>(bytes);
        let _ = decode::<Task>(bytes);
        let _ = decode::<crate::steps::StepRequest>(bytes);
        let _ = decode::<crate::steps::StepReply>(bytes);
        let _ = decode::<PhaseEvent>(bytes);
        let _ = decode::<crate::blob::BlobManifest>(bytes);
    }

    proptest! {
        /// Random bytes never panic the decoder, whatever the message type.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            decode_as_every_message(&bytes);
        }

        /// Garbage behind a valid header (the case a fuzzer finds first) is an error, not a panic.
        #[test]
        fn garbage_body_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            for kind in 1u8..=7 {
                let mut bytes = b"MO".to_vec();
                bytes.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
                bytes.push(kind);
                bytes.extend_from_slice(&body);
                decode_as_every_message(&bytes);
            }
        }

        /// Flipping any byte of a valid message gives an error or some value, never a panic.
        #[test]
        fn bit_flips_never_panic(pos in 0usize..4096, bit in 0u8..8) {
            let bytes = encode(&metrics()).unwrap();
            let mut b = bytes.clone();
            let i = pos % b.len();
            b[i] ^= 1 << bit;
            let _ = decode::<MetricsSample>(&b);
        }
    }
}
