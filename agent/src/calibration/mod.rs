//! Host calibration (`mose-agent calibrate`, docs/pam.md#calibration): measure this host's
//! checkpoint and restore costs with a synthetic workload and fit the PAM model's laws to them.
//!
//! For every state size M and dirty rate R of the plan, the memory workload container is
//! started, checkpointed (`--export`, CRIU statistics on) and restored from that archive. CRIU's
//! own numbers give the laws: dump frozen time φ_d + γ_d(R)·M, restore time ψ + ω·M, freezing
//! time β; Podman's wall time over CRIU's gives α_c and α_r; archive size over state gives τ₁.
//! M on the x axis is what CRIU wrote (pages written × page size), not what we asked for.
//!
//! Pre-dump laws need kernel dirty tracking. Where the host capability probe found it
//! ([`CalibrationPlan::pre_dumps`]), each sample first runs two chained pre-dump rounds on the
//! running workload (`cal-0`, then `cal-1` with `cal-0` as parent; [`Podman::pre_dump`]) before
//! its full checkpoint — which, without `withPrevious`, ignores the chain, so the dump numbers
//! above are unchanged. Round `cal-0` gives the pre-dump frozen time φ_p + γ_p·M (at the lowest
//! dirty rate) and the pre-dump memory time δ + Λ·M (CRIU's memwrite time, memdump where
//! memwrite is absent; every rate), M being what that round wrote; round `cal-1`, written as a
//! round archive, gives τ₂ = archive bytes / (its pages written × page size), the median over
//! the samples at the highest rate whose second round wrote a page. η is informational and kept from before. Where
//! pre-dumps are not measured (no dirty tracking, as on the development kernel) all pre-dump
//! laws keep their previous values and the report says so. A fit whose R² is under the
//! threshold is refused unless its points lie within 15 % of the line (a nearly flat law, like
//! restore time under TCG): a bad model would make every plan wrong while looking precise.

pub mod fit;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mose_protocol::model::PamParams;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::runtime::precopy::write_round_archive;
use crate::runtime::{
    CheckpointOptions, CreateSpec, CriuDumpStats, HostLimits, Netns, Podman, RestoreOptions,
    RuntimeError,
};
use fit::{fit_line, median, FitError, LinearFit};

/// What to measure.
#[derive(Debug, Clone)]
pub struct CalibrationPlan {
    /// The memory workload image (`memload`), already present on this host.
    pub image: String,
    /// State sizes to run, MiB (≥ 3 distinct for a meaningful fit).
    pub sizes_mib: Vec<u32>,
    /// Dirty rates, MiB/s: the lowest and the highest the host should plan for.
    pub rates_mib_per_s: Vec<f64>,
    /// Work directory for the archives (removed per sample).
    pub scratch: PathBuf,
    /// Runs per size and rate; the fit uses their medians, so one disturbed run does not
    /// bend a law.
    pub repeats: u32,
    /// Smallest acceptable R² of the fitted laws.
    pub min_r_squared: f64,
    /// Also measure the pre-dump laws (two chained pre-dump rounds per sample). Needs kernel
    /// dirty tracking: set it from the host capability probe (`Capabilities::dirty_tracking`).
    pub pre_dumps: bool,
}

/// Deadline of one calibration pre-dump round.
const PRE_DUMP_TIMEOUT: Duration = Duration::from_secs(120);
/// A fit under the R² threshold is still accepted when its points lie this close to the line
/// (RMS residual over mean value): a nearly flat law, predicted well.
const MAX_FLAT_LAW_ERROR: f64 = 0.15;

impl CalibrationPlan {
    /// The default grid (1–100 MiB at 0 and 20 MiB/s, three repeats) for `image`, archives under `scratch`.
    pub fn new(image: impl Into<String>, scratch: impl Into<PathBuf>) -> Self {
        Self {
            image: image.into(),
            sizes_mib: vec![1, 10, 50, 100],
            rates_mib_per_s: vec![0.0, 20.0],
            scratch: scratch.into(),
            repeats: 3,
            min_r_squared: 0.8,
            pre_dumps: false,
        }
    }
}

/// One checkpoint + restore of the workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// State size the workload was asked to hold, MiB.
    pub requested_mib: u32,
    /// Dirty rate the workload was asked to sustain.
    pub dirty_rate_bytes_per_s: f64,
    /// Pages written by CRIU × page size.
    pub state_bytes: u64,
    /// Size of the exported checkpoint archive.
    pub archive_bytes: u64,
    /// CRIU freezing time.
    pub freezing_s: f64,
    /// CRIU frozen time.
    pub frozen_s: f64,
    /// Podman's checkpoint request, dump and archive included.
    pub podman_checkpoint_s: f64,
    /// CRIU restore time.
    pub criu_restore_s: f64,
    /// Podman's restore request, upload and import included.
    pub podman_restore_s: f64,
    /// The two pre-dump rounds; `None` where pre-dumps were not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_dump: Option<PreDumpValues>,
}

