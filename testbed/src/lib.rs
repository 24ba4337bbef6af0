//! `mose-testbed`: emulated edge hosts on one machine, their LAN, workloads and images.
//!
//! * [`host`]: an emulated host = network + mount + UTS namespace with private podman/OvS state.
//! * [`lan`]: the bridge connecting hosts, with per-host rate/delay shaping.
//! * [`images`]: reproducible local images of our static workloads (`counter-service`, `memload`)
//!   and of Debian's `memcached` and `iperf3`.
//! * [`fourhost`], [`demo`], [`bench`]: the four-host testbed, its demo and its benchmark.
//! * [`sweep_stale`]: removes everything a crashed run left behind; [`leftovers`] checks for it.
//!
//! See `docs/testbed.md` for the model, the addressing and measured timings.

pub mod bench;
pub mod client;
pub mod demo;
pub mod error;
pub mod fourhost;
pub mod host;
pub mod images;
pub mod lan;
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    reason = "pixel geometry: coordinates are bounded by the fixed image size, far inside i32/u32"
)]
pub mod plot;
pub mod report;
mod sweep;
mod sys;
pub mod vm;

pub use error::{Result, TestbedError};
pub use host::{Host, NsInodes};
pub use images::{BuiltImage, ImageBuilder, ImageSpec};
pub use lan::{Lan, LinkShape};
pub use sweep::{leftovers, sweep_stale, SweepReport};

/// Name prefix of everything the testbed CLI makes; tests use longer prefixes that start with it,
/// so `mose-testbed down` (which sweeps this prefix) also clears what crashed tests left.
pub const DEFAULT_PREFIX: &str = "mtb-";

/// The cargo workspace this crate was built in (holds `testbed/`, `target/`).
pub fn workspace_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// Run one of the workspace's scripts (`testbed/setup-host.sh`, `testbed/vm/build-image.sh`)
/// with `bash`, its output on our terminal; an error names the script and its exit status.
pub async fn run_script(relative: &str) -> Result<()> {
    let script = workspace_dir().join(relative);
    mose_command::Cmd::new("bash")
        .arg(&script)
        .no_deadline()
        .run_inherited()
        .await?;
    Ok(())
}

/// `target/testbed`: images, `state.json`, logs, the report and the plot.
pub fn out_dir() -> std::path::PathBuf {
    workspace_dir().join("target/testbed")
}

/// The file a testbed's orchestrator takes its HTTP API tokens from (`--api-tokens`), made on
/// first use in `pki_dir` (each run's own domain directory).
pub fn api_tokens_file(pki_dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let path = pki_dir.join("api-tokens");
    mose_api::ApiTokens::load_or_create(&path).map_err(|e| TestbedError::State(e.to_string()))?;
    Ok(path)
}

/// A client of the orchestrator at `url` with the token of `tokens` (see [`api_tokens_file`]).
pub fn api_client(url: &str, tokens: &std::path::Path) -> Result<mose_api::ApiClient> {
    let token = mose_api::ApiToken::read_file(tokens)
        .map_err(|e| TestbedError::State(format!("the testbed's API token: {e}")))?;
    Ok(mose_api::ApiClient::new(url, Some(&token)))
}
