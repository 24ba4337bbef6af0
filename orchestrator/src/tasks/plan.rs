//! Checking a migration request against the live agents and turning it into a plan.
//!
//! Pure functions over the agents' views, so every refusal and every plan can be tested
//! without a network.

use mose_protocol::keys::validate_id;
use mose_protocol::messages::Role;
use mose_protocol::model::{PamParams, Plan};
use mose_protocol::steps::Described;
use mose_protocol::units::BytesPerSec;

use super::{MigrationRequest, PlanInputs, TaskError};
use crate::designer::{configure, pair_params, DesignRequest};
use crate::registry::AgentView;

/// The checks that need nothing but the request.
pub fn check_request(req: &MigrationRequest) -> Result<(), TaskError> {
    let invalid = |e: mose_protocol::KeyError| TaskError::Invalid(e.to_string());
    validate_id("service", &req.service).map_err(invalid)?;
    validate_id("source", &req.source).map_err(invalid)?;
    validate_id("destination", &req.destination).map_err(invalid)?;
    if let Some(mobile) = &req.mobile {
        validate_id("mobile", mobile).map_err(invalid)?;
        if mobile == &req.source || mobile == &req.destination {
            return Err(TaskError::Invalid(format!(
                "mobile agent '{mobile}' cannot also be the source or the destination"
            )));
        }
    }
    if req.source == req.destination {
        return Err(TaskError::Invalid(format!(
            "source and destination are both '{}': nothing to migrate",
            req.source
        )));
    }
    if req.bandwidth_bytes_per_s == Some(BytesPerSec(0)) {
        return Err(TaskError::Invalid(
            "bandwidth_bytes_per_s must be at least 1 byte/s (or omitted to use the link \
             estimate)"
                .into(),
        ));
    }
    for (name, value) in [
        ("target_downtime_ms", req.target_downtime_ms),
        ("target_duration_ms", req.target_duration_ms),
    ] {
        if !value.is_finite() || value <= 0.0 {
            return Err(TaskError::Invalid(format!(
                "{name} must be a positive number of milliseconds, got {value}"
            )));
        }
    }
    Ok(())
}

/// The agents a request names, present, probed and with their profiles.
#[derive(Debug, Clone)]
pub struct Participants {
    /// The agent the service runs on.
    pub source: AgentView,
    /// The agent it moves to.
    pub destination: AgentView,
}

/// Everything a plan is made from, gathered before planning starts: the agents' views and the
/// source's Describe. [`design`] plans from it alone, once.
#[derive(Debug, Clone)]
pub struct Gathered {
    /// Source and destination.
    pub agents: Participants,
    /// The source's Describe of the service.
    pub described: Described,
}

/// Checks that every agent the request names is present, has a profile whose capability probe
/// has run, and plays its part: source and destination are edge hosts, the mobile agent is a
/// mobile device.
pub fn check_agents(
    req: &MigrationRequest,
    lookup: impl Fn(&str) -> Option<AgentView>,
) -> Result<Participants, TaskError> {
    let agent = |what: &str, id: &str, role: Role| -> Result<AgentView, TaskError> {
        let view = lookup(id).ok_or_else(|| {
            TaskError::Unknown(format!(
                "{what} '{id}' is not a present agent (see GET /v1/agents)"
            ))
        })?;
        let profile = view.profile.as_ref().ok_or_else(|| {
            TaskError::NotReady(format!(
                "{what} '{id}' has joined but its profile has not arrived yet; retry shortly"
            ))
        })?;
        if profile.capabilities.is_none() {
            return Err(TaskError::NotReady(format!(
                "{what} '{id}' has not finished probing what its host can do (CRIU, dirty \
                 tracking, OvS): a plan made now could pick a strategy it cannot run; retry in \
                 a few seconds"
            )));
        }
        if profile.role != role {
            let why = match role {
                Role::Edge => "only edge hosts run services",
                Role::Mobile => "its client flow is what gets switched",
            };
            return Err(TaskError::Invalid(format!(
                "{what} '{id}' is a {} agent, but must be {role}: {why}",
                profile.role
            )));
        }
        Ok(view)
    };
    let source = agent("source", &req.source, Role::Edge)?;
    let destination = agent("destination", &req.destination, Role::Edge)?;
    if let Some(mobile) = &req.mobile {
        agent("mobile agent", mobile, Role::Mobile)?;
    }
    Ok(Participants {
        source,
        destination,
    })
}

