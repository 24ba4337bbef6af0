//! The agent's migration-step queryables (`agents/{id}/rpc/{op}`, SPEC §3).
//!
//! The server decodes each [`StepRequest`], checks that the key's op matches the step, runs it
//! through a [`StepExecutor`] within the request's timeout and always answers: a [`StepReply`]
//! for anything that decoded, an error reply naming the problem for anything that did not.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mose_protocol::messages::{Step, StepFailure, StepOutcome, StepReply, StepRequest};
use mose_protocol::transport::QueryService;
use mose_protocol::{decode, encode, KeySpace};
use tracing::{debug, info, warn, Instrument};
use zenoh::query::Query;
use zenoh::Session;

use crate::node::NodeError;

/// Longest a step may run, whatever the caller asks: a stuck runtime must not pin a task forever.
pub const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(600);

/// Carries out migration steps on this host. Implementations make every step idempotent: the
/// orchestrator retries after timeouts and rolls back by asking again.
pub trait StepExecutor: Send + Sync + 'static {
    fn execute(
        &self,
        task: &str,
        step: Step,
    ) -> impl Future<Output = Result<StepOutcome, String>> + Send;
}

/// Serves the step queryables while it lives.
pub struct StepServer {
    _service: QueryService,
}

impl StepServer {
    pub async fn start<E: StepExecutor>(
        session: &Session,
        keys: &KeySpace,
        agent_id: &str,
        executor: Arc<E>,
    ) -> Result<Self, NodeError> {
        let key = keys.agent_rpc(agent_id, "*");
        let service =
            QueryService::start(session, &key, move |query| answer(query, executor.clone()))
                .await
                .map_err(|e| NodeError::Zenoh {
                    what: format!("declare queryable {key}"),
                    reason: e.to_string(),
                })?;
        Ok(Self { _service: service })
    }
}

async fn answer<E: StepExecutor>(query: Query, executor: Arc<E>) {
    let key = query.key_expr().clone();
    let op = mose_protocol::keys::rpc_op(key.as_str()).to_string();
    let request = match parse(&query, &op) {
        Ok(r) => r,
        Err(reason) => {
            warn!(key = %key, %reason, "refusing step request");
            if let Err(e) = query.reply_err(reason).await {
                debug!(error = %e, "error reply not delivered");
            }
            return;
        }
    };
    let span = tracing::info_span!("step", task = %request.task, op = %op);
    let timeout = Duration::from_millis(request.timeout_ms).min(MAX_STEP_TIMEOUT);
    let undo = undo_if_late(&request.step);
    // Its own task: past the timeout the step goes on (cut off halfway it would leave worse
    // state), and its late outcome can still be acted on.
    let mut run = tokio::spawn({
        let (executor, task, step) = (executor.clone(), request.task.clone(), request.step);
        async move { executor.execute(&task, step).await }.instrument(span.clone())
    });
    let result = match tokio::time::timeout(timeout, &mut run).await {
        Ok(joined) => {
            joined.unwrap_or_else(|e| Err(format!("the step's task ended abnormally: {e}")))
        }
        Err(_) => {
            if let Some(undo) = undo {
                let task = request.task.clone();
                tokio::spawn(undo_late(run, executor, task, undo).instrument(span.clone()));
            }
            Err(format!("did not finish within {timeout:?}"))
        }
    }
    .map_err(|reason| {
        span.in_scope(|| warn!(%reason, "step failed"));
        StepFailure {
            op: op.clone(),
            reason,
        }
    });
    let reply = StepReply {
        task: request.task,
        result,
    };
    let sent = match encode(&reply) {
        Ok(bytes) => query.reply(key, bytes).await,
        Err(e) => {
            query
                .reply_err(format!("cannot encode the step reply: {e}"))
                .await
        }
    };
    if let Err(e) = sent {
        debug!(error = %e, "step reply not delivered");
    }
}

/// What undoes `step` should it succeed after its timeout. The caller was answered with a
/// failure then and rolls back, but its own rollback step may never reach this agent (it was
/// paused or cut off past the caller's patience): a Restore that podman finished meanwhile would
/// leave a running copy nobody wants, a Checkpoint a frozen source nobody resumes. Both undos are
/// what the caller's rollback sends anyway, and idempotent.
fn undo_if_late(step: &Step) -> Option<Step> {
    match step {
        Step::Restore { spec, .. } => Some(Step::Abort {
            service: spec.name.clone(),
        }),
        Step::Checkpoint { service, .. } => Some(Step::Resume {
            service: service.clone(),
        }),
        _ => None,
    }
}

/// Waits for a step whose caller gave up, and runs `undo` if it succeeded after all.
async fn undo_late<E: StepExecutor>(
    run: tokio::task::JoinHandle<Result<StepOutcome, String>>,
    executor: Arc<E>,
    task: String,
    undo: Step,
) {
    if !matches!(run.await, Ok(Ok(_))) {
        return;
    }
    let op = undo.op();
    warn!(
        undo = op,
        "step succeeded after its timeout, which was reported as a failure: undoing it"
    );
    match executor.execute(&task, undo).await {
        Ok(_) => info!(undo = op, "late step undone"),
        Err(reason) => warn!(undo = op, %reason, "could not undo the late step"),
    }
}

fn parse(query: &Query, op: &str) -> Result<StepRequest, String> {
    let payload = query
        .payload()
        .ok_or_else(|| format!("step '{op}' needs a StepRequest payload"))?;
    let request: StepRequest =
        decode(&payload.to_bytes()).map_err(|e| format!("bad step request for '{op}': {e}"))?;
    if request.step.op() != op {
        return Err(format!(
            "step '{}' sent to the '{op}' queryable",
            request.step.op()
        ));
    }
    Ok(request)
}
