//! The MOSE configuration algorithm (Fig. 3 of the MOSE paper; docs/pam.md, "The configuration
//! algorithm"): from a task's objective and KPI targets, the workload, the link and the hosts'
//! capabilities, choose the strategy, the bandwidth to allocate and the number of pre-copy
//! rounds — and say why.

use mose_protocol::model::{Objective, PamParams, Plan, Strategy};
use mose_protocol::units::{saturating_u64, BytesPerSec};

use super::pam::{cold_law, predict, ColdLaw, ModelInput, Prediction};
use super::{finite_result, non_negative, positive, validate_params, DesignError};

/// The most pre-copy rounds a plan may use. Each round is a runtime pre-dump with its own fixed
/// cost; past a handful the dirty volume has converged and more rounds only add migration time.
pub const MAX_PRECOPY_ROUNDS: u32 = 16;

/// Everything the designer needs to know about one migration task.
#[derive(Debug, Clone, PartialEq)]
pub struct DesignRequest {
    /// What the task owner wants minimised.
    pub objective: Objective,
    /// M: the service's memory state (B).
    pub state_bytes: f64,
    /// R_max: worst-case dirty rate (B/s); planning with it makes every prediction an upper bound.
    pub dirty_rate_max_bytes_per_s: f64,
    /// Bandwidth source → destination available to the migration (B/s); at least 1.
    pub available_bandwidth_bytes_per_s: f64,
    /// The source host can track dirty pages (`criu check --feature mem_dirty_track`).
    pub source_dirty_tracking: bool,
    /// The destination host can track dirty pages.
    pub destination_dirty_tracking: bool,
    /// θ_down: downtime target (s).
    pub theta_down_s: f64,
    /// θ_mig: total migration time target (s).
    pub theta_mig_s: f64,
}

impl DesignRequest {
    fn validate(&self) -> Result<(), DesignError> {
        positive("state_bytes", self.state_bytes)?;
        non_negative(
            "dirty_rate_max_bytes_per_s",
            self.dirty_rate_max_bytes_per_s,
        )?;
        let available = positive(
            "available_bandwidth_bytes_per_s",
            self.available_bandwidth_bytes_per_s,
        )?;
        // Plans allocate whole bytes per second.
        if available < 1.0 {
            return Err(DesignError::BelowMinimum {
                name: "available_bandwidth_bytes_per_s",
                value: available,
                min: 1.0,
            });
        }
        positive("theta_down_s", self.theta_down_s)?;
        positive("theta_mig_s", self.theta_mig_s)?;
        Ok(())
    }

    fn at_bandwidth(&self, bandwidth_bytes_per_s: u64) -> ModelInput {
        ModelInput {
            state_bytes: self.state_bytes,
            dirty_rate_bytes_per_s: self.dirty_rate_max_bytes_per_s,
            bandwidth_bytes_per_s: bandwidth_bytes_per_s as f64,
        }
    }

    fn targets_met(&self, downtime_s: f64, total_s: f64) -> bool {
        downtime_s <= self.theta_down_s && total_s <= self.theta_mig_s
    }
}

/// Plans one migration (docs/pam.md, "The configuration algorithm") with the parameters of its
/// host pair ([`pair_params`](super::pair_params)`(source, destination)`).
///
/// * [`Objective::Resources`] → cold migration with the least bandwidth whose predicted downtime
///   meets the target, or the full bandwidth and `target_met = false` when none does. Since cold
///   has T_mig = T_down, the bound used is min(θ_down, θ_mig) so that both targets hold.
/// * [`Objective::Downtime`] → at the full bandwidth and R = R_max, among the round counts
///   I ∈ 1..=[`MAX_PRECOPY_ROUNDS`] with T_mig(I) ≤ θ_mig, the one with the lowest predicted
///   downtime, fewest rounds on ties. The paper takes the largest such I; that I is among the
///   candidates, so this choice never predicts more downtime. Cold counts as I = 0: it is
///   chosen, with the reason in the explanation, when a host lacks dirty tracking, when not
///   even one round fits θ_mig, or when no pre-copy predicts less downtime than cold itself.
///
/// Predictions are made at exactly `bandwidth_bytes_per_s`, the whole bytes per second the plan
/// allocates.
pub fn configure(params: &PamParams, request: &DesignRequest) -> Result<Plan, DesignError> {
    validate_params(params)?;
    request.validate()?;
    // Saturates for absurdly large inputs instead of wrapping.
    let available = saturating_u64(request.available_bandwidth_bytes_per_s.floor());
    match request.objective {
        Objective::Resources => minimise_resources(params, request, available),
        Objective::Downtime => minimise_downtime(params, request, available),
    }
}

