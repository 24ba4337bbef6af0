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
use tracing::{debug, warn, Instrument};
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
    let result = async {
        match tokio::time::timeout(timeout, executor.execute(&request.task, request.step)).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(reason)) => Err(reason),
            Err(_) => Err(format!("did not finish within {timeout:?}")),
        }
    }
    .instrument(span.clone())
    .await
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