/// What a sample's two chained pre-dump rounds measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreDumpValues {
    /// First round (no parent): pages written by CRIU × page size.
    pub state_bytes: u64,
    /// First round: CRIU frozen time.
    pub frozen_s: f64,
    /// First round: CRIU memory write time (memdump time where memwrite is absent).
    pub memory_s: f64,
    /// Second round (parent: the first): pages written × page size.
    pub second_state_bytes: u64,
    /// Second round: size of its round archive.
    pub second_archive_bytes: u64,
}

/// Progress while calibrating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Samples taken so far.
    pub done: usize,
    /// Samples in the whole plan.
    pub total: usize,
    /// State size of the sample being taken, MiB.
    pub state_mib: u32,
    /// Its dirty rate, MiB/s.
    pub rate_mib_per_s: f64,
}

/// The outcome: parameters to store and how well they fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The fitted PAM parameters.
    pub params: PamParams,
    /// One entry per fitted law.
    pub fits: Vec<FitSummary>,
    /// Every sample (medians per grid point).
    pub samples: Vec<Sample>,
    /// Laws accepted on their relative error, and other remarks.
    pub notes: Vec<String>,
}

/// One fitted law, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitSummary {
    /// The law's name (`checkpoint_s`, ...).
    pub law: String,
    /// a of time = a + b·M.
    pub intercept: f64,
    /// b of time = a + b·M.
    pub slope: f64,
    /// Coefficient of determination.
    pub r_squared: f64,
    /// RMS residual over the mean value (see [`fit::LinearFit::relative_error`]).
    #[serde(default)]
    pub relative_error: f64,
    /// y − ŷ per point.
    pub residuals: Vec<f64>,
}

