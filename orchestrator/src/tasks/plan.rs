//! Checking a migration request against the live agents and turning it into a plan.
//!
//! Pure functions over the agents' views, so every refusal and every plan can be tested
//! without a network.

use mose_protocol::keys::validate_id;
use mose_protocol::messages::Role;
use mose_protocol::model::{PamParams, Plan};
use mose_protocol::steps::Described;
use mose_protocol::units::BytesPerSec;

use super::{MigrationRequest, PlanInputs, Route, TaskError};
use crate::designer::{configure, pair_params, DesignRequest};
use crate::registry::AgentView;
use crate::services::ServiceRecord;
use mose_api::Reason;

/// Who takes part. A service MOSE deployed runs where its record says, so that is the source
/// (a `source` in the request only asserts it), and its mobiles follow it unless the request
/// names others; a container placed by other means needs its source named.
pub fn resolve_route(
    req: &MigrationRequest,
    service: Option<&ServiceRecord>,
) -> Result<Route, TaskError> {
    let (source, mobiles) = match service {
        Some(record) => {
            if let Some(asserted) = req.source.as_ref().filter(|s| **s != record.host) {
                return Err(TaskError::Conflict(
                    Reason::WrongSource,
                    format!(
                        "service '{}' runs on {}, not on {asserted}",
                        record.name, record.host
                    ),
                ));
            }
            let mobiles = req
                .mobiles
                .clone()
                .unwrap_or_else(|| record.mobiles.clone());
            (record.host.clone(), mobiles)
        }
        None => {
            let source = req.source.clone().ok_or_else(|| {
                TaskError::NoService(format!(
                    "no service '{}' is deployed (see GET /v1/services); to migrate a container \
                     placed by other means, name its source",
                    req.service
                ))
            })?;
            (source, req.mobiles.clone().unwrap_or_default())
        }
    };
    Ok(Route {
        source,
        destination: req.destination.clone(),
        mobiles,
    })
}

