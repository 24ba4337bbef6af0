//! [`Migrations`]: submit, inspect, list and cancel tasks — the calls behind both the HTTP API
//! and the Zenoh queryables.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use mose_protocol::messages::{now_us, PhaseEvent};
use mose_protocol::steps::{Describe, Described};
use mose_protocol::{decode, encode, KeySpace, Message};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, info_span, warn, Instrument};
use zenoh::sample::Locality;
use zenoh::Session;

use super::driver::{Driver, DriverConfig};
use super::plan::{check_agents, check_request, design, resolve_route, Gathered};
use super::store::{Store, StoreError, TaskFilter};
use super::{MigrationRequest, Progress, TaskError, TaskRecord, TaskStatus};
use crate::prometheus::MigrationMetrics;
use crate::registry::AgentsView;
use crate::rpc::AgentRpc;
use crate::services::ServiceStatus;
use mose_api::Reason;

/// A task the driver is working on.
pub(crate) struct Active {
    record: TaskRecord,
    cancel: watch::Sender<bool>,
}

/// What the drivers and the API calls share.
pub(crate) struct Shared {
    pub(crate) rpc: AgentRpc,
    pub(crate) session: Session,
    pub(crate) keys: KeySpace,
    pub(crate) agents: AgentsView,
    pub(crate) config: DriverConfig,
    pub(crate) store: Store,
    active: Mutex<HashMap<String, Active>>,
    /// Every change of an active task's events or status, for the event streams.
    changes: broadcast::Sender<TaskChange>,
    /// What is counted as tasks finish (`GET /metrics`).
    metrics: MigrationMetrics,
}

/// What an event stream hears of a task: an event appended at `index`, or the task's end.
#[derive(Debug, Clone)]
pub enum TaskChange {
    /// `events[index]` of the task is `event`.
    Event {
        /// The task.
        task: String,
        /// The event's position in the task's `events`.
        index: usize,
        /// The event.
        event: PhaseEvent,
    },
    /// The task has finished.
    Finished {
        /// The task as it ended.
        record: Box<TaskRecord>,
    },
}

impl TaskChange {
    /// The task it is about.
    pub fn task(&self) -> &str {
        match self {
            TaskChange::Event { task, .. } => task,
            TaskChange::Finished { record } => &record.id,
        }
    }
}

impl Shared {
    /// The active tasks. Also the lock under which service records change state, so that a
    /// service is never removed while a migration of it starts, nor migrated while removed.
    pub(crate) fn active(&self) -> MutexGuard<'_, HashMap<String, Active>> {
        // Records are changed by whole closures; a poisoned lock still holds consistent ones.
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes an active task's record, persists it and returns the result; `None` when the
    /// task is not active (already finished).
    pub(crate) fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut TaskRecord),
    ) -> Option<TaskRecord> {
        let mut active = self.active();
        let record = &mut active.get_mut(id)?.record;
        let (events_before, finished_before) = (record.events.len(), record.status.is_finished());
        change(record);
        record.updated_us = now_us();
        // Sent under the lock, so streams see changes in the order they were made. Nobody
        // listening is fine.
        for (index, event) in record.events.iter().enumerate().skip(events_before) {
            let _ = self.changes.send(TaskChange::Event {
                task: id.to_string(),
                index,
                event: event.clone(),
            });
        }
        let (created, finished) = (record.created_us, record.finished_us);
        record
            .measurements
            .update_from(created, finished, &record.events);
        if !finished_before && record.status.is_finished() {
            let _ = self.changes.send(TaskChange::Finished {
                record: Box::new(record.clone()),
            });
        }
        // Saved under the lock, so the file sees changes in the order they were made.
        if let Err(e) = self.store.save(record) {
            // The migration goes on (stopping mid-way is worse), but a restart would act on
            // an older state: say so loudly.
            error!(task = id, error = %e, "cannot persist the task; a restart would reconcile from stale state");
        }
        Some(record.clone())
    }

    /// A migration of `service` passed its point of no return: its record (if MOSE deployed
    /// it) says it runs on `host` now. A failure is logged, not fatal: the migration itself
    /// succeeded, and the next Describe finds the service where it is.
    pub(crate) fn move_service(&self, service: &str, host: &str) {
        let _active = self.active();
        let moved = self.store.service(service).and_then(|record| match record {
            Some(mut record) => {
                record.host = host.to_string();
                record.updated_us = now_us();
                self.store.save_service(&record).map(|()| true)
            }
            None => Ok(false),
        });
        match moved {
            Ok(true) => info!(service, host, "service record moved"),
            Ok(false) => {}
            Err(e) => {
                error!(service, host, error = %e, "cannot record where the service runs now")
            }
        }
    }

    /// An active task's record as it stands, without touching it (nor its file).
    pub(crate) fn read(&self, id: &str) -> Option<TaskRecord> {
        self.active().get(id).map(|a| a.record.clone())
    }

    /// Applies the last change to a task and stops tracking it as active.
    pub(crate) fn finish(
        &self,
        id: &str,
        change: impl FnOnce(&mut TaskRecord),
    ) -> Option<TaskRecord> {
        let record = self.update(id, change);
        self.active().remove(id);
        if let Some(r) = &record {
            self.metrics.finished(r);
        }
        record
    }

    /// Puts a message on `key`; losing a publication is logged, never fatal to a migration.
    pub(crate) async fn publish<M: Message>(&self, key: String, message: &M) {
        match encode(message) {
            Ok(bytes) => {
                if let Err(e) = self.session.put(&key, bytes).await {
                    warn!(key, error = %e, "cannot publish");
                }
            }
            Err(e) => warn!(key, error = %e, "cannot encode a message to publish"),
        }
    }
}

