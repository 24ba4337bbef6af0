//! The step contract between the orchestrator and an agent (`agents/{id}/rpc/{op}`).
//!
//! Every step is a request type with its own outcome type, tied together by [`StepKind`]: a
//! caller that sends a [`Checkpoint`] gets a [`Dumped`] back or a typed error, never "some
//! outcome" it has to match. On the wire both travel inside one enum each ([`Step`],
//! [`StepOutcome`]), so one queryable per op and one codec kind suffice.
//!
//! The agent owns how images are named and stored: a step names an image by its role in the
//! migration ([`ImageId`]), never by a file or a key the orchestrator made up.
//! See `docs/protocol.md` ("Steps").

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::codec::{Message, MessageKind};
#[cfg(test)]
use crate::messages::Peer;
use crate::messages::{CriuStats, ServiceNetwork, ServiceSpec};
use crate::volumes::VolumeMount;

/// A checkpoint image of one task, by its role: a pre-copy round or the final dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ImageId {
    /// Pre-copy round `n` (from 0): what was dirtied since round `n - 1`, the first round all.
    Round(u32),
    /// The final dump, taken with the service frozen, built on every round before it.
    Final,
    /// The service's container image, for a destination that lacks it (moved before the
    /// freeze).
    Container,
}

impl ImageId {
    /// The image's chunk in `images/{task}/{chunk}`, also the stem of its file on an agent.
    pub fn key_chunk(self) -> String {
        match self {
            ImageId::Round(n) => format!("round-{n}"),
            ImageId::Final => "final".to_string(),
            ImageId::Container => "container".to_string(),
        }
    }

    /// The final dump and the `rounds` pre-copy rounds it builds on, rounds oldest first.
    pub fn of_migration(rounds: u32) -> impl Iterator<Item = ImageId> {
        (0..rounds)
            .map(ImageId::Round)
            .chain(std::iter::once(ImageId::Final))
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageId::Round(n) => write!(f, "pre-copy round {n}"),
            ImageId::Final => f.write_str("final dump"),
            ImageId::Container => f.write_str("container image"),
        }
    }
}

/// Declares the step operations: the enum, its key chunk and its lists.
macro_rules! ops {
    ($($(#[$doc:meta])* $name:ident = $chunk:literal),* $(,)?) => {
        /// A step operation; its [`Op::as_str`] is the last chunk of the queryable's key.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum Op { $($(#[$doc])* $name),* }

        impl Op {
            /// Every operation, in the order of a migration.
            pub const ALL: &'static [Op] = &[$(Op::$name),*];

            /// The key chunk (`agents/{id}/rpc/{chunk}`), also the name in logs and faults.
            pub fn as_str(self) -> &'static str {
                match self { $(Op::$name => $chunk),* }
            }

            /// The operation a key chunk names.
            pub fn from_key_chunk(chunk: &str) -> Option<Op> {
                Op::ALL.iter().copied().find(|op| op.as_str() == chunk)
            }
        }
    };
}

ops! {
    /// Source: report the service's spec and state size.
    Describe = "describe",
    /// Destination: everything that can happen before the freeze.
    Prepare = "prepare",
    /// Source: serve the service's container image, for a destination that lacks it.
    ExportImage = "export-image",
    /// Source: one pre-copy round while the service runs.
    PreDump = "pre-dump",
    /// Destination: fetch a pre-copy round while the service still runs at the source.
    Fetch = "fetch",
    /// Source: the final dump, the service frozen.
    Checkpoint = "checkpoint",
    /// Destination: fetch what is missing and restore.
    Restore = "restore",
    /// Mobile: steer the client's flow.
    SwitchFlow = "switch-flow",
    /// Destination after the switch: make the clients resend now.
    Resend = "resend",
    /// Source, rollback: run the service again.
    Resume = "resume",
    /// Destination, rollback: remove what prepare and restore left.
    Abort = "abort",
    /// Source, commit: remove the old copy.
    Release = "release",
    /// Edge: create the service's endpoint and container and start it (deployment).
    Deploy = "deploy",
    /// Edge: remove the service, its endpoint and its flows (deletion).
    Remove = "remove",
    /// Mobile: remove the flows of a service that is gone.
    ClearFlow = "clear-flow",
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Source: report the service's spec and current state size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Describe {
    /// The service (container) name.
    pub service: String,
}

/// Destination: make everything ready before the freeze (image, netns, neighbour, flows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// What the destination recreates.
    pub spec: ServiceSpec,
}

