//! Services MOSE deploys: `POST/GET/DELETE /v1/services`. A service has a name, an image, a
//! host, the mobiles whose flows follow it, and an overlay identity allocated from the
//! [`pool`]. Its record lives in the task database; a migration moves its host at the point of
//! no return, so "where does it run" is always the record's `host`.
//!
//! Deploying allocates the address and stores the record (`deploying`) first, then asks the
//! host to create it (Deploy) and every mobile to steer its flow there (SwitchFlow). If any of
//! that fails, everything made is removed again and the address freed: a deployment either
//! runs or leaves nothing. Removing goes the other way (ClearFlow on the mobiles, Remove on
//! the host) and forgets the record only when the host confirmed.

pub mod pool;

use std::collections::BTreeSet;

use futures::future::join_all;
use mose_protocol::keys::validate_id;
use mose_protocol::messages::{now_us, Role, ServiceNetwork, ServiceSpec};
use mose_protocol::steps::{ClearFlow, Deploy, Remove, SwitchFlow};
use mose_protocol::volumes::check_volumes;
use tracing::{info, info_span, warn, Instrument};

pub use mose_api::services::{DeployRequest, ServiceRecord, ServiceStatus, ServiceView};
pub use pool::{AddressPool, PoolError};

use crate::rpc::RpcError;
use crate::tasks::plan::check_agent;
use crate::tasks::service::{migrating, new_op_id};
use crate::tasks::{Migrations, TaskError};
use mose_api::Reason;

/// The service calls. Cheap to clone; shares the agents, the RPC client and the database with
/// the migrations.
#[derive(Clone)]
pub struct Services {
    migrations: Migrations,
    pool: AddressPool,
}

impl Services {
    /// Services over the same state as `migrations`, deployed with addresses from `pool`.
    pub fn new(migrations: Migrations, pool: AddressPool) -> Self {
        Services { migrations, pool }
    }

    /// Every service, by name.
    pub fn list(&self) -> Result<Vec<ServiceRecord>, TaskError> {
        Ok(self.migrations.shared.store.services()?)
    }

    /// One service's record.
    pub fn get(&self, name: &str) -> Result<ServiceRecord, TaskError> {
        self.migrations
            .shared
            .store
            .service(name)?
            .ok_or_else(|| no_service(name))
    }

    /// The record with what the host reports now: state size and clients (its Describe),
    /// dirty rate (its metrics), and the migration running, if any. A host that does not
    /// answer leaves those empty and says so in `notes`.
    pub async fn view(&self, name: &str) -> Result<ServiceView, TaskError> {
        let record = self.get(name)?;
        let shared = &self.migrations.shared;
        let mut notes = Vec::new();
        let dirty_rate_bytes_per_s = shared
            .agents
            .get(&record.host)
            .and_then(|a| a.metrics)
            .and_then(|m| m.containers.into_iter().find(|c| c.name == name))
            .and_then(|c| c.dirty_rate_bytes_per_s);
        let (state_bytes, clients) = match record.status {
            ServiceStatus::Running => match self
                .migrations
                .describe(&new_op_id("i"), name, &record.host)
                .await
            {
                Ok(d) => (Some(d.state_bytes), d.spec.network.clients),
                Err(e) => {
                    notes.push(format!("{} did not describe it: {e}", record.host));
                    (None, Vec::new())
                }
            },
            other => {
                notes.push(format!(
                    "it is {other}: its host was not asked for its state"
                ));
                (None, Vec::new())
            }
        };
        Ok(ServiceView {
            migrating: self.migrations.migrating(name),
            record,
            state_bytes,
            dirty_rate_bytes_per_s,
            clients,
            notes,
        })
    }

    /// Deploys a service: checks the request and the agents, allocates its address, creates
    /// it on its host and steers every mobile's flow to it. Returns the running service.
    pub async fn deploy(&self, request: DeployRequest) -> Result<ServiceRecord, TaskError> {
        check_deploy(&request)?;
        let shared = &self.migrations.shared;
        let lookup = |id: &str| shared.agents.get(id);
        check_agent("host", &request.host, Role::Edge, lookup)?;
        let mobiles = match &request.mobiles {
            Some(named) => named.clone(),
            None => {
                let mut every: Vec<String> = shared
                    .agents
                    .list()
                    .into_iter()
                    .filter(|a| a.profile.as_ref().is_some_and(|p| p.role == Role::Mobile))
                    .map(|a| a.id)
                    .collect();
                every.sort();
                every
            }
        };
        for mobile in &mobiles {
            check_agent("mobile agent", mobile, Role::Mobile, lookup)?;
        }
        let record = self.reserve(&request, mobiles)?;
        self.settle(&new_op_id("d"), record, &request).await
    }

