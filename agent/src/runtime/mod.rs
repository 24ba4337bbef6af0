//! The agent's container runtime driver: a thin libpod REST client of our own on the Podman
//! API unix socket, plus what the agent needs around it.
//!
//! * [`libpod`]: [`Podman`], the client (create, start, inspect, stats, stop, remove, images).
//! * [`checkpoint`]: checkpoint with export and restore with import, the archive streamed
//!   through a writer/reader and never held in memory; the final dump with previous
//!   (pre-copy), whose restore runs the podman CLI (the API has no import-previous).
//! * [`precopy`]: iterative pre-copy rounds, chained CRIU pre-dumps through runc, and their
//!   archives.
//! * [`criu_stats`]: CRIU's dump/restore statistics as typed values.
//! * [`capabilities`]: the host capability probe published in the agent profile.
//! * [`limits`]: the ulimits containers need on hosts without `CAP_SYS_RESOURCE`.
//!
//! Why our own client: the `podman-api` crate always sends an empty body on restore (so it
//! cannot restore an uploaded checkpoint) and fails to parse podman 5's inspect output.
//! See `docs/runtime.md` for the API calls, versions and quirks.

mod archive;
pub mod capabilities;
pub mod checkpoint;
pub mod container;
pub mod criu_stats;
pub mod criu_tcp;
pub mod error;
pub mod libpod;
pub mod limits;
pub mod precopy;

pub use capabilities::{probe, ProbeOptions, ProbeReport};
pub use checkpoint::{
    CheckpointOptions, CheckpointReport, DumpKind, RestoreOptions, RestoreReport,
};
pub use container::{
    ContainerInfo, ContainerStats, ContainerSummary, CreateSpec, HostInfo, NamedVolume, Netns,
    VolumeSummary,
};
pub use criu_stats::{CriuDumpStats, CriuRestoreStats};
pub use error::{Op, Result, RuntimeError};
pub use libpod::Podman;
pub use limits::{HostLimits, Ulimit};
pub use precopy::PreDumpReport;