/// Source: export the service's container image and serve it as [`ImageId::Container`] until
/// the task's resume or release, for a destination whose Prepare found it missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportImage {
    /// The service (container) name.
    pub service: String,
    /// The agent the image is for (the destination): the only one that may fetch it.
    pub to: String,
}

/// Source: pre-copy round `round` of the running service, on top of round `round - 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreDump {
    /// The service (container) name.
    pub service: String,
    /// The round's number, from 0; the agent refuses a round that does not follow its last.
    pub round: u32,
    /// The agent the image is for (the destination): the only one that may fetch it.
    pub to: String,
}

/// Source: the final dump with established TCP, built on pre-copy rounds `0..rounds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The service (container) name.
    pub service: String,
    /// How many pre-copy rounds this task made before (0: a cold, full dump).
    pub rounds: u32,
    /// The agent the image is for (the destination): the only one that may fetch it.
    pub to: String,
}

/// Destination, during pre-copy: fetch `image` from agent `from` now, while the service runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    /// The agent serving the image (the source).
    pub from: String,
    /// The image to fetch.
    pub image: ImageId,
}

/// Destination: fetch the final dump (and any round not fetched yet) from `from`, restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    /// What the destination recreates.
    pub spec: ServiceSpec,
    /// The agent serving the images (the source).
    pub from: String,
    /// How many pre-copy rounds the final dump builds on: each is needed.
    pub rounds: u32,
}

/// Mobile: steer the client's flow for `network` towards agent `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchFlow {
    /// The service's address, MAC and client.
    pub network: ServiceNetwork,
    /// The agent whose host the flow goes to.
    pub to: String,
}

/// Destination, after the flow switch: make the service's TCP clients resend what the freeze
/// swallowed now, not when their backed-off retransmission timer fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resend {
    /// The service (container) name.
    pub service: String,
}

/// Source, rollback: bring the service back to running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The service (container) name.
    pub service: String,
}

/// Destination, rollback: remove whatever a prepare or restore left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    /// The service (container) name.
    pub service: String,
}

/// Source, commit: remove the old copy once the destination serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The service (container) name.
    pub service: String,
}

/// Edge: run a new service here: its namespace endpoint with the allocated identity on the
/// host's bridge, the local steering toward it, and its container (created and started).
/// A repeat finds the running service and succeeds without touching it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    /// Name, image and network identity.
    pub spec: ServiceSpec,
    /// Arguments that replace the image's command (empty: the image's own).
    pub args: Vec<String>,
    /// Environment variables of the container.
    pub env: BTreeMap<String, String>,
    /// Named volumes, created empty here (the host names each `mose.{service}.{name}`).
    pub volumes: Vec<VolumeMount>,
}

/// Edge: remove the service from this host — container, endpoint, flows and any migration
/// files. Absent parts are fine, so a repeat succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remove {
    /// The service (container) name.
    pub service: String,
    /// The service's address, whose flows go too (also when its namespace is already gone).
    pub ip: Ipv4Addr,
}

/// Mobile: remove the steering of a service that no longer exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearFlow {
    /// The service's address.
    pub ip: Ipv4Addr,
}

/// A step that had nothing to report but success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done;

/// The destination is ready for the freeze, but for its image if it lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// The service's image is on this host. When not, the caller moves it (ExportImage on the
    /// source, then Fetch of [`ImageId::Container`] here) before the freeze.
    pub image_present: bool,
}

/// The source serves the container image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    /// Size of the image archive.
    pub image_bytes: u64,
}

/// What Describe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Described {
    /// Everything a destination needs to recreate the service.
    pub spec: ServiceSpec,
    /// M: the anonymous memory of the service's processes.
    pub state_bytes: u64,
}

