//! `mose-orchestrator`: discovers agents, keeps their live view, plans migrations with PAM and
//! serves it all over HTTP.
//!
//! * [`registry`]: discovery by liveliness, profiles, metrics → [`registry::AgentsView`].
//! * [`designer`]: the PAM model and the configuration algorithm.
//! * [`rpc`]: asking agents to carry out migration steps.
//! * [`api`]: the HTTP API (axum).
//! * [`cli`]: command line of the `mose-orchestrator` daemon.
//! * [`client`]: the HTTP client and table rendering behind the `mose` CLI.

pub mod api;
pub mod cli;
pub mod client;
pub mod designer;
pub mod registry;
pub mod rpc;
