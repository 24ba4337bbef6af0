//! The PAM model (Calagna et al., ICC 2023; docs/pam.md#the-model): predicted downtime T_down
//! and total migration time T_mig for cold, pre-copy and iterative pre-copy.
//!
//! Rounds are counted as the number I of pre-copy rounds run while the service keeps running,
//! before the final stop-and-copy dump: I = 0 is cold, I = 1 pre-copy, I ≥ 2 iterative
//! pre-copy. (The paper's I counts the same rounds minus one: its eq. 1 sums i = 0..I.)
//!
//! ```text
//! round 0 (pre-dump): V₀ = ρ·τ₁·M          T₀ = α_c·(β + φ_p + γ_p·M + δ + Λ·M) + V₀/L
//! round i ≥ 1:        Nᵢ·σ = whole pages of min(M, R·(Tᵢ₋₁ − frozenᵢ₋₁))
//!                     Vᵢ = ρ·τ₂·Nᵢ·σ        Tᵢ = α_c·(β + φ_d + γ_d(R)·M) + Vᵢ/L
//! final dump:         T_down = α_c·(β + φ_d + γ_d(R)·M) + α_r·(ψ + ω·M) + T_coat + V_I/L
//!                     T_mig  = Σ_{i<I} Tᵢ + T_down
//! cold (I = 0):       V_0 = ρ·τ₁·M is the final volume, so T_down = T_mig.
//! ```

use mose_protocol::model::PamParams;

use super::{finite_result, non_negative, positive, validate_params, DesignError};

/// The workload and link a prediction is made for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelInput {
    /// M: the service's memory state (B).
    pub state_bytes: f64,
    /// R: bytes the service dirties per second (plan with its maximum R_max).
    pub dirty_rate_bytes_per_s: f64,
    /// L: bandwidth source → destination (B/s).
    pub bandwidth_bytes_per_s: f64,
}

impl ModelInput {
    fn validate(&self) -> Result<(), DesignError> {
        positive("state_bytes", self.state_bytes)?;
        non_negative("dirty_rate_bytes_per_s", self.dirty_rate_bytes_per_s)?;
        positive("bandwidth_bytes_per_s", self.bandwidth_bytes_per_s)?;
        Ok(())
    }
}

/// One pre-copy round run while the service keeps running.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    /// Vᵢ: bytes sent in this round.
    pub volume_bytes: f64,
    /// Tᵢ: checkpoint processing plus transfer (s).
    pub duration_s: f64,
    /// The part of Tᵢ the service spends frozen (CRIU frozen time) (s).
    pub frozen_s: f64,
}

/// What PAM predicts for one strategy and round count.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The I rounds before the final dump (empty for cold).
    pub rounds: Vec<Round>,
    /// V_I: bytes the final, frozen dump sends.
    pub final_volume_bytes: f64,
    /// T_down (s).
    pub downtime_s: f64,
    /// T_mig (s).
    pub total_s: f64,
}

/// φ_p + γ_p·M: CRIU frozen time of a pre-dump (s).
pub fn predump_frozen_s(p: &PamParams, state_bytes: f64) -> f64 {
    p.phi_p_s + p.gamma_p_s_per_byte * state_bytes
}

/// α_c·(β + φ_p + γ_p·M + δ + Λ·M): processing time of the first pre-dump (s).
pub fn predump_time_s(p: &PamParams, state_bytes: f64) -> f64 {
    p.alpha_c
        * (p.beta_s
            + predump_frozen_s(p, state_bytes)
            + p.delta_s
            + p.lambda_s_per_byte * state_bytes)
}

/// φ_d + γ_d(R)·M: CRIU frozen time of a dump (s).
pub fn dump_frozen_s(p: &PamParams, state_bytes: f64, dirty_rate_bytes_per_s: f64) -> f64 {
    p.phi_d_s + p.gamma_d_s_per_byte.at(dirty_rate_bytes_per_s) * state_bytes
}

/// α_c·(β + φ_d + γ_d(R)·M): processing time of a dump (s); the service is frozen throughout
/// the final one.
pub fn dump_time_s(p: &PamParams, state_bytes: f64, dirty_rate_bytes_per_s: f64) -> f64 {
    p.alpha_c * (p.beta_s + dump_frozen_s(p, state_bytes, dirty_rate_bytes_per_s))
}