/// The checks that need nothing but the request and its route.
pub fn check_request(req: &MigrationRequest, route: &Route) -> Result<(), TaskError> {
    let invalid = |e: mose_protocol::KeyError| TaskError::Invalid(e.to_string());
    validate_id("service", &req.service).map_err(invalid)?;
    validate_id("source", &route.source).map_err(invalid)?;
    validate_id("destination", &route.destination).map_err(invalid)?;
    for (i, mobile) in route.mobiles.iter().enumerate() {
        validate_id("mobile", mobile).map_err(invalid)?;
        if mobile == &route.source || mobile == &route.destination {
            return Err(TaskError::Invalid(format!(
                "mobile agent '{mobile}' cannot also be the source or the destination"
            )));
        }
        if route.mobiles[..i].contains(mobile) {
            return Err(TaskError::Invalid(format!(
                "mobile agent '{mobile}' is named twice"
            )));
        }
    }
    if route.source == route.destination {
        return Err(TaskError::Invalid(format!(
            "source and destination are both '{}': nothing to migrate",
            route.source
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

/// Checks that every agent of the route is present, has a profile whose capability probe has
/// run, and plays its part: source and destination are edge hosts, the mobiles mobile devices.
pub fn check_agents(
    route: &Route,
    lookup: impl Fn(&str) -> Option<AgentView>,
) -> Result<Participants, TaskError> {
    let source = check_agent("source", &route.source, Role::Edge, &lookup)?;
    let destination = check_agent("destination", &route.destination, Role::Edge, &lookup)?;
    for mobile in &route.mobiles {
        check_agent("mobile agent", mobile, Role::Mobile, &lookup)?;
    }
    Ok(Participants {
        source,
        destination,
    })
}

/// The agent `id`, present, profiled, probed and of `role`; `what` names its part in errors.
pub fn check_agent(
    what: &str,
    id: &str,
    role: Role,
    lookup: impl Fn(&str) -> Option<AgentView>,
) -> Result<AgentView, TaskError> {
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
}

/// Plans the migration: host parameters from both profiles, M and the service's network from
/// the source's Describe, R_max and L from the source's latest metrics. Every fallback is
/// stated in the inputs' notes and at the head of the plan's explanation.
pub fn design(
    req: &MigrationRequest,
    route: &Route,
    gathered: &Gathered,
    default_bandwidth: BytesPerSec,
) -> Result<(Plan, PlanInputs), TaskError> {
    let who = &gathered.agents;
    let (described, state_bytes) = (&gathered.described.spec, gathered.described.state_bytes);
    let mut notes = Vec::new();
    if let (true, Some(client)) = (route.mobiles.is_empty(), described.network.clients.first()) {
        // Allowed (the client may reach the service another way), but rarely what is meant.
        notes.push(format!(
            "'{}' has a client at {} but no mobile agent follows it: no flow will be switched",
            req.service, client.ip
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
            req.service, route.source
        ));
    }
    let dirty_rate = dirty_rate.unwrap_or_default();

    let link = req.bandwidth_bytes_per_s.or_else(|| {
        metrics
            .and_then(|m| m.links.iter().find(|l| l.peer == route.destination))
            .map(|l| l.bandwidth_bytes_per_s)
            .filter(|b| b.0 > 0)
    });
    if link.is_none() {
        notes.push(format!(
            "no bandwidth estimate {} → {}: assuming the configured default of {default_bandwidth}",
            route.source, route.destination
        ));
    }
    let bandwidth = link.unwrap_or(default_bandwidth);

    // A service whose memory the source could not size still moves at least a page.
    let page = source_params.page_size_bytes.max(1);
    if state_bytes == 0 {
        notes.push(format!(
            "{} reported no memory state for '{}': planning with one page",
            route.source, req.service
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
        ContainerMetrics, HostMetrics, LinkEstimate, MetricsSample, Peer, ServiceNetwork,
        ServiceSpec,
    };
    use std::net::Ipv4Addr;

    fn spec(client_ip: Option<Ipv4Addr>) -> ServiceSpec {
        ServiceSpec {
            name: "counter".into(),
            image: "counter".into(),
            image_id: None,
            network: ServiceNetwork {
                clients: client_ip
                    .map(|ip| Peer { ip, mac: [2; 6] })
                    .into_iter()
                    .collect(),
                ..ServiceNetwork::new(Ipv4Addr::new(10, 0, 0, 10), 24)
            },
        }
    }
    use mose_protocol::model::{Objective, Strategy};
    use std::collections::BTreeMap;

    fn request() -> MigrationRequest {
        MigrationRequest {
            service: "counter".into(),
            source: Some("edge1".into()),
            destination: "edge2".into(),
            mobiles: Some(vec!["drone".into()]),
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

    use mose_api::fixtures::agent_view as view;

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

    fn route(req: &MigrationRequest) -> Route {
        resolve_route(req, None).unwrap()
    }

    fn check(req: &MigrationRequest) -> Result<Participants, TaskError> {
        let route = resolve_route(req, None)?;
        check_request(req, &route)?;
        let map = agents();
        check_agents(&route, |id| map.get(id).cloned())
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

        let (code, msg) = refused(|r| r.source = Some("ghost".into()));
        assert_eq!(code, 422);
        assert!(msg.contains("source 'ghost'"), "{msg}");

        let (code, msg) = refused(|r| {
            r.source = Some("drone".into());
            r.mobiles = None;
        });
        assert_eq!(code, 400);
        assert!(msg.contains("mobile agent, but must be edge"), "{msg}");

        let (code, msg) = refused(|r| r.mobiles = Some(vec!["edge2".into()]));
        assert_eq!(code, 400, "{msg}");

        let (code, msg) = refused(|r| r.mobiles = Some(vec!["edge9".into()]));
        assert_eq!(code, 422, "{msg}");

        let (code, msg) = refused(|r| r.mobiles = Some(vec!["drone".into(), "drone".into()]));
        assert_eq!(code, 400);
        assert!(msg.contains("named twice"), "{msg}");

        let (code, msg) = refused(|r| r.source = None);
        assert_eq!(code, 404, "no record, no source: {msg}");
        assert!(msg.contains("name its source"), "{msg}");

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
            &route(&request()),
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
            &route(&request()),
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
            &route(&req),
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
        let (plan, _) = design(
            &req,
            &route(&req),
            &gathered(&who, None, 0),
            BytesPerSec(125_000_000),
        )
        .unwrap();
        assert_eq!(plan.strategy, Strategy::Cold);
        assert!(
            plan.explanation.contains("one page"),
            "{}",
            plan.explanation
        );

        // A client without a mobile agent to steer its flow is worth a word.
        let req = MigrationRequest {
            mobiles: None,
            ..request()
        };
        let client = Some(Ipv4Addr::new(10, 0, 0, 2));
        let (plan, inputs) = design(
            &req,
            &route(&req),
            &gathered(&who, client, 1 << 20),
            BytesPerSec(1),
        )
        .unwrap();
        assert_eq!(inputs.notes.len(), 1, "{:?}", inputs.notes);
        assert!(
            plan.explanation.contains("client at 10.0.0.2"),
            "{}",
            plan.explanation
        );
        let (_, inputs) = design(
            &request(),
            &route(&request()),
            &gathered(&who, client, 1 << 20),
            BytesPerSec(1),
        )
        .unwrap();
        assert!(inputs.notes.is_empty(), "{:?}", inputs.notes);
    }

    fn deployed(host: &str) -> ServiceRecord {
        ServiceRecord {
            name: "counter".into(),
            image: "counter".into(),
            host: host.into(),
            args: vec![],
            env: BTreeMap::new(),
            volumes: Vec::new(),
            mobiles: vec!["drone".into(), "car".into()],
            network: ServiceNetwork::new(Ipv4Addr::new(10, 88, 0, 100), 24),
            status: crate::services::ServiceStatus::Running,
            last_migration: None,
            created_us: 0,
            updated_us: 0,
        }
    }

    #[test]
    fn a_deployed_service_brings_its_source_and_mobiles() {
        let req = MigrationRequest {
            source: None,
            mobiles: None,
            ..request()
        };
        let route = resolve_route(&req, Some(&deployed("edge1"))).unwrap();
        assert_eq!(route.source, "edge1");
        assert_eq!(
            route.mobiles,
            ["drone", "car"],
            "every mobile of the service"
        );
        // Named mobiles replace the service's; an asserted source must be right.
        let route = resolve_route(&request(), Some(&deployed("edge1"))).unwrap();
        assert_eq!(route.mobiles, ["drone"]);
        let err = resolve_route(&request(), Some(&deployed("edge3"))).unwrap_err();
        assert_eq!(err.status(), 409);
        assert!(
            err.to_string().contains("runs on edge3, not on edge1"),
            "{err}"
        );
    }
}
