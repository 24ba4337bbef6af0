//! The COAT driver: one task's state machine, its rollback, and reconciliation after a restart.
//!
//! Forward path (docs/coat.md, "Order of steps"):
//! Prepare(destination) → [pre-dump rounds](source) →
//! Checkpoint(source) → Restore(destination, fetching from the source) →
//! SwitchFlow(mobile → destination) → Release(source). Describe(source) runs earlier, at
//! submission, because the plan needs the service's size.
//!
//! Until the restore **and** the flow switch are confirmed, any failure, timeout or cancel
//! rolls back: Abort(destination), Resume(source), and SwitchFlow(mobile → source) when a
//! switch was sent. Rollback steps are idempotent on the agents, so each is retried a few
//! times. Past that point the only way is forward: Release(source), retried the same way.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use mose_protocol::messages::{now_us, Phase, PhaseEvent, PhaseStatus, Task};
use mose_protocol::steps::{
    Abort, Checkpoint, ExportImage, Fault, Fetch, ImageId, PreDump, Prepare, Release, Resend,
    Restore, Resume, StepKind, SwitchFlow,
};
use mose_protocol::units::BytesPerSec;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use super::service::Shared;
use super::{TaskRecord, TaskStatus};
use crate::rpc::RpcError;

/// How long each step may take. The agent enforces the same limit and answers with a failure
/// when it passes; the orchestrator waits a little longer for that answer to travel.
#[derive(Debug, Clone)]
pub struct StepTimeouts {
    /// Timeout of Describe.
    pub describe: Duration,
    /// Timeout of Prepare.
    pub prepare: Duration,
    /// Each pre-dump round and the final checkpoint.
    pub checkpoint: Duration,
    /// Restore excluding the transfer; the transfer's allowance is added per task
    /// (twice the image size at the planned bandwidth).
    pub restore: Duration,
    /// Timeout of SwitchFlow.
    pub switch_flow: Duration,
    /// Timeout of Release.
    pub release: Duration,
    /// Each attempt of each rollback step.
    pub rollback: Duration,
}

impl Default for StepTimeouts {
    fn default() -> Self {
        // Generous next to the measured step times (docs/coat.md, "Why this order": ≈0.5 s
        // checkpoint/restore, ≈0.2 s netns, ≈50 ms flow switch): a timeout is a failure, not a
        // slow success.
        Self {
            describe: Duration::from_secs(10),
            prepare: Duration::from_secs(30),
            checkpoint: Duration::from_secs(60),
            restore: Duration::from_secs(60),
            switch_flow: Duration::from_secs(10),
            release: Duration::from_secs(30),
            rollback: Duration::from_secs(30),
        }
    }
}

/// Knobs of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Per-step timeouts.
    pub timeouts: StepTimeouts,
    /// Attempts of each rollback or release step before giving up on it.
    pub retry_attempts: u32,
    /// Wait before the second attempt; doubles after each.
    pub retry_backoff: Duration,
    /// L when the source has no bandwidth estimate towards the destination.
    pub default_bandwidth_bytes_per_s: BytesPerSec,
    /// After a restart, how long to wait for a task's agents to reappear before acting.
    pub reconcile_wait: Duration,
    /// How long a rollback or release step waits for its agent when it is absent (crashed and
    /// restarting, paused, cut off): without it the attempts are spent in a second and a
    /// checkpointed source is never resumed.
    pub agent_wait: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            timeouts: StepTimeouts::default(),
            retry_attempts: 3,
            retry_backoff: Duration::from_millis(500),
            // 1 Gbit/s, the link of the MOSE paper's testbed.
            default_bandwidth_bytes_per_s: BytesPerSec(125_000_000),
            reconcile_wait: Duration::from_secs(10),
            agent_wait: Duration::from_secs(60),
        }
    }
}

/// The longest transfer allowance added to a restore; the agent caps any step at 10 min.
const MAX_TRANSFER_ALLOWANCE: Duration = Duration::from_secs(540);