/// α_r·(ψ + ω·M): restore time at the destination (s).
pub fn restore_time_s(p: &PamParams, state_bytes: f64) -> f64 {
    p.alpha_r * (p.psi_s + p.omega_s_per_byte * state_bytes)
}

/// T_coat: the COAT network steps inside the downtime (netns clear + create, flow update) (s).
pub fn coat_time_s(p: &PamParams) -> f64 {
    p.netns_clear_s + p.netns_create_s + p.flow_update_s
}

/// The part of T_down that does not depend on the bandwidth: final dump + restore + COAT (s).
fn stop_and_copy_fixed_s(p: &PamParams, state_bytes: f64, dirty_rate_bytes_per_s: f64) -> f64 {
    dump_time_s(p, state_bytes, dirty_rate_bytes_per_s)
        + restore_time_s(p, state_bytes)
        + coat_time_s(p)
}

/// Predicts T_down and T_mig with `rounds` pre-copy rounds (0 = cold, 1 = pre-copy,
/// ≥ 2 = iterative pre-copy).
///
/// Two choices keep the prediction an upper bound: the running time of a round counts
/// everything but CRIU's frozen time (Podman overhead and β included), so no dirtying is
/// missed; and dirtied bytes are rounded up to whole pages of σ, as CRIU writes pages.
pub fn predict(p: &PamParams, input: &ModelInput, rounds: u32) -> Result<Prediction, DesignError> {
    validate_params(p)?;
    input.validate()?;
    let m = input.state_bytes;
    let r = input.dirty_rate_bytes_per_s;
    let l = input.bandwidth_bytes_per_s;
    let sigma = p.page_size_bytes as f64;

    let mut done = Vec::with_capacity(rounds as usize);
    let mut volume = p.rho * p.tau1 * m;
    for i in 0..rounds {
        let (processing_s, frozen_s) = if i == 0 {
            (predump_time_s(p, m), predump_frozen_s(p, m))
        } else {
            (dump_time_s(p, m, r), dump_frozen_s(p, m, r))
        };
        let round = Round {
            volume_bytes: volume,
            duration_s: processing_s + volume / l,
            frozen_s,
        };
        // ≥ 0 because α_c ≥ 1 (checked above): the round's scaled processing covers its
        // CRIU frozen time.
        let running_s = round.duration_s - round.frozen_s;
        let dirtied_pages = (m.min(r * running_s) / sigma).ceil();
        volume = p.rho * p.tau2 * dirtied_pages * sigma;
        done.push(round);
    }

    let downtime_s = stop_and_copy_fixed_s(p, m, r) + volume / l;
    let total_s = done.iter().map(|round| round.duration_s).sum::<f64>() + downtime_s;
    // Every term is ≥ 0, so a finite total means finite rounds and downtime.
    finite_result("predicted total", total_s)?;
    Ok(Prediction {
        rounds: done,
        final_volume_bytes: volume,
        downtime_s,
        total_s,
    })
}

/// Cold downtime as a function of bandwidth: T_down(L) = `fixed_s` + `volume_bytes` / L.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColdLaw {
    /// Final dump + restore + COAT (s).
    pub fixed_s: f64,
    /// ρ·τ₁·M: the full image (B).
    pub volume_bytes: f64,
}

/// The cold-migration law for state `state_bytes` dirtied at `dirty_rate_bytes_per_s`
/// (the rate only moves γ_d). `predict(…, 0)` evaluates exactly this law.
pub fn cold_law(
    p: &PamParams,
    state_bytes: f64,
    dirty_rate_bytes_per_s: f64,
) -> Result<ColdLaw, DesignError> {
    validate_params(p)?;
    positive("state_bytes", state_bytes)?;
    non_negative("dirty_rate_bytes_per_s", dirty_rate_bytes_per_s)?;
    Ok(ColdLaw {
        fixed_s: finite_result(
            "fixed cold downtime",
            stop_and_copy_fixed_s(p, state_bytes, dirty_rate_bytes_per_s),
        )?,
        volume_bytes: finite_result("cold image volume", p.rho * p.tau1 * state_bytes)?,
    })
}

