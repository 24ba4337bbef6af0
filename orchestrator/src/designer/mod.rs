//! The migration designer: the PAM model ([`pam`]) and the MOSE configuration algorithm
//! ([`configure`](mod@configure)) as pure functions — no I/O, no clocks, no randomness — so
//! every plan can be reproduced from its inputs. Both are explained in `docs/pam.md`.

pub mod configure;
pub mod pam;

pub use configure::{configure, DesignRequest, MAX_PRECOPY_ROUNDS};
pub use pam::{cold_law, predict, ColdLaw, ModelInput, Prediction, Round};

use mose_protocol::model::PamParams;

/// The parameters of one migration from the calibrations of its two hosts: checkpoint-side
/// fields (β … Λ, η, α_c, ρ, τ, σ) and the netns clearing from the source, which dumps;
/// restore-side fields (ψ, ω, α_r) and the netns creation from the destination, which
/// restores. The flow update runs on neither (the mobile agent's switch); the slower of the two
/// hosts' values keeps the prediction an upper bound.
pub fn pair_params(source: &PamParams, destination: &PamParams) -> PamParams {
    PamParams {
        psi_s: destination.psi_s,
        omega_s_per_byte: destination.omega_s_per_byte,
        alpha_r: destination.alpha_r,
        netns_create_s: destination.netns_create_s,
        flow_update_s: source.flow_update_s.max(destination.flow_update_s),
        ..source.clone()
    }
}

/// Why the designer refused its input. Bad numbers are reported, never panicked on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DesignError {
    /// An input is NaN or infinite.
    #[error("{name} must be a finite number, got {value}")]
    NotFinite {
        /// The input's name.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// An input that must be positive is zero or negative.
    #[error("{name} must be greater than zero, got {value}")]
    NotPositive {
        /// The input's name.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// An input that must not be negative is.
    #[error("{name} must not be negative, got {value}")]
    Negative {
        /// The input's name.
        name: &'static str,
        /// Its value.
        value: f64,
    },
    /// An input is below its lower bound.
    #[error("{name} must be at least {min}, got {value}")]
    BelowMinimum {
        /// The input's name.
        name: &'static str,
        /// Its value.
        value: f64,
        /// The bound.
        min: f64,
    },
    /// Every input is valid but together they are beyond f64 (e.g. exabytes at bytes/s):
    /// a plan must not carry ∞, which JSON cannot even encode.
    #[error("the {what} overflows for these inputs")]
    Overflow {
        /// The quantity that overflowed.
        what: &'static str,
    },
}

/// `value` if it is finite: guards a computed result against overflow.
fn finite_result(what: &'static str, value: f64) -> Result<f64, DesignError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(DesignError::Overflow { what })
    }
}

/// `value` if it is finite and > 0.
fn positive(name: &'static str, value: f64) -> Result<f64, DesignError> {
    if !value.is_finite() {
        Err(DesignError::NotFinite { name, value })
    } else if value <= 0.0 {
        Err(DesignError::NotPositive { name, value })
    } else {
        Ok(value)
    }
}

/// `value` if it is finite and ≥ 0.
fn non_negative(name: &'static str, value: f64) -> Result<f64, DesignError> {
    if !value.is_finite() {
        Err(DesignError::NotFinite { name, value })
    } else if value < 0.0 {
        Err(DesignError::Negative { name, value })
    } else {
        Ok(value)
    }
}

/// Checks every parameter the model reads, so the formulas never see NaN, ∞ or a sign that
/// would make a time negative or a volume vanish.
fn validate_params(p: &PamParams) -> Result<(), DesignError> {
    for (name, value) in [
        ("beta_s", p.beta_s),
        ("phi_p_s", p.phi_p_s),
        ("gamma_p_s_per_byte", p.gamma_p_s_per_byte),
        ("phi_d_s", p.phi_d_s),
        (
            "gamma_d_s_per_byte.at_zero_rate",
            p.gamma_d_s_per_byte.at_zero_rate,
        ),
        (
            "gamma_d_s_per_byte.per_byte_per_s",
            p.gamma_d_s_per_byte.per_byte_per_s,
        ),
        ("delta_s", p.delta_s),
        ("lambda_s_per_byte", p.lambda_s_per_byte),
        ("psi_s", p.psi_s),
        ("omega_s_per_byte", p.omega_s_per_byte),
        ("netns_clear_s", p.netns_clear_s),
        ("netns_create_s", p.netns_create_s),
        ("flow_update_s", p.flow_update_s),
    ] {
        non_negative(name, value)?;
    }
    // Podman runs CRIU inside its own work, so its time over CRIU's is at least 1. The model
    // relies on it: the running part of a round, Tᵢ − frozenᵢ, only stays ≥ 0 and growing
    // with M and R when the scaled processing covers the unscaled CRIU frozen time.
    for (name, value) in [("alpha_c", p.alpha_c), ("alpha_r", p.alpha_r)] {
        let value = positive(name, value)?;
        if value < 1.0 {
            return Err(DesignError::BelowMinimum {
                name,
                value,
                min: 1.0,
            });
        }
    }
    // These scale a volume: zero would predict free transfers.
    for (name, value) in [
        ("rho", p.rho),
        ("tau1", p.tau1),
        ("tau2", p.tau2),
        ("page_size_bytes", p.page_size_bytes as f64),
    ] {
        positive(name, value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_takes_each_side_from_the_host_that_does_it() {
        let source = PamParams::paper_defaults();
        let destination = PamParams {
            beta_s: 9.0,
            alpha_c: 9.0,
            psi_s: 0.7,
            omega_s_per_byte: 7e-9,
            alpha_r: 7.0,
            netns_clear_s: 9.0,
            netns_create_s: 0.7,
            flow_update_s: 0.7,
            ..PamParams::paper_defaults()
        };
        let pair = pair_params(&source, &destination);
        assert_eq!(
            pair,
            PamParams {
                psi_s: 0.7,
                omega_s_per_byte: 7e-9,
                alpha_r: 7.0,
                netns_create_s: 0.7,
                flow_update_s: 0.7,
                ..source.clone()
            }
        );
        // The flow update is the slower of the two whichever side it comes from.
        assert_eq!(pair_params(&destination, &source).flow_update_s, 0.7);
    }
}
