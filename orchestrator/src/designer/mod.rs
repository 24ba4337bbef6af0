//! The migration designer: the PAM model ([`pam`]) and the MOSE configuration algorithm
//! ([`configure`](mod@configure)) as pure functions — no I/O, no clocks, no randomness — so
//! every plan can be reproduced from its inputs. Both are explained in `docs/pam.md`.

pub mod configure;
pub mod pam;

pub use configure::{configure, DesignRequest, MAX_PRECOPY_ROUNDS};
pub use pam::{cold_law, predict, ColdLaw, ModelInput, Prediction, Round};

use mose_protocol::model::PamParams;

/// Why the designer refused its input. Bad numbers are reported, never panicked on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DesignError {
    #[error("{name} must be a finite number, got {value}")]
    NotFinite { name: &'static str, value: f64 },
    #[error("{name} must be greater than zero, got {value}")]
    NotPositive { name: &'static str, value: f64 },
    #[error("{name} must not be negative, got {value}")]
    Negative { name: &'static str, value: f64 },
    #[error("{name} must be at least {min}, got {value}")]
    BelowMinimum {
        name: &'static str,
        value: f64,
        min: f64,
    },
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
    // These scale a volume or a time: zero would predict free transfers or free checkpoints.
    for (name, value) in [
        ("alpha_c", p.alpha_c),
        ("alpha_r", p.alpha_r),
        ("rho", p.rho),
        ("tau1", p.tau1),
        ("tau2", p.tau2),
        ("page_size_bytes", p.page_size_bytes as f64),
    ] {
        positive(name, value)?;
    }
    Ok(())
}