/// Why a calibration failed.
#[derive(Debug, Error)]
pub enum CalibrationError {
    // `error` (not `source`): the message already carries it; a source would print it twice.
    /// Podman or CRIU failed on a sample.
    #[error("calibration sample M={mib} MiB, R={rate} MiB/s: {error}")]
    Runtime {
        /// The sample's state size, MiB.
        mib: u32,
        /// The sample's dirty rate, MiB/s.
        rate: f64,
        /// The runtime's error.
        error: RuntimeError,
    },
    /// A sample ran but its result is unusable.
    #[error("calibration sample M={mib} MiB, R={rate} MiB/s: {reason}")]
    Sample {
        /// The sample's state size, MiB.
        mib: u32,
        /// The sample's dirty rate, MiB/s.
        rate: f64,
        /// What is wrong with it.
        reason: String,
    },
    /// No line could be fitted.
    #[error(transparent)]
    Fit(#[from] FitError),
    /// A law fits too badly to plan with.
    #[error(
        "the {law} fit is too poor to plan with (R² = {r_squared:.3} < {threshold}, and its \
             points are {:.0} % off the line on average); the host was probably busy: calibrate \
             again on an idle host",
        relative_error * 100.0
    )]
    BadFit {
        /// The law's name.
        law: String,
        /// Its R².
        r_squared: f64,
        /// The smallest acceptable R².
        threshold: f64,
        /// Its relative error.
        relative_error: f64,
    },
    /// The grid of sizes and rates is unusable.
    #[error("calibration plan: {0}")]
    Plan(String),
    /// The result could not be stored.
    #[error("{path}: {reason}")]
    Store {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Runs every sample of `plan` on this host's podman.
pub async fn measure(
    podman: &Podman,
    plan: &CalibrationPlan,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<Sample>, CalibrationError> {
    if plan.sizes_mib.is_empty() || plan.rates_mib_per_s.is_empty() {
        return Err(CalibrationError::Plan(
            "needs at least one size and one rate".into(),
        ));
    }
    if plan
        .rates_mib_per_s
        .iter()
        .any(|r| !r.is_finite() || *r < 0.0)
    {
        return Err(CalibrationError::Plan(
            "dirty rates must be finite and ≥ 0".into(),
        ));
    }
    let limits = HostLimits::detect()
        .map_err(|e| CalibrationError::Plan(format!("cannot read this host's limits: {e}")))?;
    let total = plan.sizes_mib.len() * plan.rates_mib_per_s.len() * plan.repeats.max(1) as usize;
    let mut samples = Vec::with_capacity(total);
    let runs = plan.rates_mib_per_s.iter().flat_map(|&rate| {
        plan.sizes_mib
            .iter()
            .flat_map(move |&mib| std::iter::repeat_n((rate, mib), plan.repeats.max(1) as usize))
    });
    {
        for (rate, mib) in runs {
            progress(Progress {
                done: samples.len(),
                total,
                state_mib: mib,
                rate_mib_per_s: rate,
            });
            let name = format!("mose-calibrate-{mib}m-{}", samples.len());
            let result = sample_once(podman, plan, &limits, &name, mib, rate).await;
            // Whatever happened, the workload container goes.
            let _ = podman.remove(&name).await;
            samples.push(result?);
        }
    }
    progress(Progress {
        done: total,
        total,
        state_mib: 0,
        rate_mib_per_s: 0.0,
    });
    Ok(samples)
}

async fn sample_once(
    podman: &Podman,
    plan: &CalibrationPlan,
    limits: &HostLimits,
    name: &str,
    mib: u32,
    rate: f64,
) -> Result<Sample, CalibrationError> {
    let rt = |error| CalibrationError::Runtime { mib, rate, error };
    let bad = |reason: String| CalibrationError::Sample { mib, rate, reason };
    let _ = podman.remove(name).await; // a crashed earlier run's leftover
    podman
        .create(&CreateSpec {
            name: name.to_string(),
            image: plan.image.clone(),
            command: Some(vec![
                "--mib".into(),
                mib.to_string(),
                "--mib-per-sec".into(),
                rate.to_string(),
            ]),
            netns: Netns::None,
            ulimits: limits.container_ulimits(),
            ..CreateSpec::default()
        })
        .await
        .map_err(rt)?;
    podman.start(name).await.map_err(rt)?;
    // The workload fills its memory with random data first; wait until it is resident.
    let want = u64::from(mib) << 20;
    let started = Instant::now();
    loop {
        let stats = podman.stats(name).await.map_err(rt)?;
        if stats.mem_usage_bytes >= want {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(bad(format!(
                "workload reached only {} of {want} bytes in 60 s",
                stats.mem_usage_bytes
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the dirtying reach its rate before freezing.
    tokio::time::sleep(Duration::from_millis(500)).await;

    std::fs::create_dir_all(&plan.scratch)
        .map_err(|e| bad(format!("scratch dir {}: {e}", plan.scratch.display())))?;
    // Before the full checkpoint: without `withPrevious` it ignores the chain (which is
    // removed again anyway), so the dump measured below is the same as without pre-dumps.
    let pre_dump = match plan.pre_dumps {
        true => Some(measure_pre_dumps(podman, plan, name, mib, rate).await?),
        false => None,
    };
    let archive = plan.scratch.join(format!("{name}.tar"));
    let mut file = tokio::fs::File::create(&archive)
        .await
        .map_err(|e| bad(format!("{}: {e}", archive.display())))?;
    let ck = podman
        .checkpoint(name, &CheckpointOptions::default(), &mut file)
        .await
        .map_err(rt);
    drop(file);
    let restored = match ck {
        Ok(ck) => {
            // An import recreates the container with its ID, which must be free on this host.
            podman.remove(name).await.map_err(rt)?;
            let reader = tokio::fs::File::open(&archive)
                .await
                .map_err(|e| bad(format!("{}: {e}", archive.display())))?;
            podman
                .restore(&RestoreOptions::default(), reader)
                .await
                .map_err(rt)
                .map(|r| (ck, r))
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&archive);
    let (ck, rs) = restored?;
    let dump = ck
        .criu
        .ok_or_else(|| bad("the checkpoint archive carried no CRIU statistics".into()))?;
    let restore = rs
        .criu
        .ok_or_else(|| bad("podman returned no CRIU restore statistics".into()))?;
    let mut sample = Sample {
        requested_mib: mib,
        dirty_rate_bytes_per_s: rate * (1u64 << 20) as f64,
        state_bytes: dump.pages_written * crate::runtime::capabilities::page_size() as u64,
        archive_bytes: ck.archive_bytes,
        freezing_s: dump.freezing_time_us as f64 / 1e6,
        frozen_s: dump.frozen_time_us as f64 / 1e6,
        podman_checkpoint_s: ck.podman_time.as_secs_f64(),
        criu_restore_s: restore.restore_time_us as f64 / 1e6,
        podman_restore_s: rs.elapsed.as_secs_f64(),
        ..Sample::default()
    };
    sample.pre_dump = pre_dump;
    Ok(sample)
}

/// Two chained pre-dump rounds on the running workload `name`: `cal-0` starts a new chain,
/// `cal-1` holds what was dirtied since and is written as a round archive to measure its size.
/// The archive and the chain are removed afterwards.
async fn measure_pre_dumps(
    podman: &Podman,
    plan: &CalibrationPlan,
    name: &str,
    mib: u32,
    rate: f64,
) -> Result<PreDumpValues, CalibrationError> {
    let rt = |error| CalibrationError::Runtime { mib, rate, error };
    let bad = |reason: String| CalibrationError::Sample { mib, rate, reason };
    let page = u64::from(crate::runtime::capabilities::page_size());
    let first = podman
        .pre_dump(name, "cal-0", None, PRE_DUMP_TIMEOUT)
        .await
        .map_err(rt)?;
    let second = podman
        .pre_dump(name, "cal-1", Some("cal-0"), PRE_DUMP_TIMEOUT)
        .await
        .map_err(rt)?;
    let stats = |criu: Option<CriuDumpStats>, which: &str| {
        criu.ok_or_else(|| {
            bad(format!(
                "the {which} pre-dump round left no CRIU statistics"
            ))
        })
    };
    let (s0, s1) = (stats(first.criu, "first")?, stats(second.criu, "second")?);
    let archive = plan.scratch.join(format!("{name}.cal-1.tar"));
    let (dir, out) = (second.dir.clone(), archive.clone());
    let written =
        tokio::task::spawn_blocking(move || write_round_archive(&dir, "cal-1", &out)).await;
    let _ = std::fs::remove_file(&archive);
    let second_archive_bytes = match written {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => return Err(bad(format!("{}: {e}", archive.display()))),
        Err(e) => return Err(bad(format!("writing {}: {e}", archive.display()))),
    };
    podman.drop_pre_dumps(name).await.map_err(rt)?;
    // CRIU leaves a statistic it did not take at 0.
    let memory_us = match s0.memwrite_time_us {
        0 => s0.memdump_time_us,
        us => us,
    };
    Ok(PreDumpValues {
        state_bytes: s0.pages_written * page,
        frozen_s: s0.frozen_time_us as f64 / 1e6,
        memory_s: memory_us as f64 / 1e6,
        second_state_bytes: s1.pages_written * page,
        second_archive_bytes,
    })
}

/// The median of each measured field over the runs of the same size and rate.
fn collapse(samples: &[Sample]) -> Vec<Sample> {
    let mut keys: Vec<(u32, f64)> = samples
        .iter()
        .map(|s| (s.requested_mib, s.dirty_rate_bytes_per_s))
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    keys.dedup();
    keys.into_iter()
        .map(|(mib, rate)| {
            let runs: Vec<&Sample> = samples
                .iter()
                .filter(|s| s.requested_mib == mib && s.dirty_rate_bytes_per_s == rate)
                .collect();
            let med = |f: fn(&Sample) -> f64| {
                median(&runs.iter().map(|s| f(s)).collect::<Vec<_>>()).unwrap_or(f64::NAN)
            };
            // Pre-dump values only where every run has them.
            let pre: Option<Vec<PreDumpValues>> = runs.iter().map(|s| s.pre_dump).collect();
            let pre = pre.map(|pre| {
                let med = |f: fn(&PreDumpValues) -> f64| {
                    median(&pre.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
                };
                PreDumpValues {
                    state_bytes: mose_protocol::units::saturating_u64(med(|p| {
                        p.state_bytes as f64
                    })),
                    frozen_s: med(|p| p.frozen_s),
                    memory_s: med(|p| p.memory_s),
                    second_state_bytes: mose_protocol::units::saturating_u64(med(|p| {
                        p.second_state_bytes as f64
                    })),
                    second_archive_bytes: mose_protocol::units::saturating_u64(med(|p| {
                        p.second_archive_bytes as f64
                    })),
                }
            });
            let mut sample = Sample {
                requested_mib: mib,
                dirty_rate_bytes_per_s: rate,
                state_bytes: mose_protocol::units::saturating_u64(med(|s| s.state_bytes as f64)),
                archive_bytes: mose_protocol::units::saturating_u64(med(|s| {
                    s.archive_bytes as f64
                })),
                freezing_s: med(|s| s.freezing_s),
                frozen_s: med(|s| s.frozen_s),
                podman_checkpoint_s: med(|s| s.podman_checkpoint_s),
                criu_restore_s: med(|s| s.criu_restore_s),
                podman_restore_s: med(|s| s.podman_restore_s),
                ..Sample::default()
            };
            sample.pre_dump = pre;
            sample
        })
        .collect()
}

/// Fits the model to `samples` (repeated runs are reduced to their medians), starting from
/// `previous` for what cannot be measured here.
pub fn fit(
    all_samples: &[Sample],
    previous: &PamParams,
    min_r_squared: f64,
) -> Result<Calibration, CalibrationError> {
    let samples = &collapse(all_samples)[..];
    let mut fits = Vec::new();
    let mut notes = Vec::new();
    let mut accept = |law: &str, f: LinearFit| -> Result<LinearFit, CalibrationError> {
        fits.push(FitSummary {
            law: law.to_string(),
            intercept: f.intercept,
            slope: f.slope,
            r_squared: f.r_squared,
            relative_error: f.relative_error,
            residuals: f.residuals.clone(),
        });
        // A law that hardly grows with M (restore under TCG: ≈1.7 s at 4 to 32 MiB) has a low
        // R² however well it predicts; its points being close to the line is what counts.
        if f.r_squared < min_r_squared && f.relative_error > MAX_FLAT_LAW_ERROR {
            return Err(CalibrationError::BadFit {
                law: law.to_string(),
                r_squared: f.r_squared,
                threshold: min_r_squared,
                relative_error: f.relative_error,
            });
        }
        Ok(f)
    };
    let min_rate = samples
        .iter()
        .map(|s| s.dirty_rate_bytes_per_s)
        .fold(f64::INFINITY, f64::min);
    let max_rate = samples
        .iter()
        .map(|s| s.dirty_rate_bytes_per_s)
        .fold(0.0, f64::max);
    let points = |rate: f64, y: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples
            .iter()
            .filter(|s| s.dirty_rate_bytes_per_s == rate)
            .map(|s| (s.state_bytes as f64, y(s)))
            .collect()
    };
    let dump_low = accept(
        "dump frozen time at R_min",
        fit_line("dump frozen time", &points(min_rate, |s| s.frozen_s))?,
    )?;
    let restore = accept(
        "restore time",
        fit_line(
            "restore time",
            &samples
                .iter()
                .map(|s| (s.state_bytes as f64, s.criu_restore_s))
                .collect::<Vec<_>>(),
        )?,
    )?;
    let mut params = previous.clone();
    params.phi_d_s = dump_low.intercept.max(0.0);
    params.gamma_d_s_per_byte.at_zero_rate = dump_low.slope.max(0.0);
    if max_rate > min_rate {
        let dump_high = accept(
            "dump frozen time at R_max",
            fit_line("dump frozen time", &points(max_rate, |s| s.frozen_s))?,
        )?;
        // γ_d grows linearly with R between the two measured rates (the paper's shape).
        params.gamma_d_s_per_byte.per_byte_per_s =
            ((dump_high.slope - dump_low.slope) / (max_rate - min_rate)).max(0.0);
    } else {
        notes.push("only one dirty rate measured: γ_d's growth with R kept from before".into());
    }
    params.psi_s = restore.intercept.max(0.0);
    params.omega_s_per_byte = restore.slope.max(0.0);
    let med = |what: &str, v: Vec<f64>| {
        median(&v).ok_or_else(|| CalibrationError::Plan(format!("no usable samples for {what}")))
    };
    params.beta_s = med("β", samples.iter().map(|s| s.freezing_s).collect())?;
    let alpha_c = med(
        "α_c",
        samples
            .iter()
            .map(|s| s.podman_checkpoint_s / (s.freezing_s + s.frozen_s))
            .collect(),
    )?;
    let alpha_r = med(
        "α_r",
        samples
            .iter()
            .map(|s| s.podman_restore_s / s.criu_restore_s)
            .collect(),
    )?;
    if alpha_c < 1.0 || alpha_r < 1.0 {
        notes.push(format!(
            "Podman measured faster than CRIU (α_c {alpha_c:.2}, α_r {alpha_r:.2}); clamped to 1"
        ));
    }
    params.alpha_c = alpha_c.max(1.0);
    params.alpha_r = alpha_r.max(1.0);
    params.tau1 = med(
        "τ₁",
        samples
            .iter()
            .filter(|s| s.state_bytes > 0)
            .map(|s| s.archive_bytes as f64 / s.state_bytes as f64)
            .collect(),
    )?;
    params.rho = 1.0; // archives are exported uncompressed
    params.page_size_bytes = crate::runtime::capabilities::page_size() as u64;
    let measured = samples.iter().filter(|s| s.pre_dump.is_some()).count();
    let pre: Option<Vec<(f64, PreDumpValues)>> = samples
        .iter()
        .map(|s| s.pre_dump.map(|p| (s.dirty_rate_bytes_per_s, p)))
        .collect();
    match pre {
        Some(pre) => {
            let frozen = accept(
                "pre-dump frozen time at R_min",
                fit_line(
                    "pre-dump frozen time",
                    &pre.iter()
                        .filter(|(rate, _)| *rate == min_rate)
                        .map(|(_, p)| (p.state_bytes as f64, p.frozen_s))
                        .collect::<Vec<_>>(),
                )?,
            )?;
            // The first round writes all memory whatever the rate: every sample is a point.
            let memory = accept(
                "pre-dump memory time",
                fit_line(
                    "pre-dump memory time",
                    &pre.iter()
                        .map(|(_, p)| (p.state_bytes as f64, p.memory_s))
                        .collect::<Vec<_>>(),
                )?,
            )?;
            params.phi_p_s = frozen.intercept.max(0.0);
            params.gamma_p_s_per_byte = frozen.slope.max(0.0);
            params.delta_s = memory.intercept.max(0.0);
            params.lambda_s_per_byte = memory.slope.max(0.0);
            // At the highest rate only: a round of a few pages is mostly CRIU's fixed files,
            // which a per-page factor would blow up.
            let incremental: Vec<f64> = pre
                .iter()
                .filter(|(rate, p)| *rate == max_rate && p.second_state_bytes > 0)
                .map(|(_, p)| p.second_archive_bytes as f64 / p.second_state_bytes as f64)
                .collect();
            match median(&incremental) {
                Some(tau2) => params.tau2 = tau2,
                None => {
                    notes.push("no second pre-dump round at the highest rate wrote a page: τ₂ kept from before".into())
                }
            }
            notes.push("η is informational (not in the prediction): kept from before".into());
        }
        None if measured > 0 => notes.push(format!(
            "pre-dumps measured at only {measured} of {} sizes and rates: pre-dump laws \
             (φ_p, γ_p, δ, Λ, η, τ₂) kept from before",
            samples.len()
        )),
        None => notes.push(
            "pre-dump laws (φ_p, γ_p, δ, Λ, η, τ₂) are not measured yet: kept from before".into(),
        ),
    }
    Ok(Calibration {
        params,
        fits,
        samples: all_samples.to_vec(),
        notes,
    })
}

/// Where an agent keeps its calibration: `<work_dir>/pam.json`.
pub fn stored_path(work_dir: &Path) -> PathBuf {
    work_dir.join("pam.json")
}

/// Stores a calibration as JSON (written to a temp file, then renamed).
pub fn store(path: &Path, calibration: &Calibration) -> Result<(), CalibrationError> {
    let err = |reason: String| CalibrationError::Store {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let json = serde_json::to_vec_pretty(calibration).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// Loads a stored calibration; `Ok(None)` when none was stored yet.
pub fn load(path: &Path) -> Result<Option<Calibration>, CalibrationError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CalibrationError::Store {
                    path: path.to_path_buf(),
                    reason: format!("not a calibration: {e}"),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CalibrationError::Store {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples from known laws: frozen = 0.02 + 2e-9·M (+1e-17·R·M), restore = 0.05 + 3e-9·M.
    fn synthetic(noise: f64) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut flip = 1.0;
        for rate in [0.0, 20.0 * 1048576.0] {
            for mib in [1u32, 10, 50, 100] {
                let m = f64::from(mib) * 1048576.0;
                flip = -flip;
                let frozen = 0.02 + (2e-9 + 1e-17 * rate) * m + flip * noise;
                let restore = 0.05 + 3e-9 * m - flip * noise;
                out.push(Sample {
                    requested_mib: mib,
                    dirty_rate_bytes_per_s: rate,
                    state_bytes: mose_protocol::units::saturating_u64(m),
                    archive_bytes: mose_protocol::units::saturating_u64(m * 1.02),
                    freezing_s: 0.004,
                    frozen_s: frozen,
                    podman_checkpoint_s: 3.0 * (0.004 + frozen),
                    criu_restore_s: restore,
                    podman_restore_s: 2.0 * restore,
                    ..Sample::default()
                });
            }
        }
        out
    }

    /// `samples` with pre-dumps from known laws: first-round frozen = 0.01 + 5e-10·M at R_min
    /// (+1e-17·R·M above it, which the φ_p fit must not see), memory time = 0.03 + 4e-9·M ± noise,
    /// second round R·0.5 s of dirtied bytes in an archive τ₂ = 1.25 times as large (none at
    /// R = 0, with an archive of metadata only, which τ₂ must not see).
    fn with_pre_dumps(mut samples: Vec<Sample>, noise: f64) -> Vec<Sample> {
        let mut flip = 1.0;
        for s in &mut samples {
            flip = -flip;
            let m = s.state_bytes + 8 * 4096; // a few more pages than the dump: not the same x
            let r = s.dirty_rate_bytes_per_s;
            let second = mose_protocol::units::saturating_u64(r * 0.5) / 4096 * 4096;
            s.pre_dump = Some(PreDumpValues {
                state_bytes: m,
                frozen_s: 0.01 + (5e-10 + 1e-17 * r) * m as f64,
                memory_s: 0.03 + 4e-9 * m as f64 + flip * noise,
                second_state_bytes: second,
                second_archive_bytes: if second == 0 { 20_000 } else { second / 4 * 5 },
            });
        }
        samples
    }

    #[test]
    fn known_pre_dump_laws_are_recovered() {
        let previous = PamParams::paper_defaults();
        let c = fit(&with_pre_dumps(synthetic(0.0), 0.0), &previous, 0.8).unwrap();
        let p = &c.params;
        assert!((p.phi_p_s - 0.01).abs() < 1e-9, "{}", p.phi_p_s);
        assert!(
            (p.gamma_p_s_per_byte - 5e-10).abs() < 1e-16,
            "{}",
            p.gamma_p_s_per_byte
        );
        assert!((p.delta_s - 0.03).abs() < 1e-9, "{}", p.delta_s);
        assert!((p.lambda_s_per_byte - 4e-9).abs() < 1e-15);
        assert!((p.tau2 - 1.25).abs() < 1e-12, "{}", p.tau2);
        assert_eq!(p.eta, previous.eta, "η is kept");
        // The dump laws are the same as without pre-dumps.
        let without = fit(&synthetic(0.0), &previous, 0.8).unwrap().params;
        let mut same = p.clone();
        (same.phi_p_s, same.gamma_p_s_per_byte) = (without.phi_p_s, without.gamma_p_s_per_byte);
        (same.delta_s, same.lambda_s_per_byte) = (without.delta_s, without.lambda_s_per_byte);
        same.tau2 = without.tau2;
        assert_eq!(same, without);
        let laws: Vec<&str> = c.fits.iter().map(|f| f.law.as_str()).collect();
        assert!(laws.contains(&"pre-dump frozen time at R_min"), "{laws:?}");
        assert!(laws.contains(&"pre-dump memory time"), "{laws:?}");
        assert!(c.fits.iter().all(|f| f.r_squared > 0.999));
        assert!(
            !c.notes.iter().any(|n| n.contains("not measured")),
            "{:?}",
            c.notes
        );
        assert!(c.notes.iter().any(|n| n.contains("η")), "{:?}", c.notes);
        // Repeated runs reduce to medians here too.
        let mut runs = with_pre_dumps(synthetic(0.0), 0.0);
        let mut disturbed = with_pre_dumps(synthetic(0.0), 0.0);
        for s in &mut disturbed {
            if let Some(p) = &mut s.pre_dump {
                p.memory_s += 5.0;
            }
        }
        runs.extend(with_pre_dumps(synthetic(0.0), 0.0));
        runs.extend(disturbed);
        let c = fit(&runs, &previous, 0.8).unwrap();
        assert!(
            (c.params.delta_s - 0.03).abs() < 1e-9,
            "{}",
            c.params.delta_s
        );
    }

    #[test]
    fn without_pre_dump_values_the_pre_dump_laws_are_kept() {
        let mut previous = PamParams::paper_defaults();
        (previous.phi_p_s, previous.gamma_p_s_per_byte) = (0.123, 4.5e-9);
        (previous.delta_s, previous.lambda_s_per_byte, previous.tau2) = (0.678, 9.1e-9, 1.3);
        let kept = |p: &PamParams| {
            (
                p.phi_p_s,
                p.gamma_p_s_per_byte,
                p.delta_s,
                p.lambda_s_per_byte,
                p.tau2,
                p.eta.clone(),
            )
        };
        let c = fit(&synthetic(0.0), &previous, 0.8).unwrap();
        assert_eq!(kept(&c.params), kept(&previous));
        assert!(c
            .notes
            .iter()
            .any(|n| n.contains("pre-dump laws (φ_p, γ_p, δ, Λ, η, τ₂) are not measured yet")));
        assert_eq!(c.fits.len(), 3, "no pre-dump fit");
        // Some samples without them (one size and rate, or one run of it): kept as well.
        for lacking in [&[1][..], &[1, 9]] {
            let mut runs = with_pre_dumps(synthetic(0.0), 0.0);
            runs.extend(with_pre_dumps(synthetic(0.0), 0.0));
            for &i in lacking {
                runs[i].pre_dump = None;
            }
            let c = fit(&runs, &previous, 0.8).unwrap();
            assert_eq!(kept(&c.params), kept(&previous));
            assert!(
                c.notes.iter().any(|n| n.contains("only 7 of 8")),
                "{:?}",
                c.notes
            );
        }
        // A stored sample from before pre-dumps loads, and one without them stores as before.
        let json = r#"{"requested_mib":1,"dirty_rate_bytes_per_s":0.0,"state_bytes":4096,
            "archive_bytes":5000,"freezing_s":0.1,"frozen_s":0.2,"podman_checkpoint_s":0.5,
            "criu_restore_s":0.3,"podman_restore_s":0.6}"#;
        let old: Sample = serde_json::from_str(json).unwrap();
        assert_eq!(old.pre_dump, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("pre_dump"));
        let new = &with_pre_dumps(synthetic(0.0), 0.0)[0];
        let back: Sample = serde_json::from_str(&serde_json::to_string(new).unwrap()).unwrap();
        assert_eq!(&back, new);
    }

    #[test]
    fn a_bad_pre_dump_fit_is_refused() {
        let err = fit(
            &with_pre_dumps(synthetic(0.0), 0.2),
            &PamParams::paper_defaults(),
            0.8,
        )
        .unwrap_err();
        match &err {
            CalibrationError::BadFit { law, .. } => assert_eq!(law, "pre-dump memory time"),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("R²"));
    }

    #[test]
    fn known_laws_are_recovered() {
        let c = fit(&synthetic(0.0), &PamParams::paper_defaults(), 0.8).unwrap();
        let p = &c.params;
        assert!((p.phi_d_s - 0.02).abs() < 1e-9, "{}", p.phi_d_s);
        assert!((p.gamma_d_s_per_byte.at_zero_rate - 2e-9).abs() < 1e-15);
        assert!((p.gamma_d_s_per_byte.per_byte_per_s - 1e-17).abs() < 1e-21);
        assert!((p.psi_s - 0.05).abs() < 1e-9);
        assert!((p.omega_s_per_byte - 3e-9).abs() < 1e-15);
        assert!((p.alpha_c - 3.0).abs() < 1e-9);
        assert!((p.alpha_r - 2.0).abs() < 1e-9);
        assert!((p.tau1 - 1.02).abs() < 1e-6);
        assert!((p.beta_s - 0.004).abs() < 1e-12);
        assert!(c.fits.iter().all(|f| f.r_squared > 0.999));
        assert!(c.notes.iter().any(|n| n.contains("pre-dump")));
    }

    #[test]
    fn a_clearly_bad_fit_is_refused() {
        let err = fit(&synthetic(0.2), &PamParams::paper_defaults(), 0.8).unwrap_err();
        assert!(matches!(err, CalibrationError::BadFit { .. }), "{err}");
        assert!(err.to_string().contains("R²"));
    }

    #[test]
    fn repeated_runs_are_reduced_to_medians() {
        let mut runs = synthetic(0.0);
        let mut disturbed = synthetic(0.0);
        for s in &mut disturbed {
            s.criu_restore_s += 5.0; // one run per point hit by a busy neighbour
        }
        runs.extend(synthetic(0.0));
        runs.extend(disturbed);
        let c = fit(&runs, &PamParams::paper_defaults(), 0.8).unwrap();
        assert!((c.params.psi_s - 0.05).abs() < 1e-9, "{}", c.params.psi_s);
        assert_eq!(c.samples.len(), 24, "the report keeps every run");
    }

    #[test]
    fn one_size_is_not_enough() {
        let one: Vec<Sample> = synthetic(0.0)
            .into_iter()
            .filter(|s| s.requested_mib == 10)
            .collect();
        assert!(matches!(
            fit(&one, &PamParams::paper_defaults(), 0.8),
            Err(CalibrationError::Fit(FitError::TooFewPoints { .. }))
        ));
    }

    #[test]
    fn store_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/pam.json");
        assert!(load(&path).unwrap().is_none());
        let c = fit(&synthetic(0.0), &PamParams::paper_defaults(), 0.8).unwrap();
        store(&path, &c).unwrap();
        assert_eq!(load(&path).unwrap().unwrap(), c);
        std::fs::write(&path, b"{ nope").unwrap();
        assert!(load(&path)
            .unwrap_err()
            .to_string()
            .contains("not a calibration"));
    }
}