fn minimise_resources(
    params: &PamParams,
    request: &DesignRequest,
    available: u64,
) -> Result<Plan, DesignError> {
    let law = cold_law(
        params,
        request.state_bytes,
        request.dirty_rate_max_bytes_per_s,
    )?;
    let (theta_s, bound) = if request.theta_mig_s < request.theta_down_s {
        (request.theta_mig_s, "θ_mig (cold has T_mig = T_down)")
    } else {
        (request.theta_down_s, "θ_down")
    };
    let law_text = format!(
        "cold downtime is {:.3} s of dump, restore and COAT plus {} / L",
        law.fixed_s,
        bytes(law.volume_bytes)
    );
    let (bandwidth, reason) = match law.min_bandwidth(theta_s) {
        Some(min) if min <= available as f64 => {
            let bandwidth = least_whole_bandwidth(&law, min, theta_s, available);
            let reason = format!(
                "{law_text}, so the least bandwidth meeting {bound} = {theta_s:.3} s is {}; \
                 allocating {bandwidth} B/s of {available} B/s available",
                rate(min)
            );
            (bandwidth, reason)
        }
        Some(min) => (
            available,
            format!(
                "target unmeetable: {law_text}, so meeting {bound} = {theta_s:.3} s needs {}, \
                 more than the {} available; using all of it",
                rate(min),
                rate(available as f64)
            ),
        ),
        None => (
            available,
            format!(
                "target unmeetable: {law_text}, and those fixed costs alone reach \
                 {bound} = {theta_s:.3} s at any bandwidth; using all {} available",
                rate(available as f64)
            ),
        ),
    };
    let downtime_s = finite_result("predicted downtime", law.downtime_s(bandwidth as f64))?;
    Ok(Plan {
        strategy: Strategy::Cold,
        objective: Objective::Resources,
        bandwidth_bytes_per_s: BytesPerSec(bandwidth),
        rounds: 0,
        predicted_downtime_s: downtime_s,
        predicted_total_s: downtime_s,
        target_met: request.targets_met(downtime_s, downtime_s),
        explanation: format!(
            "objective resources → cold migration, the strategy with the least bandwidth and \
             CPU. {reason}. Predicted downtime = total = {downtime_s:.3} s at R_max = {}.",
            rate(request.dirty_rate_max_bytes_per_s)
        ),
    })
}

/// The least whole bandwidth in 1..=`available` B/s at which `law` predicts a downtime
/// ≤ `theta_s`, starting from the real solution `min_bandwidth_bytes_per_s` (≤ `available`).
///
/// ⌈L_min⌉ alone can be one off: L_min = V/(θ − fixed) carries a few ulps of rounding, and the
/// plan's prediction is evaluated with the law itself, which must then meet θ. T_down(L) is
/// monotone in L also in floating point, so walking from ⌈L_min⌉ finds the exact boundary; the
/// walks are a step or two (more only where 1 B/s is below f64 resolution, ≥ 2⁵³ B/s).
fn least_whole_bandwidth(
    law: &ColdLaw,
    min_bandwidth_bytes_per_s: f64,
    theta_s: f64,
    available: u64,
) -> u64 {
    let meets = |bandwidth: u64| law.downtime_s(bandwidth as f64) <= theta_s;
    let mut bandwidth = saturating_u64(min_bandwidth_bytes_per_s.ceil()).clamp(1, available);
    while bandwidth > 1 && meets(bandwidth - 1) {
        bandwidth -= 1;
    }
    while bandwidth < available && !meets(bandwidth) {
        bandwidth += 1;
    }
    bandwidth
}

