//! `mose-agent`: runs on every edge host and mobile device.
//!
//! * [`config`] / [`cli`]: TOML configuration with command-line overrides.
//! * [`node`]: presence on the MOSE network (liveliness, profile, metrics).
//! * [`profiling`]: host load and per-container state size.
//! * [`steps`]: the migration-step queryables and the [`steps::StepExecutor`] seam.
//! * [`calibration`]: measuring this host and fitting the PAM model's laws.
//! * [`runtime`]: the Podman (libpod) driver and the host capability probe.
//! * [`coat`]: the COAT migration steps ([`coat::CoatExecutor`], the real step executor).

pub mod calibration;
pub mod cli;
pub mod coat;
pub mod config;
pub mod node;
pub mod profiling;
pub mod runtime;
pub mod steps;
