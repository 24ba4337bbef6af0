//! The agent's presence on the Zenoh network: liveliness token, profile queryable, metrics.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use mose_protocol::messages::{now_us, AgentProfile, MetricsSample};
use mose_protocol::{encode, CodecError, KeySpace};
use thiserror::Error;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};
use zenoh::liveliness::LivelinessToken;
use zenoh::Session;

use crate::profiling::{ContainerProbe, HostProbe};

/// A failure to join the MOSE network.
#[derive(Debug, Error)]
pub enum NodeError {
    /// A declaration on the session failed.
    #[error("zenoh: cannot {what}: {reason}")]
    Zenoh {
        /// What was being declared.
        what: String,
        /// Zenoh's message.
        reason: String,
    },
    /// The profile could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

fn zenoh_err(what: impl Into<String>) -> impl FnOnce(zenoh::Error) -> NodeError {
    let what = what.into();
    move |e| NodeError::Zenoh {
        what,
        reason: e.to_string(),
    }
}

/// A running agent: present while this value lives. Dropping it (or [`AgentNode::close`])
/// withdraws the liveliness token, so the orchestrator sees the agent leave at once.
pub struct AgentNode {
    session: Session,
    keys: KeySpace,
    profile: Arc<RwLock<AgentProfile>>,
    _token: LivelinessToken,
    tasks: Vec<JoinHandle<()>>,
}

impl AgentNode {
    /// Announces the agent: serves its profile, publishes it, declares liveliness, and starts
    /// publishing metrics every `metrics_interval`.
    pub async fn start(
        session: Session,
        keys: KeySpace,
        profile: AgentProfile,
        metrics_interval: Duration,
        containers: Arc<dyn ContainerProbe>,
    ) -> Result<Self, NodeError> {
        let id = profile.id.clone();
        let span = tracing::info_span!("agent", id = %id);
        let profile = Arc::new(RwLock::new(profile));

        // The queryable comes before the token: whoever sees the token may ask at once.
        let profile_key = keys.agent_profile(&id);
        let queryable = session
            .declare_queryable(&profile_key)
            .await
            .map_err(zenoh_err(format!("declare queryable {profile_key}")))?;
        let served = profile.clone();
        let profile_task = tokio::spawn(
            async move {
                while let Ok(query) = queryable.recv_async().await {
                    let bytes = match encode(&*read(&served)) {
                        Ok(b) => b,
                        Err(e) => {
                            warn!(error = %e, "cannot encode own profile");
                            continue;
                        }
                    };
                    if let Err(e) = query.reply(query.key_expr().clone(), bytes).await {
                        debug!(error = %e, "profile reply not delivered");
                    }
                }
            }
            .instrument(span.clone()),
        );

        let metrics_key = keys.agent_metrics(&id);
        let publisher = session
            .declare_publisher(metrics_key.clone())
            .await
            .map_err(zenoh_err(format!("declare publisher {metrics_key}")))?;
        let metrics_id = id.clone();
        let metrics_task = tokio::spawn(
            async move {
                let mut host = HostProbe::new();
                let mut tick = tokio::time::interval(metrics_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq = 0u64;
                loop {
                    tick.tick().await;
                    seq += 1;
                    let sample = MetricsSample {
                        agent: metrics_id.clone(),
                        seq,
                        taken_us: now_us(),
                        host: host.sample(),
                        containers: containers.containers(),
                        links: Vec::new(),
                    };
                    match encode(&sample) {
                        Ok(bytes) => {
                            if let Err(e) = publisher.put(bytes).await {
                                warn!(error = %e, "cannot publish metrics");
                            }
                        }
                        Err(e) => warn!(error = %e, "cannot encode metrics"),
                    }
                }
            }
            .instrument(span.clone()),
        );

        let node_profile = read(&profile).clone();
        session
            .put(&profile_key, encode(&node_profile)?)
            .await
            .map_err(zenoh_err(format!("put {profile_key}")))?;
        let token_key = keys.agent(&id);
        let token = session
            .liveliness()
            .declare_token(&token_key)
            .await
            .map_err(zenoh_err(format!("declare liveliness token {token_key}")))?;
        span.in_scope(|| info!(role = %node_profile.role, "agent announced"));
        Ok(Self {
            session,
            keys,
            profile,
            _token: token,
            tasks: vec![profile_task, metrics_task],
        })
    }

    /// The node's Zenoh session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The node's key space.
    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// The profile as currently served.
    pub fn profile(&self) -> AgentProfile {
        read(&self.profile).clone()
    }

    /// Changes the profile (e.g. after calibration) and publishes it.
    pub async fn update_profile(
        &self,
        change: impl FnOnce(&mut AgentProfile),
    ) -> Result<(), NodeError> {
        let updated = {
            let mut p = self.profile.write().unwrap_or_else(|p| p.into_inner());
            change(&mut p);
            p.clone()
        };
        let key = self.keys.agent_profile(&updated.id);
        self.session
            .put(&key, encode(&updated)?)
            .await
            .map_err(zenoh_err(format!("put {key}")))
    }

    /// Leaves the network cleanly (token withdrawn, session closed).
    pub async fn close(self) {
        let session = self.session.clone();
        drop(self);
        if let Err(e) = session.close().await {
            debug!(error = %e, "zenoh session close");
        }
    }
}

impl Drop for AgentNode {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn read(profile: &RwLock<AgentProfile>) -> std::sync::RwLockReadGuard<'_, AgentProfile> {
    // The profile is replaced whole under the lock; a poisoned lock still holds a valid one.
    profile.read().unwrap_or_else(|p| p.into_inner())
}