/// Plans the migration: host parameters from both profiles, M and the service's network from
/// the source's Describe, R_max and L from the source's latest metrics. Every fallback is
/// stated in the inputs' notes and at the head of the plan's explanation.
pub fn design(
    req: &MigrationRequest,
    gathered: &Gathered,
    default_bandwidth: BytesPerSec,
) -> Result<(Plan, PlanInputs), TaskError> {
    let who = &gathered.agents;
    let (described, state_bytes) = (&gathered.described.spec, gathered.described.state_bytes);
    let mut notes = Vec::new();
    if let (None, Some(client)) = (&req.mobile, described.network.client_ip) {
        // Allowed (the client may reach the service another way), but rarely what is meant.
        notes.push(format!(
            "'{}' has a client at {client} but no mobile agent was named: its flow will not be \
             switched",
            req.service
        ));
    }
    let params_of = |view: &AgentView, notes: &mut Vec<String>| match view
        .profile
        .as_ref()
        .and_then(|p| p.pam.clone())
    {
        Some(pam) => (pam, true),
        None => {
            notes.push(format!(
                "{} is not calibrated: using the PAM paper's default parameters for it",
                view.id
            ));
            (PamParams::paper_defaults(), false)
        }
    };
    let (source_params, source_calibrated) = params_of(&who.source, &mut notes);
    let (destination_params, destination_calibrated) = params_of(&who.destination, &mut notes);

    let metrics = who.source.metrics.as_ref();
    let dirty_rate = metrics
        .and_then(|m| m.containers.iter().find(|c| c.name == req.service))
        .and_then(|c| c.dirty_rate_bytes_per_s);
    if dirty_rate.is_none() {
        notes.push(format!(
            "no dirty rate of '{}' measured on {}: planning with R_max = 0",
            req.service, req.source
        ));
    }
    let dirty_rate = dirty_rate.unwrap_or_default();

    let link = req.bandwidth_bytes_per_s.or_else(|| {
        metrics
            .and_then(|m| m.links.iter().find(|l| l.peer == req.destination))
            .map(|l| l.bandwidth_bytes_per_s)
            .filter(|b| b.0 > 0)
    });
    if link.is_none() {
        notes.push(format!(
            "no bandwidth estimate {} → {}: assuming the configured default of {default_bandwidth}",
            req.source, req.destination
        ));
    }
    let bandwidth = link.unwrap_or(default_bandwidth);

    // A service whose memory the source could not size still moves at least a page.
    let page = source_params.page_size_bytes.max(1);
    if state_bytes == 0 {
        notes.push(format!(
            "{} reported no memory state for '{}': planning with one page",
            req.source, req.service
        ));
    }
    let state_bytes = state_bytes.max(page);

    let capability = |view: &AgentView| {
        view.profile
            .as_ref()
            .and_then(|p| p.capabilities.as_ref())
            .is_some_and(|c| c.dirty_tracking)
    };
    let request = DesignRequest {
        objective: req.objective,
        state_bytes: state_bytes as f64,
        dirty_rate_max_bytes_per_s: dirty_rate.as_f64(),
        available_bandwidth_bytes_per_s: bandwidth.as_f64(),
        source_dirty_tracking: capability(&who.source),
        destination_dirty_tracking: capability(&who.destination),
        theta_down_s: req.target_downtime_ms / 1000.0,
        theta_mig_s: req.target_duration_ms / 1000.0,
    };
    let mut plan = configure(&pair_params(&source_params, &destination_params), &request)?;
    if !notes.is_empty() {
        plan.explanation = format!("{}. {}", notes.join("; "), plan.explanation);
    }
    Ok((
        plan,
        PlanInputs {
            state_bytes,
            dirty_rate_bytes_per_s: dirty_rate,
            bandwidth_bytes_per_s: bandwidth,
            source_calibrated,
            destination_calibrated,
            notes,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mose_protocol::messages::{
        AgentProfile, Capabilities, ContainerMetrics, HostMetrics, LinkEstimate, MetricsSample,
        ServiceNetwork, ServiceSpec,
    };
    use std::net::Ipv4Addr;

    fn spec(client_ip: Option<Ipv4Addr>) -> ServiceSpec {
        ServiceSpec {
            name: "counter".into(),
            image: "counter".into(),
            network: ServiceNetwork {
                ip: Ipv4Addr::new(10, 0, 0, 10),
                prefix_len: 24,
                mac: [2, 0, 0, 0, 0, 10],
                client_ip,
                client_mac: None,
            },
        }
    }
    use mose_protocol::model::{Objective, Strategy};
    use std::collections::BTreeMap;

    fn request() -> MigrationRequest {
        MigrationRequest {
            service: "counter".into(),
            source: "edge1".into(),
            destination: "edge2".into(),
            mobile: Some("drone".into()),
            objective: Objective::Resources,
            target_downtime_ms: 2000.0,
            target_duration_ms: 5000.0,
            bandwidth_bytes_per_s: None,
        }
    }

    /// What a plan is made from: the checked agents and a Describe of `state_bytes`.
    fn gathered(who: &Participants, client_ip: Option<Ipv4Addr>, state_bytes: u64) -> Gathered {
        Gathered {
            agents: who.clone(),
            described: Described {
                spec: spec(client_ip),
                state_bytes,
            },
        }
    }

    fn view(id: &str, role: Option<Role>) -> AgentView {
        AgentView {
            id: id.into(),
            joined_us: 0,
            profile: role.map(|role| AgentProfile {
                id: id.into(),
                role,
                hostname: id.into(),
                agent_version: "t".into(),
                started_us: 0,
                capabilities: Some(Capabilities::default()),
                pam: None,
            }),
            metrics: None,
            metrics_received_us: None,
        }
    }

    /// An agent that announced itself but has not finished its capability probe.
    fn unprobed(id: &str) -> AgentView {
        let mut v = view(id, Some(Role::Edge));
        if let Some(p) = v.profile.as_mut() {
            p.capabilities = None;
        }
        v
    }

    fn agents() -> BTreeMap<String, AgentView> {
        [
            view("edge1", Some(Role::Edge)),
            view("edge2", Some(Role::Edge)),
            view("drone", Some(Role::Mobile)),
            view("fresh", None),
            unprobed("unprobed"),
        ]
        .into_iter()
        .map(|v| (v.id.clone(), v))
        .collect()
    }

    fn check(req: &MigrationRequest) -> Result<Participants, TaskError> {
        check_request(req)?;
        let map = agents();
        check_agents(req, |id| map.get(id).cloned())
    }

    fn refused(change: impl FnOnce(&mut MigrationRequest)) -> (u16, String) {
        let mut req = request();
        change(&mut req);
        let err = check(&req).expect_err("should be refused");
        (err.status(), err.to_string())
    }

    #[test]
    fn a_good_request_passes() {
        let who = check(&request()).unwrap();
        assert_eq!(who.source.id, "edge1");
        assert_eq!(who.destination.id, "edge2");
    }

    #[test]
    fn bad_requests_get_clear_4xx() {
        let (code, msg) = refused(|r| r.destination = "edge1".into());
        assert_eq!(code, 400);
        assert!(msg.contains("both 'edge1'"), "{msg}");

        let (code, msg) = refused(|r| r.source = "ghost".into());
        assert_eq!(code, 422);
        assert!(msg.contains("source 'ghost'"), "{msg}");

        let (code, msg) = refused(|r| {
            r.source = "drone".into();
            r.mobile = None;
        });
        assert_eq!(code, 400);
        assert!(msg.contains("mobile agent, but must be edge"), "{msg}");

        let (code, msg) = refused(|r| r.mobile = Some("edge2".into()));
        assert_eq!(code, 400, "{msg}");

        let (code, msg) = refused(|r| r.mobile = Some("edge9".into()));
        assert_eq!(code, 422, "{msg}");

        let (code, msg) = refused(|r| r.destination = "fresh".into());
        assert_eq!(code, 503);
        assert!(msg.contains("profile"), "{msg}");

        let (code, msg) = refused(|r| r.destination = "unprobed".into());
        assert_eq!(code, 503);
        assert!(msg.contains("not finished probing"), "{msg}");

        for bad in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            let (code, msg) = refused(|r| r.target_downtime_ms = bad);
            assert_eq!(code, 400);
            assert!(msg.contains("target_downtime_ms"), "{msg}");
        }
        let (code, _) = refused(|r| r.target_duration_ms = 0.0);
        assert_eq!(code, 400);
        let (code, msg) = refused(|r| r.bandwidth_bytes_per_s = Some(BytesPerSec(0)));
        assert_eq!(code, 400);
        assert!(msg.contains("bandwidth_bytes_per_s"), "{msg}");

        let (code, msg) = refused(|r| r.service = "a/b".into());
        assert_eq!(code, 400);
        assert!(msg.contains("service"), "{msg}");
    }

    #[test]
    fn uncalibrated_hosts_and_missing_metrics_are_stated() {
        let who = check(&request()).unwrap();
        let (plan, inputs) = design(
            &request(),
            &gathered(&who, None, 10 << 20),
            BytesPerSec(125_000_000),
        )
        .unwrap();
        assert_eq!(plan.strategy, Strategy::Cold);
        assert!(!inputs.source_calibrated && !inputs.destination_calibrated);
        assert_eq!(inputs.dirty_rate_bytes_per_s, BytesPerSec(0));
        assert_eq!(inputs.bandwidth_bytes_per_s, BytesPerSec(125_000_000));
        assert_eq!(inputs.notes.len(), 4, "{:?}", inputs.notes);
        assert!(
            plan.explanation.starts_with("edge1 is not calibrated"),
            "{}",
            plan.explanation
        );
        assert!(plan.explanation.contains("R_max = 0"));
        assert!(plan.explanation.contains("configured default"));
    }

    #[test]
    fn metrics_and_calibration_feed_the_designer() {
        let mut who = check(&request()).unwrap();
        for v in [&mut who.source, &mut who.destination] {
            v.profile.as_mut().unwrap().pam = Some(PamParams::paper_defaults());
        }
        who.source.metrics = Some(MetricsSample {
            agent: "edge1".into(),
            seq: 1,
            taken_us: 0,
            host: HostMetrics::default(),
            containers: vec![ContainerMetrics {
                name: "counter".into(),
                state_bytes: 1,
                dirty_rate_bytes_per_s: Some(BytesPerSec(1 << 20)),
                dirty_method: None,
            }],
            links: vec![LinkEstimate {
                peer: "edge2".into(),
                bandwidth_bytes_per_s: BytesPerSec(12_500_000),
            }],
        });
        let (plan, inputs) = design(
            &request(),
            &gathered(&who, None, 10 << 20),
            BytesPerSec(125_000_000),
        )
        .unwrap();
        assert!(inputs.notes.is_empty(), "{:?}", inputs.notes);
        assert_eq!(inputs.dirty_rate_bytes_per_s, BytesPerSec(1 << 20));
        assert_eq!(inputs.bandwidth_bytes_per_s, BytesPerSec(12_500_000));
        assert!(plan.bandwidth_bytes_per_s <= BytesPerSec(12_500_000));

        // A bandwidth the caller states wins over the link estimate, without a note.
        let req = MigrationRequest {
            bandwidth_bytes_per_s: Some(BytesPerSec(2_500_000)),
            ..request()
        };
        let (plan, inputs) = design(
            &req,
            &gathered(&who, None, 1 << 20),
            BytesPerSec(125_000_000),
        )
        .unwrap();
        assert_eq!(inputs.bandwidth_bytes_per_s, BytesPerSec(2_500_000));
        assert!(plan.bandwidth_bytes_per_s <= BytesPerSec(2_500_000));
        assert!(!plan.explanation.contains("bandwidth estimate"));

        // The downtime objective without dirty tracking falls back to cold, saying why.
        let req = MigrationRequest {
            objective: Objective::Downtime,
            ..request()
        };
        let (plan, _) = design(&req, &gathered(&who, None, 0), BytesPerSec(125_000_000)).unwrap();
        assert_eq!(plan.strategy, Strategy::Cold);
        assert!(
            plan.explanation.contains("one page"),
            "{}",
            plan.explanation
        );

        // A client without a mobile agent to steer its flow is worth a word.
        let req = MigrationRequest {
            mobile: None,
            ..request()
        };
        let client = Some(Ipv4Addr::new(10, 0, 0, 2));
        let (plan, inputs) =
            design(&req, &gathered(&who, client, 1 << 20), BytesPerSec(1)).unwrap();
        assert_eq!(inputs.notes.len(), 1, "{:?}", inputs.notes);
        assert!(
            plan.explanation.contains("client at 10.0.0.2"),
            "{}",
            plan.explanation
        );
        let (_, inputs) =
            design(&request(), &gathered(&who, client, 1 << 20), BytesPerSec(1)).unwrap();
        assert!(inputs.notes.is_empty(), "{:?}", inputs.notes);
    }
}