/// A pre-dump round or the final dump, ready to be fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dumped {
    /// Which image this is.
    pub image: ImageId,
    /// Its archive's size.
    pub image_bytes: u64,
    /// CRIU's statistics of the dump (empty when a repeat answered from the agent's state).
    pub stats: CriuStats,
}

/// A pre-copy round now on the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// Which image this is.
    pub image: ImageId,
    /// Its archive's size.
    pub image_bytes: u64,
}

/// The service runs at the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// Bytes fetched by this restore (the final dump and any round that was still missing).
    pub fetched_bytes: u64,
    /// CRIU's statistics of the restore (empty when a repeat answered from the agent's state).
    pub stats: CriuStats,
}

/// The clients were nudged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resent {
    /// Nudges sent: one per restored TCP connection (0 when it had none).
    pub nudges: u32,
}

/// A request type and the outcome it answers with.
pub trait StepKind: Into<Step> + Clone + fmt::Debug {
    /// The operation.
    const OP: Op;
    /// What a success carries.
    type Outcome: Into<StepOutcome> + TryFrom<StepOutcome, Error = StepOutcome> + fmt::Debug;
}

/// Ties request types to their outcome and builds both wire enums.
macro_rules! steps {
    ($($req:ident => $out:ident),* $(,)?) => {
        /// Any step request, as it travels.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Step { $(#[doc = concat!("A [`", stringify!($req), "`] request.")] $req($req)),* }

        impl Step {
            /// The step's operation.
            pub fn op(&self) -> Op {
                match self { $(Step::$req(_) => Op::$req),* }
            }
        }

        $(
            impl From<$req> for Step {
                fn from(s: $req) -> Step { Step::$req(s) }
            }
            impl StepKind for $req {
                const OP: Op = Op::$req;
                type Outcome = $out;
            }
        )*
    };
}

steps! {
    Describe => Described,
    Prepare => Prepared,
    ExportImage => Exported,
    PreDump => Dumped,
    Fetch => Fetched,
    Checkpoint => Dumped,
    Restore => Restored,
    SwitchFlow => Done,
    Resend => Resent,
    Resume => Done,
    Abort => Done,
    Release => Done,
    Deploy => Done,
    Remove => Done,
    ClearFlow => Done,
}

/// Builds the outcome enum and its conversions.
macro_rules! outcomes {
    ($($out:ident),* $(,)?) => {
        /// Any step's success, as it travels.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub enum StepOutcome { $(#[doc = concat!("A [`", stringify!($out), "`] outcome.")] $out($out)),* }

        $(
            impl From<$out> for StepOutcome {
                fn from(o: $out) -> StepOutcome { StepOutcome::$out(o) }
            }
            impl TryFrom<StepOutcome> for $out {
                type Error = StepOutcome;
                fn try_from(o: StepOutcome) -> Result<$out, StepOutcome> {
                    match o {
                        StepOutcome::$out(o) => Ok(o),
                        #[allow(unreachable_patterns)]
                        other => Err(other),
                    }
                }
            }
        )*
    };
}

outcomes!(Done, Described, Prepared, Exported, Dumped, Fetched, Restored, Resent);

/// What kind of failure a step met: what the caller may conclude from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FailureKind {
    /// The request itself is wrong (bad name, unknown port): repeating it cannot help.
    InvalidRequest,
    /// The host is not in a state the step can start from (no such container, image missing).
    WrongState,
    /// The container runtime (podman, runc, CRIU) failed or is unreachable.
    Runtime,
    /// The host's network plumbing (namespaces, OvS, links) failed.
    Network,
    /// Moving an image failed (unreachable server, digest mismatch).
    Transfer,
    /// The step did not finish in time; its effect is unknown until it ends.
    Timeout,
    /// A fault of the agent itself (a task that panicked, a file it cannot write).
    Internal,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: &'static [FailureKind] = &[
        FailureKind::InvalidRequest,
        FailureKind::WrongState,
        FailureKind::Runtime,
        FailureKind::Network,
        FailureKind::Transfer,
        FailureKind::Timeout,
        FailureKind::Internal,
    ];

    /// The kind's name in reports and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::InvalidRequest => "invalid_request",
            FailureKind::WrongState => "wrong_state",
            FailureKind::Runtime => "runtime",
            FailureKind::Network => "network",
            FailureKind::Transfer => "transfer",
            FailureKind::Timeout => "timeout",
            FailureKind::Internal => "internal",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{op} failed ({kind}): {reason}")]