/// What an idempotent step does when its agent is not present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// Wait for it (bounded by `agent_wait`): the step must happen, whenever the agent returns.
    Wait,
    /// Spend the attempts at once: someone else must not wait for this step.
    GiveUp,
}

/// Why the forward path stopped.
enum Stop {
    /// A step failed (or its effect is unknown).
    Failed(Fault),
    /// The operator cancelled.
    Cancelled,
    /// The orchestrator restarted before the point of no return.
    Restarted,
}

impl Stop {
    fn reason(&self) -> String {
        match self {
            Stop::Failed(fault) => fault.to_string(),
            Stop::Cancelled => "cancelled by the operator".to_string(),
            Stop::Restarted => "the orchestrator restarted before the migration passed its point \
                                of no return (restored and flow switched)"
                .to_string(),
        }
    }
}

/// The fault an RPC error is after `attempts` tries, recorded now.
fn fault_of(e: &RpcError, attempts: u32) -> Fault {
    let reason = match e {
        // The agent's own words; agent and step are the fault's fields.
        RpcError::Failed { failure, .. } => failure.reason.clone(),
        other => other.to_string(),
    };
    Fault {
        agent: e.agent().to_string(),
        op: e.op(),
        kind: e.kind(),
        reason,
        attempts,
        at_us: now_us(),
    }
}

/// Drives one task. Owns the task's cancel receiver; everything else is in [`Shared`].
pub(crate) struct Driver {
    shared: Arc<Shared>,
    id: String,
    cancel: watch::Receiver<bool>,
}

impl Driver {
    pub(crate) fn new(shared: Arc<Shared>, id: String, cancel: watch::Receiver<bool>) -> Self {
        Self { shared, id, cancel }
    }

    /// Runs a freshly submitted task to its end.
    pub(crate) async fn run(mut self) {
        let Some(record) = self.set(|r| r.status = TaskStatus::Running) else {
            return;
        };
        let span = migration_span(&record);
        async move {
            info!(strategy = %record.plan.strategy, rounds = record.plan.rounds, "migration started");
            self.publish_task(&record).await;
            match self.forward(&record).await {
                Ok(()) => self.release().await,
                Err(stop) => self.rollback(stop).await,
            }
        }
        .instrument(span)
        .await
    }

    /// Finishes a task that was running when the orchestrator stopped: forward if it had
    /// passed the point of no return, back to the source otherwise.
    pub(crate) async fn reconcile(mut self) {
        let Some(record) = self.set(|r| r.status = TaskStatus::Running) else {
            return;
        };
        let span = migration_span(&record);
        async move {
            let route = &record.route;
            let needed: Vec<&str> = [&route.source, &route.destination]
                .into_iter()
                .chain(&route.mobiles)
                .map(String::as_str)
                .collect();
            // Right after a restart the agents are still being rediscovered; acting at once
            // would spend the retries on agents that are merely not seen yet.
            let present = self
                .shared
                .agents
                .wait_until(self.shared.config.reconcile_wait, |m| {
                    needed.iter().all(|id| m.contains_key(*id))
                })
                .await;
            if !present {
                warn!(agents = ?needed, "not every agent of the task is present; acting anyway");
            }
            if record.progress.past_point_of_no_return() {
                info!(
                    "reconciling after restart: past the point of no return, releasing the source"
                );
                self.release().await;
            } else {
                info!("reconciling after restart: rolling back to the source");
                self.rollback(Stop::Restarted).await;
            }
        }
        .instrument(span)
        .await
    }

