//! PAM data types that travel on the wire: the per-host calibrated model parameters
//! ([`PamParams`]) and the migration designer's output ([`Plan`]).
//!
//! Notation follows `docs/pam.md` ("Notation"); every field carries its unit in its name
//! (`_s` seconds, `_bytes` bytes, `_s_per_byte` seconds per byte); rates are typed
//! ([`BytesPerSec`]) and named `_bytes_per_s`.
//! postcard encodes enum variants by index, so new variants go at the end.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::units::BytesPerSec;

/// How a service is moved (docs/architecture.md#migration-strategies). Serialised as `cold`,
/// `precopy`, `iterative_precopy`, `ms2m`, `hot_standby`, the names the report format uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Strategy {
    /// Stop-and-copy: freeze, dump everything, transfer, restore.
    Cold,
    /// One pre-dump while the service runs, then a dump of what it dirtied meanwhile.
    Precopy,
    /// Several pre-copy rounds before the final dump.
    IterativePrecopy,
    /// Message-based migration with replay (MS2M paper).
    Ms2m,
    /// Hot standby with review and switch (hot-standby paper).
    HotStandby,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Cold => "cold",
            Strategy::Precopy => "precopy",
            Strategy::IterativePrecopy => "iterative_precopy",
            Strategy::Ms2m => "ms2m",
            Strategy::HotStandby => "hot_standby",
        })
    }
}

/// What the task owner wants minimised (the "vertical's objective" of the MOSE paper).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Objective {
    /// Minimise the service disruption seen by the client.
    Downtime,
    /// Minimise bandwidth (and CPU) spent on the migration.
    Resources,
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Objective::Downtime => "downtime",
            Objective::Resources => "resources",
        })
    }
}

/// A coefficient that depends linearly on the dirty rate R:
/// `value(R) = at_zero_rate + per_byte_per_s · R`, R in bytes/s.
///
/// The PAM paper fits its R-dependent coefficients as linear in the normalised rate
/// R̂ = (R − R_min)/(R_max − R_min); that is the same family written in absolute R, so a
/// calibration at two rates gives both numbers directly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLaw {
    /// Value at R = 0.
    pub at_zero_rate: f64,
    /// Change of the value per byte/s of dirty rate.
    pub per_byte_per_s: f64,
}

impl RateLaw {
    /// The coefficient at dirty rate `dirty_rate_bytes_per_s`.
    pub fn at(&self, dirty_rate_bytes_per_s: f64) -> f64 {
        self.at_zero_rate + self.per_byte_per_s * dirty_rate_bytes_per_s
    }
}

/// Calibrated PAM parameters of one host (docs/pam.md#calibration). Checkpoint-side fields
/// (β … Λ, α_c, ρ, τ) describe a host as a migration source, restore-side fields (ψ, ω, α_r) as
/// a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PamParams {
    /// β: CRIU freezing time (seizing the process tree) (s).
    pub beta_s: f64,
    /// φ_p: pre-dump frozen time independent of M (s).
    pub phi_p_s: f64,
    /// γ_p: pre-dump frozen time per byte of state (s/B).
    pub gamma_p_s_per_byte: f64,
    /// φ_d: dump frozen time independent of M (s).
    pub phi_d_s: f64,
    /// γ_d(R): dump frozen time per byte of state (s/B), growing with the dirty rate.
    pub gamma_d_s_per_byte: RateLaw,
    /// δ: pre-dump memory time (page selection and extraction after unfreezing) independent of M (s).
    pub delta_s: f64,
    /// Λ: pre-dump memory time per byte of state (s/B).
    pub lambda_s_per_byte: f64,
    /// η(R) ∈ (0, 1]: share of the pre-dump memory work a dump does under dirty tracking
    /// (paper eq. 13). A dump writes memory while frozen, so this work is already inside
    /// φ_d + γ_d(R)·M and the model does not add it again; calibration publishes it so the
    /// γ_d fit can be cross-checked against the paper's decomposition.
    pub eta: RateLaw,
    /// ψ: CRIU restore time independent of M (s).
    pub psi_s: f64,
    /// ω: CRIU restore time per byte of state (s/B).
    pub omega_s_per_byte: f64,
    /// α_c: Podman+runc overhead factor over CRIU for checkpoints (dimensionless, ≥ 1: Podman
    /// runs CRIU inside its own work).
    pub alpha_c: f64,
    /// α_r: Podman+runc overhead factor over CRIU for restores (dimensionless, ≥ 1).
    pub alpha_r: f64,
    /// ρ: compressed / uncompressed image size (1 = no compression).
    pub rho: f64,
    /// τ₁: image-format overhead of a full image (first round, cold dump).
    pub tau1: f64,
    /// τ₂: image-format overhead of an incremental image (rounds after the first).
    pub tau2: f64,
    /// σ: memory page size (B).
    pub page_size_bytes: u64,
    /// COAT: clearing the service's network namespace at the source (s).
    pub netns_clear_s: f64,
    /// COAT: recreating the network namespace at the destination (s).
    pub netns_create_s: f64,
    /// COAT: redirecting the client's flow to the destination (s).
    pub flow_update_s: f64,
}