pub struct StepFailure {
    /// The step.
    pub op: Op,
    /// What kind of failure.
    pub kind: FailureKind,
    /// What happened, for a person.
    pub reason: String,
}

/// A step failure as the orchestrator records it in a task: where, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Fault {
    /// The agent the step was sent to.
    pub agent: String,
    /// The step.
    pub op: Op,
    /// What kind of failure (the agent's, or how the call ended: timeout, network).
    pub kind: FailureKind,
    /// What happened, for a person (the last attempt's, after retries).
    pub reason: String,
    /// How many times the step was tried (idempotent rollback and release steps are retried).
    pub attempts: u32,
    /// When the orchestrator recorded it (Unix µs).
    pub at_us: u64,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (op, agent, kind, reason) = (self.op, &self.agent, self.kind, &self.reason);
        match self.attempts {
            0 | 1 => write!(f, "{op} on {agent} failed ({kind}): {reason}"),
            n => write!(
                f,
                "{op} on {agent} failed {n} times ({kind}), last: {reason}"
            ),
        }
    }
}

/// A step request, with the time the caller will wait.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRequest {
    /// The task the step belongs to.
    pub task: String,
    /// The step.
    pub step: Step,
    /// How long the caller waits for the answer.
    pub timeout_ms: u64,
}

/// The answer to a [`StepRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepReply {
    /// The task of the request.
    pub task: String,
    /// The outcome or why there is none.
    pub result: Result<StepOutcome, StepFailure>,
}

impl Message for StepRequest {
    const KIND: MessageKind = MessageKind::StepRequest;
}