    async fn forward(&mut self, r: &TaskRecord) -> Result<(), Stop> {
        let t = self.shared.config.timeouts.clone();
        let (source, destination) = (&r.route.source, &r.route.destination);
        let service = &r.request.service;
        let bandwidth = r.plan.bandwidth_bytes_per_s;

        let prepare = Prepare {
            spec: r.spec.clone(),
        };
        let prepared = self
            .step(destination, prepare, Phase::Prepare, t.prepare)
            .await?;
        if !prepared.image_present {
            // The destination lacks the image: it travels now, while the service still runs,
            // so its time is the migration's but never the client's.
            let export = ExportImage {
                service: service.clone(),
                to: destination.clone(),
            };
            let exported = self
                .step(source, export, Phase::Image, t.checkpoint)
                .await?;
            let fetch = Fetch {
                from: source.clone(),
                image: ImageId::Container,
            };
            let timeout = t.prepare + transfer_allowance(exported.image_bytes, bandwidth);
            self.step(destination, fetch, Phase::Image, timeout).await?;
        }

        // Pre-copy: each round dumps what was dirtied since the round before (the first:
        // everything) while the service runs, and the destination fetches it before the next
        // round starts, as the model's Tᵢ = dump + Vᵢ/L has it. The final dump builds on all.
        let rounds = r.plan.rounds;
        for round in 0..rounds {
            let pre_dump = PreDump {
                service: service.clone(),
                round,
                to: destination.clone(),
            };
            let dumped = self
                .step(source, pre_dump, Phase::PreCopy, t.checkpoint)
                .await?;
            self.set(|r| r.measurements.pre_copy_bytes.push(dumped.image_bytes));
            let fetch = Fetch {
                from: source.clone(),
                image: dumped.image,
            };
            let timeout = t.prepare + transfer_allowance(dumped.image_bytes, bandwidth);
            self.step(destination, fetch, Phase::PreCopy, timeout)
                .await?;
        }

        let checkpoint = Checkpoint {
            service: service.clone(),
            rounds,
            to: destination.clone(),
        };
        let dumped = self
            .step(source, checkpoint, Phase::Checkpoint, t.checkpoint)
            .await?;
        self.set(|r| {
            r.measurements.image_bytes = Some(dumped.image_bytes);
            r.measurements.checkpoint_stats = Some(dumped.stats.clone());
        });

        // The rounds are on the destination already: only the final dump travels now.
        let restore = Restore {
            spec: r.spec.clone(),
            from: source.clone(),
            rounds,
        };
        let timeout = t.restore + transfer_allowance(dumped.image_bytes, bandwidth);
        let restored = self
            .step(destination, restore, Phase::Restore, timeout)
            .await?;
        self.set(|r| {
            r.measurements.restore_stats = Some(restored.stats);
            r.progress.restored = true;
        });

        if !r.route.mobiles.is_empty() {
            // Recorded before sending: if the orchestrator dies during the calls, the rollback
            // after restart must switch the flows back.
            self.set(|r| r.progress.switch_attempted = true);
            self.switch_flows(r, destination, t.switch_flow).await?;
        }
        self.set(|r| r.progress.switched = true);
        info!("point of no return passed: the destination is the truth now");
        self.nudge_clients(destination, service, t.switch_flow)
            .await;
        Ok(())
    }

    /// Asks `agent`, where `service` was just restored and the flow points, to nudge its TCP
    /// clients: requests the freeze swallowed otherwise wait for the clients' backed-off
    /// retransmission timers. Best effort: a failure costs a client that wait, not the task.
    async fn nudge_clients(&self, agent: &str, service: &str, timeout: Duration) {
        let resend = Resend {
            service: service.to_string(),
        };
        match self.shared.rpc.call(agent, &self.id, resend, timeout).await {
            Ok(resent) => info!(agent, nudges = resent.nudges, "clients nudged to resend"),
            Err(e) => {
                warn!(agent, error = %e, "clients not nudged to resend: they wait for their own timers")
            }
        }
    }