/// The largest page `GET /v1/migrations` answers.
pub const MAX_PAGE: usize = 1000;

/// How many changes a slow event stream may fall behind before it is told it lagged.
const CHANGES_BACKLOG: usize = 1024;

/// Aborts the agent-event listener when the last [`Migrations`] handle goes.
struct Listener(JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The migration service: validates, plans, persists and drives tasks. Cheap to clone.
#[derive(Clone)]
pub struct Migrations {
    pub(crate) shared: Arc<Shared>,
    _listener: Arc<Listener>,
}

impl Migrations {
    /// Starts the service on `store`: listens for the agents' phase events and reconciles every
    /// task a previous run left unfinished (rolled back, or released when it had passed the
    /// point of no return). Reconciliation runs in the background.
    pub async fn start(
        session: Session,
        keys: KeySpace,
        agents: AgentsView,
        store: Store,
        config: DriverConfig,
    ) -> Result<Self, TaskError> {
        let unfinished = store.unfinished()?;
        let events_key = keys.all_agent_events();
        // Only the agents' events: the orchestrator records its own as it publishes them.
        let subscriber = session
            .declare_subscriber(&events_key)
            .allowed_origin(Locality::Remote)
            .await
            .map_err(|e| TaskError::Internal(format!("cannot subscribe to {events_key}: {e}")))?;
        let shared = Arc::new(Shared {
            rpc: AgentRpc::new(session.clone(), keys.clone()),
            session,
            keys,
            agents,
            config,
            store,
            active: Mutex::default(),
            changes: broadcast::channel(CHANGES_BACKLOG).0,
            metrics: MigrationMetrics::default(),
        });
        let weak = Arc::downgrade(&shared);
        let listener = tokio::spawn(async move {
            while let Ok(sample) = subscriber.recv_async().await {
                record_agent_event(
                    &weak,
                    sample.key_expr().as_str(),
                    &sample.payload().to_bytes(),
                );
            }
        });
        for record in unfinished {
            info!(task = %record.id, status = %record.status, "task left unfinished by a previous run");
            let id = record.id.clone();
            let (cancel, rx) = watch::channel(false);
            shared
                .active()
                .insert(id.clone(), Active { record, cancel });
            tokio::spawn(Driver::new(shared.clone(), id, rx).reconcile());
        }
        Ok(Self {
            shared,
            _listener: Arc::new(Listener(listener)),
        })
    }

    /// What [`Migrations::submit`] would accept, without running it: every check, the
    /// source's Describe and the plan with its predictions (`POST /v1/migrations?dry_run=true`).
    /// Nothing is stored.
    pub async fn plan(&self, request: MigrationRequest) -> Result<TaskRecord, TaskError> {
        let service = self.shared.store.service(&request.service)?;
        let route = resolve_route(&request, service.as_ref())?;
        check_request(&request, &route)?;
        if let Some(s) = service
            .as_ref()
            .filter(|s| s.status != ServiceStatus::Running)
        {
            return Err(TaskError::Conflict(
                Reason::NotRunning,
                format!(
                    "service '{}' is {}, not running: it cannot be migrated now",
                    s.name, s.status
                ),
            ));
        }
        self.refuse_if_migrating(&request.service)?;
        let agents = check_agents(&route, |id| self.shared.agents.get(id))?;
        let id = new_op_id("m");
        let described = self
            .describe(&id, &request.service, &route.source)
            .instrument(info_span!("describe", task = %id, service = %request.service))
            .await?;
        let gathered = Gathered { agents, described };
        let (plan, inputs) = design(
            &request,
            &route,
            &gathered,
            self.shared.config.default_bandwidth_bytes_per_s,
        )?;
        let now = now_us();
        Ok(TaskRecord {
            id,
            request,
            route,
            spec: gathered.described.spec,
            inputs,
            plan,
            status: TaskStatus::Queued,
            phase: None,
            progress: Progress::default(),
            events: Vec::new(),
            faults: Vec::new(),
            error: None,
            measurements: Default::default(),
            created_us: now,
            updated_us: now,
            finished_us: None,
        })
    }

    /// Validates, gathers the plan's inputs (agents, the source's Describe), plans once and
    /// starts a migration. Returns the task as accepted.
    pub async fn submit(&self, request: MigrationRequest) -> Result<TaskRecord, TaskError> {
        let record = self.plan(request).await?;
        let (id, now) = (record.id.clone(), record.created_us);
        let (cancel, rx) = watch::channel(false);
        {
            // Checked again under the lock: two submissions may have raced past the first check.
            let mut active = self.shared.active();
            if let Some(other) = migrating(&active, &record.request.service) {
                return Err(other);
            }
            // The service's record is checked and marked under the same lock a removal takes.
            if let Some(mut service) = self.shared.store.service(&record.request.service)? {
                if service.status != ServiceStatus::Running {
                    return Err(TaskError::Conflict(
                        Reason::NotRunning,
                        format!(
                            "service '{}' is {}, not running: it cannot be migrated now",
                            service.name, service.status
                        ),
                    ));
                }
                service.last_migration = Some(id.clone());
                service.updated_us = now;
                self.shared.store.save_service(&service)?;
            }
            self.shared.store.save(&record)?;
            active.insert(
                id.clone(),
                Active {
                    record: record.clone(),
                    cancel,
                },
            );
        }
        info!(task = %id, strategy = %record.plan.strategy, "migration accepted");
        tokio::spawn(Driver::new(self.shared.clone(), id, rx).run());
        Ok(record)
    }

    /// One task, live while it runs.
    pub fn get(&self, id: &str) -> Result<TaskRecord, TaskError> {
        self.shared
            .store
            .get(id)?
            .ok_or_else(|| TaskError::NotFound(id.to_string()))
    }

    /// Every task, newest first.
    pub fn list(&self) -> Result<Vec<TaskRecord>, TaskError> {
        Ok(self.shared.store.list()?)
    }

    /// One page of tasks, newest first, and the token of the next (`GET /v1/migrations`).
    pub fn page(
        &self,
        filter: &TaskFilter,
    ) -> Result<(Vec<TaskRecord>, Option<String>), TaskError> {
        if let Some(service) = &filter.service {
            mose_protocol::keys::validate_id("service", service)
                .map_err(|e| TaskError::Invalid(e.to_string()))?;
        }
        if filter.limit == 0 || filter.limit > MAX_PAGE {
            return Err(TaskError::Invalid(format!(
                "limit must be between 1 and {MAX_PAGE}, got {}",
                filter.limit
            )));
        }
        self.shared.store.page(filter).map_err(|e| match e {
            StoreError::BadToken(_) => TaskError::Invalid(e.to_string()),
            other => other.into(),
        })
    }

    /// Forgets finished tasks older than `retention`; how many. Unfinished ones stay.
    pub fn prune(&self, retention: std::time::Duration) -> Result<usize, TaskError> {
        let before = now_us().saturating_sub(mose_protocol::units::micros(retention));
        Ok(self.shared.store.prune_finished(before)?)
    }

    /// Asks a running task to roll back. Refused once it has passed the point of no return
    /// (it then completes by releasing the source) or when it has finished.
    pub fn cancel(&self, id: &str) -> Result<TaskRecord, TaskError> {
        {
            let active = self.shared.active();
            if let Some(task) = active.get(id) {
                if task.record.progress.past_point_of_no_return() {
                    return Err(TaskError::Conflict(
                        Reason::PastPointOfNoReturn,
                        format!(
                            "migration {id} has passed its point of no return (restored and flow \
                         switched); it completes by releasing the source"
                        ),
                    ));
                }
                task.cancel.send_replace(true);
                info!(task = id, "cancel requested: rolling back");
                return Ok(task.record.clone());
            }
        }
        let finished = self.get(id)?;
        Err(TaskError::Conflict(
            Reason::Finished,
            format!("migration {id} has already finished ({})", finished.status),
        ))
    }

    fn refuse_if_migrating(&self, service: &str) -> Result<(), TaskError> {
        match migrating(&self.shared.active(), service) {
            Some(conflict) => Err(conflict),
            None => Ok(()),
        }
    }

    /// The Describe of `service` by the agent `source`, as step of `task`.
    pub(crate) async fn describe(
        &self,
        task: &str,
        service: &str,
        source: &str,
    ) -> Result<Described, TaskError> {
        let step = Describe {
            service: service.to_string(),
        };
        let timeout = self.shared.config.timeouts.describe;
        Ok(self.shared.rpc.call(source, task, step, timeout).await?)
    }

    /// The task's events from the first, then each new one as it happens, until it ends: the
    /// record as it stands and a receiver of what changes after it. Subscribed before the
    /// record is read, so nothing falls between the two; the caller skips events it already
    /// has by their index.
    pub fn watch(
        &self,
        id: &str,
    ) -> Result<(TaskRecord, broadcast::Receiver<TaskChange>), TaskError> {
        let changes = self.shared.changes.subscribe();
        let record = match self.shared.read(id) {
            Some(active) => active,
            None => self.get(id)?,
        };
        Ok((record, changes))
    }

    /// The id of the active migration of `service`, if one is running.
    /// What has been counted as tasks finished, since this process started.
    pub fn metrics(&self) -> &MigrationMetrics {
        &self.shared.metrics
    }

    /// How many tasks are queued or running.
    pub fn running(&self) -> usize {
        self.shared.active().len()
    }

    pub(crate) fn migrating(&self, service: &str) -> Option<String> {
        self.shared
            .active()
            .values()
            .find(|a| a.record.request.service == service)
            .map(|a| a.record.id.clone())
    }
}

/// A conflict if `service` is already being migrated.
pub(crate) fn migrating(active: &HashMap<String, Active>, service: &str) -> Option<TaskError> {
    active
        .values()
        .find(|a| a.record.request.service == service)
        .map(|a| {
            TaskError::Conflict(
                Reason::Migrating,
                format!(
                    "service '{service}' is already being migrated by task {}",
                    a.record.id
                ),
            )
        })
}

/// Ids of tasks (`m…`) and of the steps of service calls (`d…` deploy, `r…` remove, `i…`
/// inspect): a kind letter, the creation time and a counter, unique across restarts and valid
/// as a key chunk.
pub(crate) fn new_op_id(kind: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{kind}{}-{}",
        now_us(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Appends an agent's phase event to its task, if the task is active, the event speaks for
/// the agent and the task its key names, and that agent takes part in the task (a secured
/// domain already refuses events an agent puts under another's key: docs/security.md).
fn record_agent_event(shared: &Weak<Shared>, key: &str, payload: &[u8]) {
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let event: PhaseEvent = match decode(payload) {
        Ok(e) => e,
        Err(e) => {
            warn!(key, error = %e, "ignoring undecodable phase event");
            return;
        }
    };
    if shared.keys.agent_events(&event.agent, &event.task) != key {
        warn!(key, task = %event.task, agent = %event.agent, "ignoring phase event whose agent or task does not match its key");
        return;
    }
    let task = event.task.clone();
    let recorded = shared.update(&task, |r| {
        let route = &r.route;
        let ours = route.source == event.agent
            || route.destination == event.agent
            || route.mobiles.contains(&event.agent);
        if ours {
            r.events.push(event);
        } else {
            warn!(key, task = %r.id, "ignoring phase event of an agent that is not in the task");
        }
    });
    if recorded.is_none() {
        debug!(key, "phase event of a task that is not active");
    }
}
