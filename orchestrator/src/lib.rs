//! `mose-orchestrator`: discovers agents, keeps their live view, plans migrations with PAM and
//! serves it all over HTTP.
//!
//! * [`registry`]: discovery by liveliness, profiles, metrics → [`registry::AgentsView`].
//! * [`designer`]: the PAM model and the configuration algorithm.
//! * [`rpc`]: asking agents to carry out migration steps.
//! * [`tasks`]: migration tasks — validation, planning, the COAT driver with rollback, the
//!   SQLite task store and reconciliation after a restart, the Zenoh task queryables.
//! * [`api`]: the HTTP API (axum), with its [`openapi`] document and [`prometheus`] metrics.
//! * [`cli`]: command line of the `mose-orchestrator` daemon.
//!
//! The documents of the HTTP API ([`tasks::TaskRecord`], [`registry::AgentView`] …) are defined
//! in the light crate `mose-api`, with the client and the tables of the `mose` CLI (crate
//! `mose-cli`), so neither links Zenoh.

pub mod api;
pub mod api_auth;
pub mod cli;
pub mod designer;
pub mod openapi;
pub mod prometheus;
pub mod registry;
pub mod rpc;
pub mod services;
pub mod tasks;