    /// Runs one forward step, recording its phase events; a cancel drops the call at once
    /// (the rollback after it undoes whatever the agent may still do).
    async fn step<S: StepKind>(
        &mut self,
        agent: &str,
        step: S,
        phase: Phase,
        timeout: Duration,
    ) -> Result<S::Outcome, Stop> {
        if *self.cancel.borrow() {
            return Err(Stop::Cancelled);
        }
        let op = S::OP.as_str();
        self.event(agent, phase, PhaseStatus::Started).await;
        let call = self
            .shared
            .rpc
            .call(agent, &self.id, step, timeout)
            .instrument(info_span!(
                "step",
                op,
                agent,
                timeout_ms = mose_protocol::units::millis(timeout)
            ));
        let cancel = &mut self.cancel;
        let cancelled = async {
            if cancel.wait_for(|c| *c).await.is_err() {
                // The sender lives as long as the task is active; without it nobody can cancel.
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            r = call => r.map_err(|e| Stop::Failed(fault_of(&e, 1))),
            () = cancelled => Err(Stop::Cancelled),
        };
        let status = match &result {
            Ok(_) => PhaseStatus::Finished,
            Err(stop) => PhaseStatus::Failed {
                error: stop.reason(),
            },
        };
        if let Err(Stop::Failed(fault)) = &result {
            self.set(|r| r.faults.push(fault.clone()));
        }
        self.event(agent, phase, status).await;
        result
    }

    /// SwitchFlow on every mobile at once, each with its own event pair; the first failure
    /// stops the task (the other switches still finish, and the rollback switches every mobile
    /// back). Not cut short by a cancel: the switches take milliseconds.
    async fn switch_flows(
        &mut self,
        r: &TaskRecord,
        to: &str,
        timeout: Duration,
    ) -> Result<(), Stop> {
        if *self.cancel.borrow() {
            return Err(Stop::Cancelled);
        }
        for mobile in &r.route.mobiles {
            self.event(mobile, Phase::FlowSwitch, PhaseStatus::Started)
                .await;
        }
        let (rpc, id) = (&self.shared.rpc, &self.id);
        let calls = r.route.mobiles.iter().map(|mobile| {
            let switch = SwitchFlow {
                network: r.spec.network.clone(),
                to: to.to_string(),
            };
            let span = info_span!("step", op = "switch-flow", agent = %mobile);
            async move { (mobile, rpc.call(mobile, id, switch, timeout).await) }.instrument(span)
        });
        let mut first_failure = None;
        for (mobile, result) in join_all(calls).await {
            let status = match result {
                Ok(_) => PhaseStatus::Finished,
                Err(e) => {
                    let fault = fault_of(&e, 1);
                    self.set(|r| r.faults.push(fault.clone()));
                    let error = fault.to_string();
                    first_failure.get_or_insert(Stop::Failed(fault));
                    PhaseStatus::Failed { error }
                }
            };
            self.event(mobile, Phase::FlowSwitch, status).await;
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Brings the service back to the source and ends the task.
    async fn rollback(&mut self, stop: Stop) {
        let Some(r) = self.set(|r| r.phase = Some(Phase::Rollback)) else {
            return;
        };
        let (source, destination) = (&r.route.source, &r.route.destination);
        let service = &r.request.service;
        let reason = stop.reason();
        warn!(%reason, "rolling back: the source copy stays the truth");
        let t = self.shared.config.timeouts.rollback;
        // Failures that leave debris at the destination but the service served by the source…
        let mut leftovers = Vec::new();
        // …and failures after which the service may be reachable nowhere.
        let mut unsafe_failures = Vec::new();
        // The destination copy goes first, so it can never run next to the resumed source —
        // unless the destination is away: then the source must not wait for it.
        let abort = Abort {
            service: service.clone(),
        };
        let aborted = self
            .retry(
                destination,
                abort.clone(),
                Phase::Rollback,
                t,
                Absent::GiveUp,
            )
            .await;
        // The source runs again *before* the flow points back at it: a flow switched to a host
        // whose service is not running makes that kernel answer RST (docs/coat.md, "Why this
        // order", step 5). Both wait for an absent agent: nobody else would ever resume the
        // frozen source.
        let resume = Resume {
            service: service.clone(),
        };
        let resumed = self
            .retry(source, resume, Phase::Rollback, t, Absent::Wait)
            .await;
        let resumed_ok = resumed.is_ok();
        if let Err(e) = resumed {
            unsafe_failures.push(e);
        }
        let mut flow_back = true;
        if r.progress.switch_attempted {
            // Every mobile, whether or not its forward switch got through: a switch is a
            // replacement of the flows, so switching back one that never moved is harmless.
            let back = SwitchFlow {
                network: r.spec.network.clone(),
                to: source.clone(),
            };
            let backs =
                r.route.mobiles.iter().map(|mobile| {
                    self.retry(mobile, back.clone(), Phase::Rollback, t, Absent::Wait)
                });
            for result in join_all(backs).await {
                if let Err(e) = result {
                    flow_back = false;
                    unsafe_failures.push(e);
                }
            }
        }
        if resumed_ok && flow_back {
            // A source restored from its own checkpoint has the same swallowed requests.
            self.nudge_clients(source, service, t).await;
        }
        if aborted.is_err() {
            // The source serves again, so now there is time to wait for a destination that
            // was away (paused, restarting): an agent that returns late with a restored copy
            // must not keep it as an orphan. Its abort queues behind any step still running.
            if let Err(e) = self
                .retry(destination, abort, Phase::Rollback, t, Absent::Wait)
                .await
            {
                leftovers.push(e);
            }
        }
        let mut error = reason;
        if !leftovers.is_empty() {
            error = format!(
                "{error}; the service runs at {source} again, but {destination} may keep \
                 leftovers: {}",
                join(&leftovers)
            );
        }
        if unsafe_failures.is_empty() {
            let status = match stop {
                Stop::Cancelled => TaskStatus::Cancelled,
                Stop::Failed(_) | Stop::Restarted => TaskStatus::RolledBack,
            };
            self.finish(status, Some(error));
        } else {
            self.finish(
                TaskStatus::Failed,
                Some(format!(
                    "{error}; rollback incomplete, check that '{service}' runs at {source} and \
                     the client flow points at it: {}",
                    join(&unsafe_failures)
                )),
            );
        }
    }

    /// Releases the source after the point of no return and ends the task.
    async fn release(&mut self) {
        let Some(r) = self.snapshot() else { return };
        let (source, destination) = (&r.route.source, &r.route.destination);
        // Past the point of no return the service runs at the destination, also when this
        // release is a restarted orchestrator's reconciliation: its record says so first.
        self.shared.move_service(&r.request.service, destination);
        let release = Release {
            service: r.request.service.clone(),
        };
        let t = self.shared.config.timeouts.release;
        match self
            .retry(source, release, Phase::Cleanup, t, Absent::Wait)
            .await
        {
            Ok(()) => self.finish(TaskStatus::Succeeded, None),
            Err(e) => self.finish(
                TaskStatus::Failed,
                Some(format!(
                    "the service runs at {destination}, but {source} did not release its copy: {e}"
                )),
            ),
        }
    }

    /// Runs an idempotent step up to `retry_attempts` times with a doubling backoff; with
    /// [`Absent::Wait`], an attempt first waits (up to `agent_wait` in all) for an agent that is
    /// not present, instead of failing at once.
    async fn retry<S: StepKind>(
        &self,
        agent: &str,
        step: S,
        phase: Phase,
        timeout: Duration,
        absent: Absent,
    ) -> Result<(), Fault> {
        let config = &self.shared.config;
        let attempts = config.retry_attempts.max(1);
        let mut backoff = config.retry_backoff;
        let op = S::OP.as_str();
        self.event(agent, phase, PhaseStatus::Started).await;
        let wait_until = tokio::time::Instant::now() + config.agent_wait;
        let mut attempt = 1;
        let last = loop {
            if absent == Absent::Wait && self.shared.agents.get(agent).is_none() {
                warn!(op, agent, "agent absent: waiting for it to return");
                let left = wait_until.saturating_duration_since(tokio::time::Instant::now());
                let back = self
                    .shared
                    .agents
                    .wait_until(left, |m| m.contains_key(agent))
                    .await;
                info!(op, agent, back, "done waiting for the agent");
            }
            let call = self
                .shared
                .rpc
                .call(agent, &self.id, step.clone(), timeout)
                .instrument(info_span!("step", op, agent, attempt));
            match call.await {
                Ok(_) => {
                    self.event(agent, phase, PhaseStatus::Finished).await;
                    return Ok(());
                }
                Err(e) => {
                    warn!(op, agent, attempt, error = %e, "idempotent step failed");
                    if attempt >= attempts {
                        break e;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        };
        let fault = fault_of(&last, attempts);
        self.set(|r| r.faults.push(fault.clone()));
        self.event(
            agent,
            phase,
            PhaseStatus::Failed {
                error: fault.to_string(),
            },
        )
        .await;
        Err(fault)
    }

    fn finish(&self, status: TaskStatus, error: Option<String>) {
        let finished = self.shared.finish(&self.id, |r| {
            r.status = status;
            r.error = error;
            r.finished_us = Some(now_us());
        });
        if let Some(r) = finished {
            info!(status = %r.status, error = r.error.as_deref().unwrap_or(""), "migration finished");
        }
    }

    fn set(&self, change: impl FnOnce(&mut TaskRecord)) -> Option<TaskRecord> {
        self.shared.update(&self.id, change)
    }

    fn snapshot(&self) -> Option<TaskRecord> {
        self.shared.read(&self.id)
    }

    /// Records a phase event and publishes it on the task's event key.
    async fn event(&self, agent: &str, phase: Phase, status: PhaseStatus) {
        let event = PhaseEvent {
            task: self.id.clone(),
            agent: agent.to_string(),
            phase,
            status,
            at_us: now_us(),
        };
        self.set(|r| {
            r.phase = Some(phase);
            r.events.push(event.clone());
        });
        self.shared
            .publish(self.shared.keys.task_events(&self.id), &event)
            .await;
    }

    async fn publish_task(&self, r: &TaskRecord) {
        let task = Task {
            id: r.id.clone(),
            service: r.request.service.clone(),
            source: r.route.source.clone(),
            destination: r.route.destination.clone(),
            mobiles: r.route.mobiles.clone(),
            plan: r.plan.clone(),
            created_us: r.created_us,
        };
        self.shared
            .publish(self.shared.keys.task(&r.id), &task)
            .await;
    }
}

fn migration_span(r: &TaskRecord) -> tracing::Span {
    info_span!(
        "migration",
        task = %r.id,
        service = %r.request.service,
        source = %r.route.source,
        destination = %r.route.destination,
    )
}

/// Faults as one sentence, for the task's error summary.
fn join(faults: &[Fault]) -> String {
    faults
        .iter()
        .map(Fault::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Twice the time the image takes at the planned bandwidth: the restore fetches it first.
fn transfer_allowance(image_bytes: u64, bandwidth: BytesPerSec) -> Duration {
    let seconds = 2.0 * image_bytes as f64 / bandwidth.0.max(1) as f64;
    Duration::try_from_secs_f64(seconds)
        .unwrap_or(MAX_TRANSFER_ALLOWANCE)
        .min(MAX_TRANSFER_ALLOWANCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_allowance_scales_and_is_capped() {
        assert_eq!(transfer_allowance(0, BytesPerSec(1)), Duration::ZERO);
        assert_eq!(
            transfer_allowance(125_000_000, BytesPerSec(125_000_000)),
            Duration::from_secs(2)
        );
        assert_eq!(
            transfer_allowance(u64::MAX, BytesPerSec(0)),
            MAX_TRANSFER_ALLOWANCE
        );
    }
}
