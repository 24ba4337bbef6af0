//! Asking agents to carry out migration steps (`agents/{id}/rpc/{op}`).

use std::time::{Duration, Instant};

use mose_protocol::messages::{Step, StepFailure, StepOutcome, StepReply, StepRequest};
use mose_protocol::{decode, encode, CodecError, KeySpace};
use thiserror::Error;
use zenoh::query::ConsolidationMode;
use zenoh::Session;

/// Why a step did not succeed. Only [`RpcError::Failed`] means the agent ran it and it failed;
/// every other variant leaves the step's effect unknown, so the caller must roll back.
#[derive(Debug, Error)]
pub enum RpcError {
    #[error("agent {agent} did not answer '{op}' within {timeout:?}")]
    NoAnswer {
        agent: String,
        op: &'static str,
        timeout: Duration,
    },
    /// The query ended before its timeout with no reply: no such agent is reachable (never
    /// was, or it died or was cut off while the step ran).
    #[error("agent {agent} is gone: no answer to '{op}' after {after:?}")]
    Gone {
        agent: String,
        op: &'static str,
        after: Duration,
    },
    #[error("agent {agent} refused '{op}': {reason}")]
    Refused {
        agent: String,
        op: &'static str,
        reason: String,
    },
    #[error("agent {agent} failed '{}': {}", .failure.op, .failure.reason)]
    Failed { agent: String, failure: StepFailure },
    #[error("agent {agent} answered '{op}' with an undecodable reply: {source}")]
    Decode {
        agent: String,
        op: &'static str,
        source: CodecError,
    },
    #[error("agent {agent} answered '{op}' for task {got}, not {expected}")]
    WrongTask {
        agent: String,
        op: &'static str,
        expected: String,
        got: String,
    },
    #[error("cannot send '{op}' to agent {agent}: {reason}")]
    Send {
        agent: String,
        op: &'static str,
        reason: String,
    },
}

/// The orchestrator's handle for calling agents.
#[derive(Clone)]
pub struct AgentRpc {
    session: Session,
    keys: KeySpace,
}

/// Extra time on top of the step's own timeout, for the query and the reply to travel.
const TRAVEL_MARGIN: Duration = Duration::from_secs(2);

impl AgentRpc {
    pub fn new(session: Session, keys: KeySpace) -> Self {
        Self { session, keys }
    }

    /// Runs `step` of `task` on `agent`, allowing it `timeout`.
    pub async fn call(
        &self,
        agent: &str,
        task: &str,
        step: Step,
        timeout: Duration,
    ) -> Result<StepOutcome, RpcError> {
        let op = step.op();
        let request = StepRequest {
            task: task.to_string(),
            step,
            timeout_ms: timeout.as_millis() as u64,
        };
        let send_err = |reason: String| RpcError::Send {
            agent: agent.to_string(),
            op,
            reason,
        };
        let payload = encode(&request).map_err(|e| send_err(e.to_string()))?;
        let deadline = timeout + TRAVEL_MARGIN;
        let sent = Instant::now();
        let replies = self
            .session
            .get(self.keys.agent_rpc(agent, op))
            .payload(payload)
            .consolidation(ConsolidationMode::None)
            .timeout(deadline)
            .await
            .map_err(|e| send_err(e.to_string()))?;
        let no_answer = || RpcError::NoAnswer {
            agent: agent.to_string(),
            op,
            timeout: deadline,
        };
        let reply = replies.recv_async().await.map_err(|_| {
            if sent.elapsed() >= deadline {
                no_answer()
            } else {
                RpcError::Gone {
                    agent: agent.to_string(),
                    op,
                    after: sent.elapsed(),
                }
            }
        })?;
        let sample = match reply.result() {
            Ok(sample) => sample,
            // Zenoh ends a query that outlived its timeout with an error reply ("Timeout") of
            // its own, not the agent's: that is no answer, not a refusal.
            Err(_) if sent.elapsed() >= deadline => return Err(no_answer()),
            Err(e) => {
                return Err(RpcError::Refused {
                    agent: agent.to_string(),
                    op,
                    reason: e
                        .payload()
                        .try_to_string()
                        .map(|s| s.into_owned())
                        .unwrap_or_else(|_| "(not text)".into()),
                })
            }
        };
        let reply: StepReply =
            decode(&sample.payload().to_bytes()).map_err(|source| RpcError::Decode {
                agent: agent.to_string(),
                op,
                source,
            })?;
        if reply.task != task {
            return Err(RpcError::WrongTask {
                agent: agent.to_string(),
                op,
                expected: task.to_string(),
                got: reply.task,
            });
        }
        reply.result.map_err(|failure| RpcError::Failed {
            agent: agent.to_string(),
            failure,
        })
    }
}
