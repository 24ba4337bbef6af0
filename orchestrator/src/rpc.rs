//! Asking agents to carry out migration steps (`agents/{id}/rpc/{op}`).

use std::time::{Duration, Instant};

use mose_protocol::steps::{FailureKind, Op, StepFailure, StepKind, StepReply, StepRequest};
use mose_protocol::{decode, encode, CodecError, KeySpace};
use thiserror::Error;
use zenoh::query::ConsolidationMode;
use zenoh::Session;

/// Why a step did not succeed. Only [`RpcError::Failed`] means the agent ran it and it failed;
/// every other variant leaves the step's effect unknown, so the caller must roll back.
#[derive(Debug, Error)]
pub enum RpcError {
    /// No reply within the step's timeout: the step may still be running.
    #[error("agent {agent} did not answer '{op}' within {timeout:?}")]
    NoAnswer {
        /// The agent addressed.
        agent: String,
        /// The step.
        op: Op,
        /// How long the caller waited.
        timeout: Duration,
    },
    /// The query ended before its timeout with no reply: no such agent is reachable (never
    /// was, or it died or was cut off while the step ran).
    #[error("agent {agent} is gone: no answer to '{op}' after {after:?}")]
    Gone {
        /// The agent addressed.
        agent: String,
        /// The step.
        op: Op,
        /// When the query ended.
        after: Duration,
    },
    /// The agent could not take the request at all (another protocol version, a request it
    /// cannot decode): it did not run the step.
    #[error("agent {agent} refused '{op}': {reason}")]
    Refused {
        /// The agent addressed.
        agent: String,
        /// The step.
        op: Op,
        /// The agent's explanation.
        reason: String,
    },
    /// The agent ran the step and it failed; a `timeout` kind leaves its effect unknown.
    #[error("agent {agent}: {failure}")]
    Failed {
        /// The agent that ran it.
        agent: String,
        /// Its typed failure.
        failure: StepFailure,
    },
    /// The reply could not be decoded: the step's effect is unknown.
    #[error("agent {agent} answered '{op}' with an undecodable reply: {source}")]
    Decode {
        /// The agent addressed.
        agent: String,
        /// The step.
        op: Op,
        /// The decoding error.
        source: CodecError,
    },
    /// The reply belongs to another task or another step: the agent's state is unknown.
    #[error("agent {agent} answered '{op}' with {got}")]
    Mismatch {
        /// The agent addressed.
        agent: String,
        /// The step.
        op: Op,
        /// What arrived instead.
        got: String,
    },
    /// The query could not be sent: the step did not run.
    #[error("cannot send '{op}' to agent {agent}: {reason}")]
    Send {
        /// The agent addressed.
        agent: String,
        /// The step.
        op: Op,
        /// Zenoh's message.
        reason: String,
    },
}

impl RpcError {
    /// What kind of failure this is, as the agent said or as the call ended.
    pub fn kind(&self) -> FailureKind {
        match self {
            RpcError::Failed { failure, .. } => failure.kind,
            RpcError::NoAnswer { .. } => FailureKind::Timeout,
            RpcError::Gone { .. } | RpcError::Send { .. } => FailureKind::Network,
            RpcError::Refused { .. } => FailureKind::InvalidRequest,
            RpcError::Decode { .. } | RpcError::Mismatch { .. } => FailureKind::Internal,
        }
    }

    /// The step the call was for.
    pub fn op(&self) -> Op {
        match self {
            RpcError::Failed { failure, .. } => failure.op,
            RpcError::NoAnswer { op, .. }
            | RpcError::Gone { op, .. }
            | RpcError::Refused { op, .. }
            | RpcError::Decode { op, .. }
            | RpcError::Mismatch { op, .. }
            | RpcError::Send { op, .. } => *op,
        }
    }

    /// The agent the call went to.
    pub fn agent(&self) -> &str {
        match self {
            RpcError::Failed { agent, .. }
            | RpcError::NoAnswer { agent, .. }
            | RpcError::Gone { agent, .. }
            | RpcError::Refused { agent, .. }
            | RpcError::Decode { agent, .. }
            | RpcError::Mismatch { agent, .. }
            | RpcError::Send { agent, .. } => agent,
        }
    }

    /// Whether the agent is known to have run the step to a failure (or not run it at all),
    /// as opposed to an effect nobody knows: a timeout, a lost reply.
    pub fn effect_known(&self) -> bool {
        match self {
            RpcError::Failed { failure, .. } => failure.kind != FailureKind::Timeout,
            RpcError::Refused { .. } | RpcError::Send { .. } => true,
            RpcError::NoAnswer { .. }
            | RpcError::Gone { .. }
            | RpcError::Decode { .. }
            | RpcError::Mismatch { .. } => false,
        }
    }
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
    /// A client on `session` addressing agents under `keys`.
    pub fn new(session: Session, keys: KeySpace) -> Self {
        Self { session, keys }
    }

    /// Runs `step` of `task` on `agent`, allowing it `timeout`; answers with the step's own
    /// outcome type.
    pub async fn call<S: StepKind>(
        &self,
        agent: &str,
        task: &str,
        step: S,
        timeout: Duration,
    ) -> Result<S::Outcome, RpcError> {
        let op = S::OP;
        let request = StepRequest {
            task: task.to_string(),
            step: step.into(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
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
            .get(self.keys.agent_rpc(agent, op.as_str()))
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
        let mismatch = |got: String| RpcError::Mismatch {
            agent: agent.to_string(),
            op,
            got,
        };
        if reply.task != task {
            return Err(mismatch(format!(
                "a reply for task {}, not {task}",
                reply.task
            )));
        }
        let outcome = reply.result.map_err(|failure| RpcError::Failed {
            agent: agent.to_string(),
            failure,
        })?;
        S::Outcome::try_from(outcome).map_err(|other| mismatch(format!("the outcome {other:?}")))
    }
}
