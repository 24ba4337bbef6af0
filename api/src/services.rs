//! The service documents of the HTTP API: what `POST /v1/services` takes ([`DeployRequest`])
//! and what the service calls answer ([`ServiceRecord`], [`ServiceView`]).

use std::collections::BTreeMap;

use mose_protocol::messages::{Peer, ServiceNetwork};
use mose_protocol::units::BytesPerSec;
use mose_protocol::volumes::VolumeMount;
use serde::{Deserialize, Serialize};

/// A service to deploy (`POST /v1/services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployRequest {
    /// The service's name: its container's, unique among services, one key chunk.
    pub name: String,
    /// The container image, present on the host (`podman load` it there).
    pub image: String,
    /// Agent id of the edge host to run it on.
    pub host: String,
    /// Arguments that replace the image's command; empty keeps the image's own.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables of the container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Named volumes, created empty at deployment. Their content moves with the service in its
    /// checkpoint (inside the freeze) and is deleted with it.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Mobile agents whose devices use the service: their flows are steered to it and follow
    /// it on every migration. Omitted: every mobile agent present at deployment.
    #[serde(default)]
    pub mobiles: Option<Vec<String>>,
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ServiceStatus {
    /// Its address is allocated and its host is creating it.
    Deploying,
    /// It runs on its host (it may be migrating: see [`ServiceView::migrating`]).
    Running,
    /// Being removed; a failed removal stays here until `DELETE` is repeated.
    Removing,
}

impl ServiceStatus {
    /// The name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploying => "deploying",
            Self::Running => "running",
            Self::Removing => "removing",
        }
    }
}

impl std::fmt::Display for ServiceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A service as the orchestrator stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceRecord {
    /// The service's name.
    pub name: String,
    /// Its container image.
    pub image: String,
    /// The edge agent it runs on now; a migration moves it at its point of no return.
    pub host: String,
    /// Arguments replacing the image's command.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Its named volumes.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// The mobile agents whose flows follow it.
    pub mobiles: Vec<String>,
    /// Its overlay address and MAC, allocated from the orchestrator's pool.
    pub network: ServiceNetwork,
    /// Where it is in its life.
    pub status: ServiceStatus,
    /// The latest migration task of it, if any.
    pub last_migration: Option<String>,
    /// When it was deployed, Unix microseconds.
    pub created_us: u64,
    /// Last change of the record, Unix microseconds.
    pub updated_us: u64,
}

/// A service with what the orchestrator sees of it now (`GET /v1/services/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServiceView {
    /// The stored record.
    #[serde(flatten)]
    pub record: ServiceRecord,
    /// The migration running now, if any.
    pub migrating: Option<String>,
    /// M: its memory state as its host reports it (absent when the host did not answer).
    pub state_bytes: Option<u64>,
    /// R: its dirty rate from its host's latest metrics.
    pub dirty_rate_bytes_per_s: Option<BytesPerSec>,
    /// Its connected clients (on-link peers of its TCP connections), as its host sees them.
    pub clients: Vec<Peer>,
    /// Why a live value is missing, in words.
    pub notes: Vec<String>,
}