impl Message for StepReply {
    const KIND: MessageKind = MessageKind::StepReply;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use std::net::Ipv4Addr;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            name: "counter".into(),
            image: "localhost/mose/counter:latest".into(),
            image_id: None,
            network: ServiceNetwork {
                ip: Ipv4Addr::new(10, 77, 0, 10),
                prefix_len: 24,
                mac: [0x02, 0, 0, 0, 0, 0x0a],
                clients: vec![Peer {
                    ip: Ipv4Addr::new(10, 77, 0, 2),
                    mac: [0x02, 0, 0, 0, 0, 0x02],
                }],
            },
        }
    }

    /// One request of every operation.
    pub(crate) fn all_steps() -> Vec<Step> {
        let service = || "counter".to_string();
        vec![
            Describe { service: service() }.into(),
            Prepare { spec: spec() }.into(),
            ExportImage {
                service: service(),
                to: "edge2".into(),
            }
            .into(),
            PreDump {
                service: service(),
                round: 1,
                to: "edge2".into(),
            }
            .into(),
            Fetch {
                from: "edge1".into(),
                image: ImageId::Round(1),
            }
            .into(),
            Checkpoint {
                service: service(),
                rounds: 2,
                to: "edge2".into(),
            }
            .into(),
            Restore {
                spec: spec(),
                from: "edge1".into(),
                rounds: 2,
            }
            .into(),
            SwitchFlow {
                network: spec().network,
                to: "edge2".into(),
            }
            .into(),
            Resend { service: service() }.into(),
            Resume { service: service() }.into(),
            Abort { service: service() }.into(),
            Release { service: service() }.into(),
            Deploy {
                spec: spec(),
                args: vec!["--port".into(), "7000".into()],
                env: BTreeMap::from([("STATE_MIB".into(), "1".into())]),
                volumes: vec![VolumeMount {
                    name: "data".into(),
                    path: "/data".into(),
                }],
            }
            .into(),
            Remove {
                service: service(),
                ip: spec().network.ip,
            }
            .into(),
            ClearFlow {
                ip: spec().network.ip,
            }
            .into(),
        ]
    }

    #[test]
    fn every_op_has_one_request_and_a_valid_distinct_key_chunk() {
        let ops: Vec<Op> = all_steps().iter().map(Step::op).collect();
        assert_eq!(ops, Op::ALL, "one request per op, in Op::ALL's order");
        let mut chunks: Vec<&str> = ops.iter().map(|op| op.as_str()).collect();
        for c in &chunks {
            crate::keys::validate_id("op", c).unwrap();
            assert_eq!(Op::from_key_chunk(c).map(Op::as_str), Some(*c));
        }
        chunks.sort();
        chunks.dedup();
        assert_eq!(chunks.len(), Op::ALL.len());
        assert_eq!(Op::from_key_chunk("checkpoint-all"), None);
    }

    #[test]
    fn requests_and_replies_round_trip() {
        for step in all_steps() {
            let request = StepRequest {
                task: "t1".into(),
                step,
                timeout_ms: 5000,
            };
            let back: StepRequest = decode(&encode(&request).unwrap()).unwrap();
            assert_eq!(back, request);
        }
        let outcomes: Vec<StepOutcome> = vec![
            Done.into(),
            Described {
                spec: spec(),
                state_bytes: 42,
            }
            .into(),
            Dumped {
                image: ImageId::Final,
                image_bytes: 1 << 20,
                stats: CriuStats {
                    frozen_time_us: Some(400_000),
                    ..Default::default()
                },
            }
            .into(),
            Fetched {
                image: ImageId::Round(3),
                image_bytes: 7,
            }
            .into(),
            Restored {
                fetched_bytes: 9,
                stats: CriuStats::default(),
            }
            .into(),
            Resent { nudges: 1 }.into(),
            Prepared {
                image_present: false,
            }
            .into(),
            Exported {
                image_bytes: 8 << 20,
            }
            .into(),
        ];
        let failures = FailureKind::ALL.iter().map(|&kind| StepFailure {
            op: Op::Restore,
            kind,
            reason: "image digest mismatch".into(),
        });
        let results = outcomes.into_iter().map(Ok).chain(failures.map(Err));
        for result in results {
            let reply = StepReply {
                task: "t1".into(),
                result,
            };
            let back: StepReply = decode(&encode(&reply).unwrap()).unwrap();
            assert_eq!(back, reply);
        }
    }

    #[test]
    fn an_outcome_converts_only_to_its_own_type() {
        let o: StepOutcome = Resent { nudges: 2 }.into();
        assert_eq!(Resent::try_from(o.clone()), Ok(Resent { nudges: 2 }));
        assert_eq!(Done::try_from(o.clone()), Err(o));
    }

    #[test]
    fn images_are_named_by_role() {
        let all: Vec<ImageId> = ImageId::of_migration(2).collect();
        assert_eq!(all, [ImageId::Round(0), ImageId::Round(1), ImageId::Final]);
        let chunks: Vec<String> = all.iter().map(|i| i.key_chunk()).collect();
        assert_eq!(chunks, ["round-0", "round-1", "final"]);
        for c in &chunks {
            crate::keys::validate_id("image", c).unwrap();
        }
        assert_eq!(
            ImageId::of_migration(0).collect::<Vec<_>>(),
            [ImageId::Final]
        );
    }

    #[test]
    fn a_fault_says_where_what_and_how_often() {
        let mut fault = Fault {
            agent: "edge1".into(),
            op: Op::Resume,
            kind: FailureKind::Runtime,
            reason: "podman is not answering".into(),
            attempts: 1,
            at_us: 0,
        };
        assert_eq!(
            fault.to_string(),
            "resume on edge1 failed (runtime): podman is not answering"
        );
        fault.attempts = 3;
        assert_eq!(
            fault.to_string(),
            "resume on edge1 failed 3 times (runtime), last: podman is not answering"
        );
    }

    #[test]
    fn a_failure_reads_as_a_sentence() {
        let f = StepFailure {
            op: Op::Describe,
            kind: FailureKind::Runtime,
            reason: "podman is not answering".into(),
        };
        assert_eq!(
            f.to_string(),
            "describe failed (runtime): podman is not answering"
        );
    }
}