impl PamParams {
    /// Sanity values from the PAM paper, not calibrated.
    ///
    /// Orders of magnitude read off the paper's figures (CRIU layer, 4-vCPU VMs, 4 KiB pages)
    /// and scaled with the Podman timings measured for COAT (docs/coat.md#why-this-order), so a
    /// 10 MB service predicts about 0.9 s of cold downtime at 1 Gbit/s (MOSE measured 0.76 s).
    /// Use them for tests and as a last resort before a host has been calibrated; never as
    /// constants.
    pub fn paper_defaults() -> Self {
        PamParams {
            beta_s: 0.005,
            phi_p_s: 0.03,
            gamma_p_s_per_byte: 1e-9,
            phi_d_s: 0.05,
            // Doubles at R = 100 MB/s, where η reaches 1 (the paper's R_max end of its fits).
            gamma_d_s_per_byte: RateLaw {
                at_zero_rate: 1e-9,
                per_byte_per_s: 1e-17,
            },
            delta_s: 0.005,
            lambda_s_per_byte: 2e-9,
            eta: RateLaw {
                at_zero_rate: 0.01,
                per_byte_per_s: 9.9e-9,
            },
            psi_s: 0.1,
            omega_s_per_byte: 2e-9,
            alpha_c: 4.0,
            alpha_r: 3.0,
            rho: 1.0,
            tau1: 1.02,
            tau2: 1.1,
            page_size_bytes: 4096,
            netns_clear_s: 0.05,
            netns_create_s: 0.15,
            flow_update_s: 0.03,
        }
    }
}

/// The migration designer's decision for one task, with the predictions it rests on.
///
/// PAM predictions are upper bounds (evaluated at the worst-case dirty rate R_max); the measured
/// KPIs are reported next to them once the migration has run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Plan {
    /// The migration strategy chosen.
    pub strategy: Strategy,
    /// The KPI the designer optimised.
    pub objective: Objective,
    /// Bandwidth to allocate source → destination.
    pub bandwidth_bytes_per_s: BytesPerSec,
    /// Pre-copy rounds run while the service keeps running, before the final dump:
    /// 0 for cold, 1 for pre-copy, ≥ 2 for iterative pre-copy.
    pub rounds: u32,
    /// Predicted downtime T_down (s).
    pub predicted_downtime_s: f64,
    /// Predicted total migration time T_mig (s).
    pub predicted_total_s: f64,
    /// Whether the predictions meet every KPI target of the task (θ_down and θ_mig).
    pub target_met: bool,
    /// Why this plan: the branch taken, the numbers compared, and any fallback reason.
    pub explanation: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::from_name;

    fn plan() -> Plan {
        Plan {
            strategy: Strategy::IterativePrecopy,
            objective: Objective::Downtime,
            bandwidth_bytes_per_s: BytesPerSec(125_000_000),
            rounds: 3,
            predicted_downtime_s: 1.02274432,
            predicted_total_s: 3.59941504,
            target_met: true,
            explanation: "iterative pre-copy, 3 rounds".into(),
        }
    }

    #[test]
    fn params_round_trip() {
        let p = PamParams::paper_defaults();
        let bytes = postcard::to_stdvec(&p).unwrap();
        assert_eq!(postcard::from_bytes::<PamParams>(&bytes).unwrap(), p);
    }

    #[test]
    fn plan_round_trip() {
        let p = plan();
        let bytes = postcard::to_stdvec(&p).unwrap();
        assert_eq!(postcard::from_bytes::<Plan>(&bytes).unwrap(), p);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let bytes = postcard::to_stdvec(&plan()).unwrap();
        for cut in 0..bytes.len() {
            assert!(postcard::from_bytes::<Plan>(&bytes[..cut]).is_err());
        }
        assert!(postcard::from_bytes::<Strategy>(&[9]).is_err());
        assert!(postcard::from_bytes::<Objective>(&[2]).is_err());
        assert!(postcard::from_bytes::<PamParams>(&[0xff; 7]).is_err());
    }

    #[test]
    fn display_matches_the_serde_names() {
        let all = [
            (Strategy::Cold, "cold"),
            (Strategy::Precopy, "precopy"),
            (Strategy::IterativePrecopy, "iterative_precopy"),
            (Strategy::Ms2m, "ms2m"),
            (Strategy::HotStandby, "hot_standby"),
        ];
        for (s, name) in all {
            assert_eq!(s.to_string(), name);
            assert_eq!(from_name::<Strategy>(name), Ok(s));
        }
        for (o, name) in [
            (Objective::Downtime, "downtime"),
            (Objective::Resources, "resources"),
        ] {
            assert_eq!(o.to_string(), name);
            assert_eq!(from_name::<Objective>(name), Ok(o));
        }
    }

    #[test]
    fn rate_law_is_linear_in_the_dirty_rate() {
        let g = PamParams::paper_defaults().gamma_d_s_per_byte;
        assert_eq!(g.at(0.0), 1e-9);
        assert!((g.at(1e8) - 2e-9).abs() < 1e-24);
    }
}