impl ColdLaw {
    /// T_down = T_mig at bandwidth `bandwidth_bytes_per_s` (s).
    pub fn downtime_s(&self, bandwidth_bytes_per_s: f64) -> f64 {
        self.fixed_s + self.volume_bytes / bandwidth_bytes_per_s
    }

    /// The smallest bandwidth (B/s) with T_down ≤ `theta_down_s`, solved exactly:
    /// L = V / (θ − fixed). `None` when the fixed costs alone reach θ (no bandwidth suffices).
    pub fn min_bandwidth(&self, theta_down_s: f64) -> Option<f64> {
        let slack_s = theta_down_s - self.fixed_s;
        (slack_s > 0.0).then(|| self.volume_bytes / slack_s)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mose_protocol::model::RateLaw;
    use proptest::prelude::*;

    /// The parameters of the worked example in docs/pam.md.
    pub(crate) fn example_params() -> PamParams {
        PamParams {
            beta_s: 0.01,
            phi_p_s: 0.04,
            gamma_p_s_per_byte: 1e-9,
            phi_d_s: 0.05,
            gamma_d_s_per_byte: RateLaw {
                at_zero_rate: 1e-9,
                per_byte_per_s: 1e-15,
            },
            delta_s: 0.01,
            lambda_s_per_byte: 2e-9,
            eta: RateLaw {
                at_zero_rate: 0.01,
                per_byte_per_s: 0.0,
            },
            psi_s: 0.1,
            omega_s_per_byte: 1e-9,
            alpha_c: 2.0,
            alpha_r: 1.5,
            rho: 1.0,
            tau1: 1.0,
            tau2: 1.25,
            page_size_bytes: 4096,
            netns_clear_s: 0.05,
            netns_create_s: 0.1,
            flow_update_s: 0.05,
        }
    }

    /// M = 100 MB, R = 1 MB/s, L = 125 MB/s (1 Gbit/s): the docs/pam.md workload.
    pub(crate) fn example_input() -> ModelInput {
        ModelInput {
            state_bytes: 100e6,
            dirty_rate_bytes_per_s: 1e6,
            bandwidth_bytes_per_s: 125e6,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    macro_rules! assert_close {
        ($a:expr, $b:expr) => {
            assert!(close($a, $b), "{} = {} ≠ {}", stringify!($a), $a, $b)
        };
    }

    /// docs/pam.md, "Worked example", every number of it.
    #[test]
    fn worked_example_by_hand() {
        let p = example_params();
        let x = example_input();
        let m = x.state_bytes;
        let r = x.dirty_rate_bytes_per_s;
        // Building blocks.
        assert_close!(predump_time_s(&p, m), 0.72);
        assert_close!(predump_frozen_s(&p, m), 0.14);
        assert_close!(dump_time_s(&p, m, r), 0.52);
        assert_close!(dump_frozen_s(&p, m, r), 0.25);
        assert_close!(restore_time_s(&p, m), 0.3);
        assert_close!(coat_time_s(&p), 0.2);

        // Cold.
        let cold = predict(&p, &x, 0).unwrap();
        assert!(cold.rounds.is_empty());
        assert_close!(cold.final_volume_bytes, 100e6);
        assert_close!(cold.downtime_s, 1.82);
        assert_eq!(cold.total_s, cold.downtime_s);

        // Pre-copy: round 0, then 337 dirty pages in the final dump.
        let pre = predict(&p, &x, 1).unwrap();
        assert_close!(pre.rounds[0].duration_s, 1.52);
        assert_close!(pre.rounds[0].frozen_s, 0.14);
        assert_close!(pre.final_volume_bytes, 1.25 * 337.0 * 4096.0);
        assert_close!(pre.final_volume_bytes, 1_725_440.0);
        assert_close!(pre.downtime_s, 1.03380352);
        assert_close!(pre.total_s, 2.55380352);

        // Iterative: 70 pages after round 1, then 67 pages for ever after.
        let expected = [
            // (I, V_I, T_down, T_mig)
            (2, 358_400.0, 1.0228672, 3.07667072),
            (3, 343_040.0, 1.02274432, 3.59941504),
            (4, 343_040.0, 1.02274432, 4.12215936),
            (5, 343_040.0, 1.02274432, 4.64490368),
            (6, 343_040.0, 1.02274432, 5.167648),
        ];
        for (rounds, volume, down, total) in expected {
            let it = predict(&p, &x, rounds).unwrap();
            assert_eq!(it.rounds.len(), rounds as usize);
            assert_close!(it.final_volume_bytes, volume);
            assert_close!(it.downtime_s, down);
            assert_close!(it.total_s, total);
        }
        let it = predict(&p, &x, 3).unwrap();
        assert_close!(it.rounds[1].duration_s, 0.53380352);
        assert_close!(it.rounds[1].frozen_s, 0.25);
        assert_close!(it.rounds[2].duration_s, 0.5228672);
        // Same page count ⇒ bit-identical downtime: the tie the designer breaks.
        assert_eq!(
            predict(&p, &x, 3).unwrap().downtime_s,
            predict(&p, &x, 5).unwrap().downtime_s
        );

        // Cold law: T_down = 1.02 s + 100 MB / L.
        let law = cold_law(&p, m, r).unwrap();
        assert_close!(law.fixed_s, 1.02);
        assert_close!(law.volume_bytes, 100e6);
        assert_close!(law.min_bandwidth(2.02).unwrap(), 100e6);
        assert!(law.min_bandwidth(1.02).is_none());
    }

    #[test]
    fn cold_law_and_cold_prediction_agree_bit_for_bit() {
        let p = PamParams::paper_defaults();
        let x = example_input();
        let law = cold_law(&p, x.state_bytes, x.dirty_rate_bytes_per_s).unwrap();
        let cold = predict(&p, &x, 0).unwrap();
        assert_eq!(law.downtime_s(x.bandwidth_bytes_per_s), cold.downtime_s);
    }

    #[test]
    fn paper_defaults_are_in_the_range_mose_measured() {
        // SockPerf, 10 MB, 1 Gbit/s: MOSE measured 764 ms cold; PAM is an upper bound.
        let x = ModelInput {
            state_bytes: 10e6,
            dirty_rate_bytes_per_s: 5.0 * 4096.0,
            bandwidth_bytes_per_s: 125e6,
        };
        let cold = predict(&PamParams::paper_defaults(), &x, 0).unwrap();
        assert!((0.7..1.5).contains(&cold.downtime_s), "{}", cold.downtime_s);
    }

    #[test]
    fn bad_input_is_an_error() {
        let p = example_params();
        let ok = example_input();
        let cases = [
            (
                ModelInput {
                    state_bytes: 0.0,
                    ..ok
                },
                "state_bytes",
            ),
            (
                ModelInput {
                    state_bytes: -1.0,
                    ..ok
                },
                "state_bytes",
            ),
            (
                ModelInput {
                    state_bytes: f64::NAN,
                    ..ok
                },
                "state_bytes",
            ),
            (
                ModelInput {
                    state_bytes: f64::INFINITY,
                    ..ok
                },
                "state_bytes",
            ),
            (
                ModelInput {
                    dirty_rate_bytes_per_s: -1.0,
                    ..ok
                },
                "dirty_rate_bytes_per_s",
            ),
            (
                ModelInput {
                    dirty_rate_bytes_per_s: f64::NAN,
                    ..ok
                },
                "dirty_rate_bytes_per_s",
            ),
            (
                ModelInput {
                    bandwidth_bytes_per_s: 0.0,
                    ..ok
                },
                "bandwidth_bytes_per_s",
            ),
            (
                ModelInput {
                    bandwidth_bytes_per_s: f64::NEG_INFINITY,
                    ..ok
                },
                "bandwidth_bytes_per_s",
            ),
        ];
        for (input, field) in cases {
            let err = predict(&p, &input, 2).unwrap_err();
            assert!(err.to_string().starts_with(field), "{err}");
        }
        // Zero dirty rate is a legitimate idle service.
        let idle = ModelInput {
            dirty_rate_bytes_per_s: 0.0,
            ..ok
        };
        assert_eq!(predict(&p, &idle, 3).unwrap().final_volume_bytes, 0.0);

        let mut bad = example_params();
        bad.page_size_bytes = 0;
        assert!(matches!(
            predict(&bad, &ok, 1),
            Err(DesignError::NotPositive {
                name: "page_size_bytes",
                ..
            })
        ));
        let mut bad = example_params();
        bad.gamma_d_s_per_byte.per_byte_per_s = f64::NAN;
        assert!(matches!(
            predict(&bad, &ok, 1),
            Err(DesignError::NotFinite { .. })
        ));
        // Podman cannot be faster than the CRIU it runs.
        let mut bad = example_params();
        bad.alpha_r = 0.9;
        assert_eq!(
            predict(&bad, &ok, 0),
            Err(DesignError::BelowMinimum {
                name: "alpha_r",
                value: 0.9,
                min: 1.0
            })
        );
        // Each number valid, the prediction beyond f64: an error, not ∞ in a plan.
        let crawling = ModelInput {
            bandwidth_bytes_per_s: f64::MIN_POSITIVE,
            ..ok
        };
        assert_eq!(
            predict(&p, &crawling, 0),
            Err(DesignError::Overflow {
                what: "predicted total"
            })
        );
        let mut padded = example_params();
        padded.tau1 = 1.5;
        assert_eq!(
            cold_law(&padded, f64::MAX, 0.0),
            Err(DesignError::Overflow {
                what: "cold image volume"
            })
        );
        let mut bad = example_params();
        bad.psi_s = -0.1;
        assert!(matches!(
            cold_law(&bad, 1e6, 0.0),
            Err(DesignError::Negative { .. })
        ));
    }

    /// Parameters anywhere from 0 to 4× the paper's sanity values; α_c, α_r from 1 to 8.
    pub(crate) fn any_params() -> impl Strategy<Value = PamParams> {
        let d = PamParams::paper_defaults();
        let time = |v: f64| 0.0..=4.0 * v;
        (
            (
                time(d.beta_s),
                time(d.phi_p_s),
                time(d.gamma_p_s_per_byte),
                time(d.phi_d_s),
            ),
            (
                time(d.gamma_d_s_per_byte.at_zero_rate),
                time(d.gamma_d_s_per_byte.per_byte_per_s),
                time(d.delta_s),
                time(d.lambda_s_per_byte),
            ),
            (time(d.psi_s), time(d.omega_s_per_byte), 1.0..8.0, 1.0..8.0),
            (
                0.2..=1.0,
                1.0..1.5,
                1.0..1.5,
                prop::sample::select(vec![4096u64, 16384, 65536]),
            ),
            (
                time(d.netns_clear_s),
                time(d.netns_create_s),
                time(d.flow_update_s),
            ),
        )
            .prop_map(move |(a, b, c, e, f)| PamParams {
                beta_s: a.0,
                phi_p_s: a.1,
                gamma_p_s_per_byte: a.2,
                phi_d_s: a.3,
                gamma_d_s_per_byte: RateLaw {
                    at_zero_rate: b.0,
                    per_byte_per_s: b.1,
                },
                delta_s: b.2,
                lambda_s_per_byte: b.3,
                eta: d.eta.clone(),
                psi_s: c.0,
                omega_s_per_byte: c.1,
                alpha_c: c.2,
                alpha_r: c.3,
                rho: e.0,
                tau1: e.1,
                tau2: e.2,
                page_size_bytes: e.3,
                netns_clear_s: f.0,
                netns_create_s: f.1,
                flow_update_s: f.2,
            })
    }

    /// Log-uniform in [10^lo, 10^hi].
    pub(crate) fn log_uniform(lo: f64, hi: f64) -> impl Strategy<Value = f64> {
        (lo..hi).prop_map(|e| 10f64.powf(e))
    }

    /// M from 1 kB to 10 GB, R from 0 to 1 GB/s, L from 100 kB/s to 10 GB/s.
    pub(crate) fn any_input() -> impl Strategy<Value = ModelInput> {
        (
            log_uniform(3.0, 10.0),
            prop_oneof![Just(0.0), log_uniform(2.0, 9.0)],
            log_uniform(5.0, 10.0),
        )
            .prop_map(|(m, r, l)| ModelInput {
                state_bytes: m,
                dirty_rate_bytes_per_s: r,
                bandwidth_bytes_per_s: l,
            })
    }

    proptest! {
        #[test]
        fn downtime_grows_with_state_size(
            p in any_params(), x in any_input(), grow in 1.001f64..100.0, rounds in 0u32..6,
        ) {
            let bigger = ModelInput { state_bytes: x.state_bytes * grow, ..x };
            let a = predict(&p, &x, rounds).unwrap();
            let b = predict(&p, &bigger, rounds).unwrap();
            prop_assert!(b.downtime_s >= a.downtime_s);
            prop_assert!(b.total_s >= a.total_s);
            if rounds == 0 {
                // The full image always grows with M.
                prop_assert!(b.downtime_s > a.downtime_s);
            }
        }

        #[test]
        fn downtime_falls_with_bandwidth(
            p in any_params(), x in any_input(), grow in 1.001f64..100.0, rounds in 0u32..6,
        ) {
            let faster = ModelInput { bandwidth_bytes_per_s: x.bandwidth_bytes_per_s * grow, ..x };
            let a = predict(&p, &x, rounds).unwrap();
            let b = predict(&p, &faster, rounds).unwrap();
            prop_assert!(b.downtime_s <= a.downtime_s);
            prop_assert!(b.total_s <= a.total_s);
            if rounds == 0 {
                prop_assert!(b.downtime_s < a.downtime_s);
            }
        }

        #[test]
        fn downtime_grows_with_dirty_rate(
            p in any_params(), x in any_input(), grow in 1.001f64..100.0, rounds in 0u32..6,
        ) {
            let dirtier = ModelInput {
                dirty_rate_bytes_per_s: x.dirty_rate_bytes_per_s * grow + 1.0,
                ..x
            };
            let a = predict(&p, &x, rounds).unwrap();
            let b = predict(&p, &dirtier, rounds).unwrap();
            prop_assert!(b.downtime_s >= a.downtime_s);
        }

        #[test]
        fn cold_downtime_is_its_total(p in any_params(), x in any_input()) {
            let cold = predict(&p, &x, 0).unwrap();
            prop_assert_eq!(cold.downtime_s, cold.total_s);
            prop_assert_eq!(cold.final_volume_bytes, p.rho * p.tau1 * x.state_bytes);
        }

        #[test]
        fn total_never_shrinks_with_more_rounds(p in any_params(), x in any_input(), rounds in 0u32..12) {
            // T_mig(I+1) − T_mig(I) = processing of round I + V_{I+1}/L ≥ 0 (docs/pam.md).
            let a = predict(&p, &x, rounds).unwrap();
            let b = predict(&p, &x, rounds + 1).unwrap();
            prop_assert!(b.total_s >= a.total_s * (1.0 - 1e-12));
            prop_assert!(a.total_s >= a.downtime_s);
        }

        #[test]
        fn min_bandwidth_meets_theta_exactly_at_the_boundary(
            p in any_params(), m in log_uniform(3.0, 10.0), r in log_uniform(2.0, 9.0),
            slack in log_uniform(-3.0, 2.0),
        ) {
            let law = cold_law(&p, m, r).unwrap();
            let theta = law.fixed_s + slack;
            let l = law.min_bandwidth(theta).unwrap();
            let at = |l: f64| predict(&p, &ModelInput {
                state_bytes: m, dirty_rate_bytes_per_s: r, bandwidth_bytes_per_s: l,
            }, 0).unwrap().downtime_s;
            prop_assert!((at(l) - theta).abs() <= 1e-12 * theta, "{} vs {}", at(l), theta);
            prop_assert!(at(l * (1.0 - 1e-6)) > theta);
            prop_assert!(at(l * (1.0 + 1e-6)) < theta);
            prop_assert!(law.min_bandwidth(law.fixed_s).is_none());
        }
    }
}
