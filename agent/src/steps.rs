//! The agent's migration-step queryables (`agents/{id}/rpc/{op}`; docs/protocol.md, "Migration
//! steps").
//!
//! The server decodes each [`StepRequest`], checks that the key's op matches the step, runs it
//! through a [`StepExecutor`] within the request's timeout ([`run_step`]) and always answers: a
//! [`StepReply`] for anything that decoded, an error reply naming the problem for anything that
//! did not (a request of another protocol version: "unsupported protocol version N, this node
//! speaks M").

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mose_protocol::keys::exact_rpc_op;
use mose_protocol::steps::{
    FailureKind, Op, Step, StepFailure, StepOutcome, StepReply, StepRequest,
};
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
    /// Runs `step` of `task` to its end (the deadline is [`run_step`]'s).
    fn execute(
        &self,
        task: &str,
        step: Step,
    ) -> impl Future<Output = Result<StepOutcome, StepFailure>> + Send;

    /// The step that undoes `step` should it succeed after its deadline: the caller was told it
    /// timed out and rolls back, but its own rollback step may never reach this agent (paused,
    /// or cut off past the caller's patience). `None`: nothing to undo.
    fn undo_of(&self, _step: &Step) -> Option<Step> {
        None
    }
}

/// Serves the step queryables while it lives.
pub struct StepServer {
    _service: QueryService,
}

impl StepServer {
    /// Declares one queryable per step under this agent's keys, served by `executor`.
    pub async fn start<E: StepExecutor>(
        session: &Session,
        keys: &KeySpace,
        agent_id: &str,
        executor: Arc<E>,
    ) -> Result<Self, NodeError> {
        let key = keys.agent_rpc(agent_id, "*");
        let space: Arc<str> = keys.agent_rpc_space(agent_id).into();
        let service = QueryService::start(session, &key, move |query| {
            answer(query, space.clone(), executor.clone())
        })
        .await
        .map_err(|e| NodeError::Zenoh {
            what: format!("declare queryable {key}"),
            reason: e.to_string(),
        })?;
        Ok(Self { _service: service })
    }
}

/// Runs `step` of `task` through `executor`, answering within `timeout` (capped at
/// [`MAX_STEP_TIMEOUT`]) with a [`FailureKind::Timeout`] failure when it does not finish. The
/// step goes on in its own task past the deadline (cut off halfway it would leave worse
/// state); should it then succeed, the executor's [`StepExecutor::undo_of`] is run.
pub async fn run_step<E: StepExecutor>(
    executor: &Arc<E>,
    task: &str,
    step: Step,
    timeout: Duration,
) -> Result<StepOutcome, StepFailure> {
    let op = step.op();
    let timeout = timeout.min(MAX_STEP_TIMEOUT);
    let undo = executor.undo_of(&step);
    let span = tracing::Span::current();
    let mut run = tokio::spawn({
        let (executor, task) = (executor.clone(), task.to_string());
        async move { executor.execute(&task, step).await }.instrument(span.clone())
    });
    match tokio::time::timeout(timeout, &mut run).await {
        Ok(joined) => joined.unwrap_or_else(|e| Err(abnormal_end(op, e))),
        Err(_) => {
            if let Some(undo) = undo {
                let late = undo_late(run, executor.clone(), task.to_string(), undo);
                tokio::spawn(late.instrument(span));
            }
            Err(StepFailure {
                op,
                kind: FailureKind::Timeout,
                reason: format!(
                    "did not finish within {timeout:?}; it goes on, its effect unknown"
                ),
            })
        }
    }
}

fn abnormal_end(op: Op, e: tokio::task::JoinError) -> StepFailure {
    StepFailure {
        op,
        kind: FailureKind::Internal,
        reason: format!("the step's task ended abnormally: {e}"),
    }
}

/// Waits for a step whose caller gave up, and runs `undo` if it succeeded after all.
async fn undo_late<E: StepExecutor>(
    run: tokio::task::JoinHandle<Result<StepOutcome, StepFailure>>,
    executor: Arc<E>,
    task: String,
    undo: Step,
) {
    if !matches!(run.await, Ok(Ok(_))) {
        return;
    }
    let op = undo.op();
    warn!(
        undo = %op,
        "step succeeded after its timeout, which was reported as a failure: undoing it"
    );
    match executor.execute(&task, undo).await {
        Ok(_) => info!(undo = %op, "late step undone"),
        Err(failure) => warn!(undo = %op, %failure, "could not undo the late step"),
    }
}

async fn answer<E: StepExecutor>(query: Query, space: Arc<str>, executor: Arc<E>) {
    let key = query.key_expr().clone();
    let Some(chunk) = exact_rpc_op(key.as_str(), &space).map(str::to_string) else {
        // Defence in depth: the access control lets only the orchestrator query steps, and
        // it names one agent and one step per query.
        warn!(key = %key, "refusing a step query that does not name this agent's step exactly");
        if let Err(e) = query
            .reply_err(format!(
                "a step query must name {space}/<step> exactly, not {key}"
            ))
            .await
        {
            debug!(error = %e, "error reply not delivered");
        }
        return;
    };
    let request = match parse(&query, &chunk) {
        Ok(r) => r,
        Err(reason) => {
            warn!(key = %key, %reason, "refusing step request");
            if let Err(e) = query.reply_err(reason).await {
                debug!(error = %e, "error reply not delivered");
            }
            return;
        }
    };
    let op = request.step.op();
    let span = tracing::info_span!("step", task = %request.task, %op);
    let result = match Op::from_key_chunk(&chunk) == Some(op) {
        true => {
            let timeout = Duration::from_millis(request.timeout_ms);
            run_step(&executor, &request.task, request.step, timeout)
                .instrument(span.clone())
                .await
        }
        false => Err(StepFailure {
            op,
            kind: FailureKind::InvalidRequest,
            reason: format!("step '{op}' sent to the '{chunk}' queryable"),
        }),
    };
    if let Err(failure) = &result {
        span.in_scope(|| warn!(kind = %failure.kind, reason = %failure.reason, "step failed"));
    }
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

/// The request of a query; why not, as the error reply's text (the request did not decode, so
/// there is no task to address a [`StepReply`] to).
fn parse(query: &Query, chunk: &str) -> Result<StepRequest, String> {
    let payload = query
        .payload()
        .ok_or_else(|| format!("step '{chunk}' needs a StepRequest payload"))?;
    // The codec's error says it all, e.g. "unsupported protocol version 2, this node speaks 3".
    decode(&payload.to_bytes()).map_err(|e| format!("bad step request for '{chunk}': {e}"))
}