    /// Brings a reserved (`deploying`) record's service up on its host and mobiles and marks
    /// it running; if that fails, removes what was made and forgets the record, or, when even
    /// that fails, leaves it `removing` for a later `DELETE`.
    async fn settle(
        &self,
        op: &str,
        record: ServiceRecord,
        request: &DeployRequest,
    ) -> Result<ServiceRecord, TaskError> {
        let shared = &self.migrations.shared;
        let span = info_span!("deploy", service = %record.name, host = %record.host, ip = %record.network.ip);
        match self
            .bring_up(op, &record, request)
            .instrument(span.clone())
            .await
        {
            Ok(()) => {
                let mut running = record;
                running.status = ServiceStatus::Running;
                running.updated_us = now_us();
                shared.store.save_service(&running)?;
                span.in_scope(|| info!("service deployed"));
                Ok(running)
            }
            Err(e) => {
                span.in_scope(|| warn!(error = %e, "deployment failed: removing what was made"));
                if let Err(left) = self.tear_down(op, &record).instrument(span).await {
                    // The record stays (removing), so `DELETE` can finish the job later.
                    let mut removing = record;
                    removing.status = ServiceStatus::Removing;
                    shared.store.save_service(&removing)?;
                    return Err(TaskError::Conflict(
                        Reason::RemovalIncomplete,
                        format!(
                        "deploying {} failed ({e}), and so did removing what was made ({left}); \
                         repeat DELETE /v1/services/{} once the agents are back",
                        removing.name, removing.name
                    ),
                    ));
                }
                shared.store.delete_service(&record.name)?;
                Err(e)
            }
        }
    }

    /// Finishes what a previous run of the orchestrator left half done, as the task service
    /// does for migrations: a deployment that never answered is brought up again (its steps
    /// are idempotent on the agents) or, failing that, removed; an unfinished removal is
    /// repeated. Waits for the agents involved up to the configured reconcile wait.
    pub async fn reconcile(&self) {
        let shared = &self.migrations.shared;
        let records = match self.list() {
            Ok(records) => records,
            Err(e) => {
                warn!(error = %e, "cannot read the service records to reconcile");
                return;
            }
        };
        for record in records
            .into_iter()
            .filter(|r| r.status != ServiceStatus::Running)
        {
            let needed: Vec<&String> = std::iter::once(&record.host)
                .chain(&record.mobiles)
                .collect();
            let present = shared
                .agents
                .wait_until(shared.config.reconcile_wait, |m| {
                    needed.iter().all(|id| m.contains_key(*id))
                })
                .await;
            let (name, status) = (record.name.clone(), record.status);
            info!(service = %name, %status, present, "service left unfinished by a previous run");
            let result = match status {
                ServiceStatus::Deploying => {
                    let request = DeployRequest {
                        name: record.name.clone(),
                        image: record.image.clone(),
                        host: record.host.clone(),
                        args: record.args.clone(),
                        env: record.env.clone(),
                        volumes: record.volumes.clone(),
                        mobiles: Some(record.mobiles.clone()),
                    };
                    self.settle(&new_op_id("d"), record, &request)
                        .await
                        .map(drop)
                }
                ServiceStatus::Removing => self.remove(&name).await,
                ServiceStatus::Running => Ok(()),
            };
            match result {
                Ok(()) => info!(service = %name, "reconciled"),
                Err(e) => {
                    warn!(service = %name, error = %e, "cannot reconcile; DELETE it to retry")
                }
            }
        }
    }

    /// Removes a service from its mobiles and its host, then forgets it (freeing its
    /// address). Refused while it migrates. A failed removal leaves the record `removing`;
    /// repeating the call finishes it.
    pub async fn remove(&self, name: &str) -> Result<(), TaskError> {
        let shared = &self.migrations.shared;
        let record = {
            let active = shared.active();
            let mut record = shared
                .store
                .service(name)?
                .ok_or_else(|| no_service(name))?;
            if let Some(conflict) = migrating(&active, name) {
                return Err(conflict);
            }
            record.status = ServiceStatus::Removing;
            record.updated_us = now_us();
            shared.store.save_service(&record)?;
            record
        };
        let op = new_op_id("r");
        let span = info_span!("remove", service = %name, host = %record.host);
        self.tear_down(&op, &record)
            .instrument(span.clone())
            .await
            .map_err(TaskError::Agent)?;
        shared.store.delete_service(name)?;
        span.in_scope(|| info!("service removed"));
        Ok(())
    }

