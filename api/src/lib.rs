//! `mose-api`: the orchestrator's HTTP API as both sides see it (documented in
//! docs/protocol.md#http-api).
//!
//! * [`tasks`]: [`MigrationRequest`] (`POST /v1/migrations`) and [`TaskRecord`] (every task
//!   call's answer), with [`TaskStatus`], [`PlanInputs`], [`Progress`], [`Measurements`].
//! * [`services`]: [`DeployRequest`] (`POST /v1/services`), [`ServiceRecord`] and
//!   [`ServiceView`] (the service calls' answers).
//! * [`agents`]: [`AgentView`] (`GET /v1/agents`).
//! * [`problem`]: every error answer, RFC 9457 [`Problem`] with a stable [`Reason`].
//! * [`client`]: [`ApiClient`] over reqwest; failures as [`ClientError`].
//! * [`events`]: a migration's server-sent event stream as [`MigrationEvent`]s.
//! * [`format`]: the tables and summaries the `mose` CLI prints, and the parsers of the
//!   durations and rates it accepts.
//!
//! The orchestrator serves these same types (axum, its OpenAPI document), the `mose` CLI and
//! the testbed call it through [`ApiClient`]. Only the plain-data part of `mose-protocol` is
//! used (`default-features = false`): nothing here links Zenoh, axum or SQLite.

pub mod agents;
pub mod auth;
pub mod client;
pub mod events;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod format;
pub mod problem;
pub mod services;
pub mod tasks;

pub use agents::AgentView;
pub use auth::{ApiToken, ApiTokens, AuthError};
pub use client::{ApiClient, ClientError};
pub use events::{EventStream, MigrationEvent};
pub use problem::{Problem, Reason, PROBLEM_JSON};
pub use services::{DeployRequest, ServiceRecord, ServiceStatus, ServiceView};
pub use tasks::{
    Measurements, MigrationRequest, PlanInputs, Progress, Route, TaskRecord, TaskStatus,
};