fn minimise_downtime(
    params: &PamParams,
    request: &DesignRequest,
    available: u64,
) -> Result<Plan, DesignError> {
    let input = request.at_bandwidth(available);
    let cold = predict(params, &input, 0)?;
    let at = format!(
        "at the full {} with R_max = {}",
        rate(available as f64),
        rate(request.dirty_rate_max_bytes_per_s)
    );

    let lacking = match (
        request.source_dirty_tracking,
        request.destination_dirty_tracking,
    ) {
        (true, true) => None,
        (false, true) => Some("the source host lacks"),
        (true, false) => Some("the destination host lacks"),
        (false, false) => Some("the source and destination hosts lack"),
    };
    if let Some(hosts) = lacking {
        let reason =
            format!("fallback to cold: {hosts} dirty-page tracking, so pre-copy cannot run");
        return Ok(downtime_plan(request, available, 0, &cold, &at, &reason));
    }

    let mut feasible = Vec::new();
    for rounds in 1..=MAX_PRECOPY_ROUNDS {
        let prediction = predict(params, &input, rounds)?;
        if prediction.total_s <= request.theta_mig_s {
            feasible.push((rounds, prediction));
        }
    }
    // `min_by` returns the first of equal minima: fewest rounds on ties.
    let best = feasible
        .iter()
        .min_by(|a, b| a.1.downtime_s.total_cmp(&b.1.downtime_s));
    let (Some((rounds, best)), Some((largest, paper))) = (best, feasible.last()) else {
        let one = predict(params, &input, 1)?;
        let reason = format!(
            "fallback to cold: even one pre-copy round predicts T_mig = {:.3} s > θ_mig = {:.3} s",
            one.total_s, request.theta_mig_s
        );
        return Ok(downtime_plan(request, available, 0, &cold, &at, &reason));
    };
    if cold.downtime_s <= best.downtime_s {
        let reason = format!(
            "cold: no pre-copy lowers the downtime here (best pre-copy, {rounds} round(s), \
             predicts {:.3} s against {:.3} s for cold), and cold is quicker and cheaper",
            best.downtime_s, cold.downtime_s
        );
        return Ok(downtime_plan(request, available, 0, &cold, &at, &reason));
    }
    let reason = format!(
        "{} of 1..={MAX_PRECOPY_ROUNDS} round counts fit θ_mig = {:.3} s; {rounds} round(s) \
         predict the lowest downtime (the paper's largest-I rule would take {largest}: \
         downtime {:.3} s, total {:.3} s); cold would predict {:.3} s",
        feasible.len(),
        request.theta_mig_s,
        paper.downtime_s,
        paper.total_s,
        cold.downtime_s
    );
    Ok(downtime_plan(
        request, available, *rounds, best, &at, &reason,
    ))
}

fn downtime_plan(
    request: &DesignRequest,
    available: u64,
    rounds: u32,
    prediction: &Prediction,
    at: &str,
    reason: &str,
) -> Plan {
    let (strategy, what) = match rounds {
        0 => (Strategy::Cold, "cold migration".to_string()),
        1 => (Strategy::Precopy, "pre-copy (1 round)".to_string()),
        n => (
            Strategy::IterativePrecopy,
            format!("iterative pre-copy ({n} rounds)"),
        ),
    };
    let target_met = request.targets_met(prediction.downtime_s, prediction.total_s);
    let verdict = if target_met {
        "both targets met"
    } else if prediction.downtime_s > request.theta_down_s {
        "downtime target NOT met"
    } else {
        "migration-time target NOT met"
    };
    Plan {
        strategy,
        objective: Objective::Downtime,
        bandwidth_bytes_per_s: BytesPerSec(available),
        rounds,
        predicted_downtime_s: prediction.downtime_s,
        predicted_total_s: prediction.total_s,
        target_met,
        explanation: format!(
            "objective downtime → {what} {at}. {reason}. \
             Predicted downtime {:.3} s (θ_down {:.3} s), total {:.3} s (θ_mig {:.3} s): {verdict}.",
            prediction.downtime_s,
            request.theta_down_s,
            prediction.total_s,
            request.theta_mig_s
        ),
    }
}