    /// Under the lock removals and migrations take: the name is free, the lowest free address
    /// of the pool is taken, and the record is stored (`deploying`) before any agent acts.
    fn reserve(
        &self,
        request: &DeployRequest,
        mobiles: Vec<String>,
    ) -> Result<ServiceRecord, TaskError> {
        let shared = &self.migrations.shared;
        let _active = shared.active();
        let services = shared.store.services()?;
        if services.iter().any(|s| s.name == request.name) {
            return Err(TaskError::Conflict(
                Reason::NameTaken,
                format!(
                    "a service named '{}' already exists (see GET /v1/services/{})",
                    request.name, request.name
                ),
            ));
        }
        let used: BTreeSet<_> = services.iter().map(|s| s.network.ip).collect();
        let ip = self.pool.allocate(&used).ok_or_else(|| {
            TaskError::Conflict(
                Reason::PoolExhausted,
                format!(
                    "the service address pool {} is exhausted ({} services): remove one or \
                 configure a larger [services] pool",
                    self.pool,
                    self.pool.size()
                ),
            )
        })?;
        let now = now_us();
        let record = ServiceRecord {
            name: request.name.clone(),
            image: request.image.clone(),
            host: request.host.clone(),
            args: request.args.clone(),
            env: request.env.clone(),
            volumes: request.volumes.clone(),
            mobiles,
            network: ServiceNetwork::new(ip, self.pool.prefix_len()),
            status: ServiceStatus::Deploying,
            last_migration: None,
            created_us: now,
            updated_us: now,
        };
        shared.store.save_service(&record)?;
        Ok(record)
    }

    /// Deploy on the host, then SwitchFlow on every mobile in parallel.
    async fn bring_up(
        &self,
        op: &str,
        record: &ServiceRecord,
        request: &DeployRequest,
    ) -> Result<(), TaskError> {
        let shared = &self.migrations.shared;
        let t = &shared.config.timeouts;
        let deploy = Deploy {
            spec: spec_of(record),
            args: request.args.clone(),
            env: request.env.clone(),
            volumes: request.volumes.clone(),
        };
        shared.rpc.call(&record.host, op, deploy, t.prepare).await?;
        let switches = record.mobiles.iter().map(|mobile| {
            let step = SwitchFlow {
                network: record.network.clone(),
                to: record.host.clone(),
            };
            shared.rpc.call(mobile, op, step, t.switch_flow)
        });
        for result in join_all(switches).await {
            result?;
        }
        Ok(())
    }

    /// ClearFlow on the mobiles, then Remove on the host. A mobile that is not present is
    /// skipped (its flow points at an address nobody answers); the host must confirm.
    async fn tear_down(&self, op: &str, record: &ServiceRecord) -> Result<(), RpcError> {
        let shared = &self.migrations.shared;
        let t = &shared.config.timeouts;
        let present = |id: &String| shared.agents.get(id).is_some();
        let clears = record.mobiles.iter().filter(|m| present(m)).map(|mobile| {
            let step = ClearFlow {
                ip: record.network.ip,
            };
            shared.rpc.call(mobile, op, step, t.switch_flow)
        });
        let mut first_error = None;
        for result in join_all(clears).await {
            if let Err(e) = result {
                warn!(error = %e, "cannot clear a mobile's flow");
                first_error.get_or_insert(e);
            }
        }
        let remove = Remove {
            service: record.name.clone(),
            ip: record.network.ip,
        };
        shared.rpc.call(&record.host, op, remove, t.release).await?;
        first_error.map_or(Ok(()), Err)
    }
}

/// What Deploy gives the host: the service's name, image and identity.
fn spec_of(record: &ServiceRecord) -> ServiceSpec {
    ServiceSpec {
        name: record.name.clone(),
        image: record.image.clone(),
        image_id: None,
        network: record.network.clone(),
    }
}

fn no_service(name: &str) -> TaskError {
    TaskError::NoService(format!("no service '{name}' (see GET /v1/services)"))
}

/// The checks that need nothing but the request.
fn check_deploy(request: &DeployRequest) -> Result<(), TaskError> {
    let invalid = |e: mose_protocol::KeyError| TaskError::Invalid(e.to_string());
    validate_id("service name", &request.name).map_err(invalid)?;
    validate_id("host", &request.host).map_err(invalid)?;
    if request.image.trim().is_empty() || request.image.chars().any(char::is_whitespace) {
        return Err(TaskError::Invalid(format!(
            "image '{}' is not an image reference",
            request.image
        )));
    }
    for key in request.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(TaskError::Invalid(format!(
                "environment variable name '{key}' is not usable"
            )));
        }
    }
    check_volumes(&request.volumes).map_err(|e| TaskError::Invalid(e.to_string()))?;
    if let Some(mobiles) = &request.mobiles {
        for (i, m) in mobiles.iter().enumerate() {
            validate_id("mobile", m).map_err(invalid)?;
            if mobiles[..i].contains(m) {
                return Err(TaskError::Invalid(format!(
                    "mobile agent '{m}' is named twice"
                )));
            }
        }
    }
    Ok(())
}
