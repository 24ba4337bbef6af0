//! The COAT driver: one task's state machine, its rollback, and reconciliation after a restart.
//!
//! Forward path (SPEC §4): Prepare(destination) → [pre-dump rounds](source) →
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

use mose_protocol::messages::{now_us, Phase, PhaseEvent, PhaseStatus, Step, StepOutcome, Task};
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use super::service::Shared;
use super::{TaskRecord, TaskStatus};

/// Name under which the source serves the final checkpoint image (`images/{task}/{name}`).
pub const IMAGE: &str = "checkpoint";

/// How long each step may take. The agent enforces the same limit and answers with a failure
/// when it passes; the orchestrator waits a little longer for that answer to travel.
#[derive(Debug, Clone)]
pub struct StepTimeouts {
    pub describe: Duration,
    pub prepare: Duration,
    /// Each pre-dump round and the final checkpoint.
    pub checkpoint: Duration,
    /// Restore excluding the transfer; the transfer's allowance is added per task
    /// (twice the image size at the planned bandwidth).
    pub restore: Duration,
    pub switch_flow: Duration,
    pub release: Duration,
    /// Each attempt of each rollback step.
    pub rollback: Duration,
}

impl Default for StepTimeouts {
    fn default() -> Self {
        // Generous next to the measured step times (SPEC §4: ≈0.5 s checkpoint/restore,
        // ≈0.2 s netns, ≈50 ms flow switch): a timeout is a failure, not a slow success.
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
    pub timeouts: StepTimeouts,
    /// Attempts of each rollback or release step before giving up on it.
    pub retry_attempts: u32,
    /// Wait before the second attempt; doubles after each.
    pub retry_backoff: Duration,
    /// L when the source has no bandwidth estimate towards the destination (B/s).
    pub default_bandwidth_bps: u64,
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
            default_bandwidth_bps: 125_000_000,
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
    Failed(String),
    Cancelled,
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
            let req = &record.request;
            let needed: Vec<&str> = [
                Some(&req.source),
                Some(&req.destination),
                req.mobile.as_ref(),
            ]
            .into_iter()
            .flatten()
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
                self.rollback(Stop::Failed(
                    "the orchestrator restarted before the migration passed its point of no \
                     return (restored and flow switched)"
                        .into(),
                ))
                .await;
            }
        }
        .instrument(span)
        .await
    }

    async fn forward(&mut self, r: &TaskRecord) -> Result<(), Stop> {
        let t = self.shared.config.timeouts.clone();
        let (source, destination) = (&r.request.source, &r.request.destination);
        let service = &r.request.service;

        self.step(
            destination,
            Step::Prepare {
                spec: r.spec.clone(),
            },
            Phase::Prepare,
            t.prepare,
        )
        .await?;

        // Pre-copy: each round dumps what was dirtied since the round before (the first:
        // everything) while the service runs, and the destination fetches it before the next
        // round starts, as the model's Tᵢ = dump + Vᵢ/L has it. The final dump builds on all.
        let mut rounds = Vec::new();
        for round in 0..r.plan.rounds {
            let image = format!("pre-{round}");
            let pre_dump = Step::Checkpoint {
                service: service.clone(),
                image: image.clone(),
                leave_running: true,
                pre_dump: true,
            };
            let bytes = match self
                .step(source, pre_dump, Phase::PreCopy, t.checkpoint)
                .await?
            {
                StepOutcome::Checkpointed { image_bytes, .. } => image_bytes,
                other => return Err(unexpected(source, "pre-dump", &other)),
            };
            self.set(|r| r.measurements.pre_copy_bytes.push(bytes));
            let fetch = Step::Fetch {
                from_agent: source.clone(),
                image: image.clone(),
            };
            let timeout = t.prepare + transfer_allowance(bytes, r.plan.bandwidth_bps);
            self.step(destination, fetch, Phase::PreCopy, timeout)
                .await?;
            rounds.push(image);
        }

        let checkpoint = Step::Checkpoint {
            service: service.clone(),
            image: IMAGE.into(),
            leave_running: false,
            pre_dump: false,
        };
        let image_bytes = match self
            .step(source, checkpoint, Phase::Checkpoint, t.checkpoint)
            .await?
        {
            StepOutcome::Checkpointed { image_bytes, stats } => {
                self.set(|r| {
                    r.measurements.image_bytes = Some(image_bytes);
                    r.measurements.checkpoint_stats = Some(stats);
                });
                image_bytes
            }
            other => return Err(unexpected(source, "checkpoint", &other)),
        };

        // The rounds are on the destination already: only the final dump travels now.
        let restore = Step::Restore {
            spec: r.spec.clone(),
            from_agent: source.clone(),
            image: IMAGE.into(),
            previous: rounds,
        };
        let timeout = t.restore + transfer_allowance(image_bytes, r.plan.bandwidth_bps);
        match self
            .step(destination, restore, Phase::Restore, timeout)
            .await?
        {
            StepOutcome::Restored { stats } => {
                self.set(|r| {
                    r.measurements.restore_stats = Some(stats);
                    r.progress.restored = true;
                });
            }
            other => return Err(unexpected(destination, "restore", &other)),
        }

        if let Some(mobile) = &r.request.mobile {
            // Recorded before sending: if the orchestrator dies during the call, the rollback
            // after restart must switch the flow back.
            self.set(|r| r.progress.switch_attempted = true);
            let switch = Step::SwitchFlow {
                network: r.spec.network.clone(),
                to_agent: destination.clone(),
            };
            self.step(mobile, switch, Phase::FlowSwitch, t.switch_flow)
                .await?;
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
        let resend = Step::Resend {
            service: service.to_string(),
        };
        if let Err(e) = self.shared.rpc.call(agent, &self.id, resend, timeout).await {
            warn!(agent, error = %e, "clients not nudged to resend: they wait for their own timers");
        }
    }

    /// Runs one forward step, recording its phase events; a cancel drops the call at once
    /// (the rollback after it undoes whatever the agent may still do).
    async fn step(
        &mut self,
        agent: &str,
        step: Step,
        phase: Phase,
        timeout: Duration,
    ) -> Result<StepOutcome, Stop> {
        if *self.cancel.borrow() {
            return Err(Stop::Cancelled);
        }
        let op = step.op();
        self.event(agent, phase, PhaseStatus::Started).await;
        let call = self
            .shared
            .rpc
            .call(agent, &self.id, step, timeout)
            .instrument(info_span!(
                "step",
                op,
                agent,
                timeout_ms = timeout.as_millis() as u64
            ));
        let cancel = &mut self.cancel;
        let cancelled = async {
            if cancel.wait_for(|c| *c).await.is_err() {
                // The sender lives as long as the task is active; without it nobody can cancel.
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            r = call => r.map_err(|e| Stop::Failed(e.to_string())),
            () = cancelled => Err(Stop::Cancelled),
        };
        let status = match &result {
            Ok(_) => PhaseStatus::Finished,
            Err(Stop::Failed(error)) => PhaseStatus::Failed {
                error: error.clone(),
            },
            Err(Stop::Cancelled) => PhaseStatus::Failed {
                error: "cancelled".into(),
            },
        };
        self.event(agent, phase, status).await;
        result
    }

    /// Brings the service back to the source and ends the task.
    async fn rollback(&mut self, stop: Stop) {
        let Some(r) = self.set(|r| r.phase = Some(Phase::Rollback)) else {
            return;
        };
        let (source, destination) = (&r.request.source, &r.request.destination);
        let service = &r.request.service;
        let reason = match &stop {
            Stop::Failed(error) => error.clone(),
            Stop::Cancelled => "cancelled by the operator".to_string(),
        };
        warn!(%reason, "rolling back: the source copy stays the truth");
        let t = self.shared.config.timeouts.rollback;
        // Failures that leave debris at the destination but the service served by the source…
        let mut leftovers = Vec::new();
        // …and failures after which the service may be reachable nowhere.
        let mut unsafe_failures = Vec::new();
        // The destination copy goes first, so it can never run next to the resumed source —
        // unless the destination is away: then the source must not wait for it.
        let abort = Step::Abort {
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
        // whose service is not running makes that kernel answer RST (SPEC §4, step 5). Both wait
        // for an absent agent: nobody else would ever resume the frozen source.
        let resume = Step::Resume {
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
        if let (true, Some(mobile)) = (r.progress.switch_attempted, &r.request.mobile) {
            let back = Step::SwitchFlow {
                network: r.spec.network.clone(),
                to_agent: source.clone(),
            };
            if let Err(e) = self
                .retry(mobile, back, Phase::Rollback, t, Absent::Wait)
                .await
            {
                flow_back = false;
                unsafe_failures.push(e);
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
                leftovers.join("; ")
            );
        }
        if unsafe_failures.is_empty() {
            let status = match stop {
                Stop::Cancelled => TaskStatus::Cancelled,
                Stop::Failed(_) => TaskStatus::RolledBack,
            };
            self.finish(status, Some(error));
        } else {
            self.finish(
                TaskStatus::Failed,
                Some(format!(
                    "{error}; rollback incomplete, check that '{service}' runs at {source} and \
                     the client flow points at it: {}",
                    unsafe_failures.join("; ")
                )),
            );
        }
    }

    /// Releases the source after the point of no return and ends the task.
    async fn release(&mut self) {
        let Some(r) = self.snapshot() else { return };
        let (source, destination) = (&r.request.source, &r.request.destination);
        let release = Step::Release {
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
    async fn retry(
        &self,
        agent: &str,
        step: Step,
        phase: Phase,
        timeout: Duration,
        absent: Absent,
    ) -> Result<(), String> {
        let config = &self.shared.config;
        let attempts = config.retry_attempts.max(1);
        let mut backoff = config.retry_backoff;
        let op = step.op();
        self.event(agent, phase, PhaseStatus::Started).await;
        let mut last = String::new();
        let wait_until = tokio::time::Instant::now() + config.agent_wait;
        for attempt in 1..=attempts {
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
                    last = e.to_string();
                }
            }
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        let error = format!("{op} on {agent} failed {attempts} times, last: {last}");
        self.event(
            agent,
            phase,
            PhaseStatus::Failed {
                error: error.clone(),
            },
        )
        .await;
        Err(error)
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
        self.set(|_| {})
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
            source: r.request.source.clone(),
            destination: r.request.destination.clone(),
            mobile: r.request.mobile.clone(),
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
        source = %r.request.source,
        destination = %r.request.destination,
    )
}

fn unexpected(agent: &str, op: &str, outcome: &StepOutcome) -> Stop {
    Stop::Failed(format!(
        "agent {agent} answered '{op}' with an unexpected outcome: {outcome:?}"
    ))
}

/// Twice the time the image takes at the planned bandwidth: the restore fetches it first.
fn transfer_allowance(image_bytes: u64, bandwidth_bps: u64) -> Duration {
    let seconds = 2.0 * image_bytes as f64 / bandwidth_bps.max(1) as f64;
    Duration::try_from_secs_f64(seconds)
        .unwrap_or(MAX_TRANSFER_ALLOWANCE)
        .min(MAX_TRANSFER_ALLOWANCE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_allowance_scales_and_is_capped() {
        assert_eq!(transfer_allowance(0, 1), Duration::ZERO);
        assert_eq!(
            transfer_allowance(125_000_000, 125_000_000),
            Duration::from_secs(2)
        );
        assert_eq!(transfer_allowance(u64::MAX, 0), MAX_TRANSFER_ALLOWANCE);
    }
}