/// A byte count for humans.
fn bytes(b: f64) -> String {
    format!("{:.3} MB", b / 1e6)
}

/// A byte rate for humans, with the bit rate networkers think in.
fn rate(bytes_per_s: f64) -> String {
    format!(
        "{:.3} MB/s ({:.1} Mbit/s)",
        bytes_per_s / 1e6,
        bytes_per_s * 8.0 / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::designer::pam::tests::{any_input, any_params, example_input, example_params};
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest, Just, Strategy as _};

    /// The docs/pam.md workload with θ_down = 1.1 s, θ_mig = 5 s (the MOSE paper's 1 s / 5 s
    /// scaled to a 100 MB service).
    fn example_request(objective: Objective) -> DesignRequest {
        let x = example_input();
        DesignRequest {
            objective,
            state_bytes: x.state_bytes,
            dirty_rate_max_bytes_per_s: x.dirty_rate_bytes_per_s,
            available_bandwidth_bytes_per_s: x.bandwidth_bytes_per_s,
            source_dirty_tracking: true,
            destination_dirty_tracking: true,
            theta_down_s: 1.1,
            theta_mig_s: 5.0,
        }
    }

    /// docs/pam.md, "Worked example": the downtime branch.
    #[test]
    fn worked_example_downtime_picks_three_rounds_not_five() {
        let plan = configure(&example_params(), &example_request(Objective::Downtime)).unwrap();
        assert_eq!(plan.strategy, Strategy::IterativePrecopy);
        assert_eq!(plan.rounds, 3);
        assert_eq!(plan.bandwidth_bytes_per_s.0, 125_000_000);
        assert!((plan.predicted_downtime_s - 1.02274432).abs() < 1e-12);
        assert!((plan.predicted_total_s - 3.59941504).abs() < 1e-12);
        assert!(plan.target_met);
        assert!(
            plan.explanation.contains("5 of 1..=16 round counts fit"),
            "{}",
            plan.explanation
        );
        assert!(
            plan.explanation.contains("largest-I rule would take 5"),
            "{}",
            plan.explanation
        );
    }

    /// docs/pam.md, "Worked example": the resources branch, met and unmet.
    #[test]
    fn worked_example_resources() {
        let p = example_params();
        let mut req = example_request(Objective::Resources);
        req.theta_down_s = 2.02;
        let plan = configure(&p, &req).unwrap();
        assert_eq!(plan.strategy, Strategy::Cold);
        assert_eq!(plan.rounds, 0);
        assert_eq!(plan.bandwidth_bytes_per_s.0, 100_000_000);
        assert!((plan.predicted_downtime_s - 2.02).abs() < 1e-12);
        assert_eq!(plan.predicted_total_s, plan.predicted_downtime_s);
        assert!(plan.target_met);
        // One byte/s less misses the target: the allocation sits on the boundary.
        let law = cold_law(&p, req.state_bytes, req.dirty_rate_max_bytes_per_s).unwrap();
        assert!(law.downtime_s(99_999_999.0) > 2.02);

        // θ_down = 1.5 s needs 100 MB / 0.48 s ≈ 208.3 MB/s > 125 MB/s.
        req.theta_down_s = 1.5;
        let plan = configure(&p, &req).unwrap();
        assert_eq!(plan.bandwidth_bytes_per_s.0, 125_000_000);
        assert!((plan.predicted_downtime_s - 1.82).abs() < 1e-12);
        assert!(!plan.target_met);
        assert!(
            plan.explanation.contains("target unmeetable"),
            "{}",
            plan.explanation
        );
        assert!(
            plan.explanation.contains("208.333 MB/s"),
            "{}",
            plan.explanation
        );

        // θ_down = 1 s is below the 1.02 s of fixed costs.
        req.theta_down_s = 1.0;
        let plan = configure(&p, &req).unwrap();
        assert_eq!(plan.bandwidth_bytes_per_s.0, 125_000_000);
        assert!(!plan.target_met);
        assert!(
            plan.explanation.contains("at any bandwidth"),
            "{}",
            plan.explanation
        );
    }

    #[test]
    fn missing_dirty_tracking_falls_back_to_cold() {
        let mut req = example_request(Objective::Downtime);
        req.destination_dirty_tracking = false;
        let plan = configure(&example_params(), &req).unwrap();
        assert_eq!(plan.strategy, Strategy::Cold);
        assert_eq!(plan.rounds, 0);
        assert_eq!(plan.bandwidth_bytes_per_s.0, 125_000_000);
        assert!((plan.predicted_downtime_s - 1.82).abs() < 1e-12);
        assert!(!plan.target_met); // 1.82 s > θ_down = 1.1 s
        assert!(
            plan.explanation.contains("destination host lacks"),
            "{}",
            plan.explanation
        );
        req.source_dirty_tracking = false;
        let plan = configure(&example_params(), &req).unwrap();
        assert!(plan
            .explanation
            .contains("source and destination hosts lack"));
    }

    #[test]
    fn tight_migration_target_falls_back_to_cold() {
        let mut req = example_request(Objective::Downtime);
        req.theta_mig_s = 2.5; // one round predicts 2.554 s
        let plan = configure(&example_params(), &req).unwrap();
        assert_eq!(plan.strategy, Strategy::Cold);
        assert!(plan
            .explanation
            .contains("even one pre-copy round predicts T_mig = 2.554 s"));
        assert!(plan.target_met == (plan.predicted_downtime_s <= 1.1));
        // Just enough time for one round: plain pre-copy.
        req.theta_mig_s = 2.6;
        let plan = configure(&example_params(), &req).unwrap();
        assert_eq!((plan.strategy, plan.rounds), (Strategy::Precopy, 1));
    }

    #[test]
    fn cold_wins_when_pre_copy_cannot_lower_downtime() {
        // Dirtying faster than the link drains: every round resends all memory, with τ₂ > τ₁.
        let mut p = example_params();
        p.gamma_d_s_per_byte.per_byte_per_s = 0.0; // keep the dump time of the example
        let mut req = example_request(Objective::Downtime);
        req.dirty_rate_max_bytes_per_s = 1e9;
        req.theta_mig_s = 60.0;
        let plan = configure(&p, &req).unwrap();
        assert_eq!(plan.strategy, Strategy::Cold);
        // 2·(0.01 + 0.05 + 0.1) + 0.8 + 0.3 + 0.2; one round would resend all of it as
        // ⌈1e8/4096⌉ pages with τ₂ = 1.25: 0.82 + 1.0000384 = 1.8200384 s.
        assert!((plan.predicted_downtime_s - 1.62).abs() < 1e-12);
        assert!(plan.explanation.contains("no pre-copy lowers the downtime"));
    }

    #[test]
    fn bad_requests_are_errors() {
        let p = example_params();
        let ok = example_request(Objective::Downtime);
        let cases = [
            DesignRequest {
                state_bytes: 0.0,
                ..ok.clone()
            },
            DesignRequest {
                state_bytes: f64::NAN,
                ..ok.clone()
            },
            DesignRequest {
                dirty_rate_max_bytes_per_s: -5.0,
                ..ok.clone()
            },
            DesignRequest {
                available_bandwidth_bytes_per_s: 0.0,
                ..ok.clone()
            },
            DesignRequest {
                available_bandwidth_bytes_per_s: 0.5,
                ..ok.clone()
            },
            DesignRequest {
                available_bandwidth_bytes_per_s: f64::INFINITY,
                ..ok.clone()
            },
            DesignRequest {
                theta_down_s: 0.0,
                ..ok.clone()
            },
            DesignRequest {
                theta_mig_s: f64::NAN,
                ..ok.clone()
            },
        ];
        for req in cases {
            assert!(configure(&p, &req).is_err(), "{req:?}");
        }
        let mut bad = p.clone();
        bad.alpha_c = 0.0;
        assert!(configure(&bad, &ok).is_err());
    }

    fn any_request() -> impl proptest::strategy::Strategy<Value = DesignRequest> {
        use crate::designer::pam::tests::log_uniform;
        (
            any_input(),
            proptest::prop_oneof![Just(Objective::Downtime), Just(Objective::Resources)],
            proptest::bool::weighted(0.9),
            log_uniform(-2.0, 2.0),
            log_uniform(-1.0, 3.0),
        )
            .prop_map(|(x, objective, tracking, down, mig)| DesignRequest {
                objective,
                state_bytes: x.state_bytes,
                dirty_rate_max_bytes_per_s: x.dirty_rate_bytes_per_s,
                available_bandwidth_bytes_per_s: x.bandwidth_bytes_per_s,
                source_dirty_tracking: tracking,
                destination_dirty_tracking: true,
                theta_down_s: down,
                theta_mig_s: mig,
            })
    }

    proptest! {
        #[test]
        fn round_choice_never_beats_the_paper_rule_on_downtime(
            p in any_params(), req in any_request(),
        ) {
            let req = DesignRequest { objective: Objective::Downtime, ..req };
            let plan = configure(&p, &req).unwrap();
            let input = req.at_bandwidth(plan.bandwidth_bytes_per_s.0);
            // The paper: the largest I with T_mig(I) ≤ θ_mig.
            let paper = (1..=MAX_PRECOPY_ROUNDS)
                .rev()
                .map(|i| predict(&p, &input, i).unwrap())
                .find(|pr| pr.total_s <= req.theta_mig_s);
            if let (Some(paper), true) = (paper, req.source_dirty_tracking) {
                prop_assert!(plan.predicted_downtime_s <= paper.downtime_s);
                prop_assert!(plan.predicted_total_s <= req.theta_mig_s);
            }
            if !req.source_dirty_tracking {
                prop_assert_eq!(plan.strategy, Strategy::Cold);
            }
            // The plan's numbers are the model's numbers for its own configuration.
            let own = predict(&p, &input, plan.rounds).unwrap();
            prop_assert_eq!(plan.predicted_downtime_s, own.downtime_s);
            prop_assert_eq!(plan.predicted_total_s, own.total_s);
            prop_assert_eq!(
                plan.target_met,
                own.downtime_s <= req.theta_down_s && own.total_s <= req.theta_mig_s
            );
        }

        #[test]
        fn resources_allocate_the_least_whole_bandwidth(p in any_params(), req in any_request()) {
            let req = DesignRequest { objective: Objective::Resources, ..req };
            let plan = configure(&p, &req).unwrap();
            prop_assert_eq!(plan.strategy, Strategy::Cold);
            prop_assert_eq!(plan.predicted_downtime_s, plan.predicted_total_s);
            let available = saturating_u64(req.available_bandwidth_bytes_per_s.floor());
            prop_assert!(plan.bandwidth_bytes_per_s.0 >= 1 && plan.bandwidth_bytes_per_s.0 <= available);
            let law = cold_law(&p, req.state_bytes, req.dirty_rate_max_bytes_per_s).unwrap();
            let theta = req.theta_down_s.min(req.theta_mig_s);
            if plan.target_met {
                prop_assert!(law.downtime_s(plan.bandwidth_bytes_per_s.0 as f64) <= theta);
                if plan.bandwidth_bytes_per_s.0 > 1 {
                    prop_assert!(law.downtime_s((plan.bandwidth_bytes_per_s.0 - 1) as f64) > theta);
                }
            } else {
                prop_assert_eq!(plan.bandwidth_bytes_per_s.0, available);
                prop_assert!(law.downtime_s(available as f64) > theta);
            }
        }

        #[test]
        fn configure_never_panics(
            m in proptest::num::f64::ANY, r in proptest::num::f64::ANY,
            l in proptest::num::f64::ANY, down in proptest::num::f64::ANY,
            mig in proptest::num::f64::ANY, resources in proptest::bool::ANY,
        ) {
            let req = DesignRequest {
                objective: if resources { Objective::Resources } else { Objective::Downtime },
                state_bytes: m,
                dirty_rate_max_bytes_per_s: r,
                available_bandwidth_bytes_per_s: l,
                source_dirty_tracking: true,
                destination_dirty_tracking: true,
                theta_down_s: down,
                theta_mig_s: mig,
            };
            if let Ok(plan) = configure(&example_params(), &req) {
                prop_assert!(plan.predicted_downtime_s.is_finite());
                prop_assert!(plan.predicted_total_s.is_finite());
            }
        }
    }
}
