//! Agent discovery and the live view of the agents (docs/architecture.md, "Discovery and the
//! live view").
//!
//! Presence is the liveliness token `agents/{id}`: a join is seen within milliseconds, a clean
//! exit at once, a host that vanishes after the agents' lease. On a join the profile is fetched
//! (with retries: a get right after a remote queryable is declared can see no reply); profile
//! updates and metrics arrive by subscription.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mose_protocol::messages::{now_us, AgentProfile, MetricsSample};
use mose_protocol::{decode, KeySpace};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use zenoh::query::ConsolidationMode;
use zenoh::sample::{Sample, SampleKind};
use zenoh::Session;

/// What the orchestrator knows about one agent: the HTTP API's document (crate `mose-api`).
pub use mose_api::AgentView;

/// A cheap, cloneable read handle on the live view.
#[derive(Clone)]
pub struct AgentsView {
    agents: Arc<RwLock<BTreeMap<String, AgentView>>>,
    changed: watch::Sender<u64>,
}

impl AgentsView {
    fn new() -> Self {
        Self {
            agents: Arc::default(),
            changed: watch::Sender::new(0),
        }
    }

    /// All agents currently present, by id.
    pub fn list(&self) -> Vec<AgentView> {
        self.read().values().cloned().collect()
    }

    /// One present agent.
    pub fn get(&self, id: &str) -> Option<AgentView> {
        self.read().get(id).cloned()
    }

    /// Waits until `check` holds for the view, or `timeout` passes. Returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&BTreeMap<String, AgentView>) -> bool,
    ) -> bool {
        let mut rx = self.changed.subscribe();
        let waiting = async {
            loop {
                if check(&self.read()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, waiting).await.is_ok() && check(&self.read())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, AgentView>> {
        // Entries are replaced whole; a poisoned lock still holds a consistent map.
        self.agents.read().unwrap_or_else(|p| p.into_inner())
    }

    fn update<R>(&self, change: impl FnOnce(&mut BTreeMap<String, AgentView>) -> R) -> R {
        let r = change(&mut self.agents.write().unwrap_or_else(|p| p.into_inner()));
        self.changed.send_modify(|g| *g += 1);
        r
    }

    fn join(&self, id: &str) {
        self.update(|m| {
            m.entry(id.to_string()).or_insert_with(|| AgentView {
                id: id.to_string(),
                joined_us: now_us(),
                profile: None,
                metrics: None,
                metrics_received_us: None,
            });
        });
    }

    fn leave(&self, id: &str) {
        self.update(|m| m.remove(id));
    }

    fn set_profile(&self, profile: AgentProfile) -> bool {
        self.update(|m| match m.get_mut(&profile.id) {
            Some(entry) => {
                entry.profile = Some(profile);
                true
            }
            None => false,
        })
    }

    fn set_metrics(&self, sample: MetricsSample) -> bool {
        self.update(|m| match m.get_mut(&sample.agent) {
            Some(entry) => {
                // Samples can overtake each other on a lossy link: never go backwards.
                if entry
                    .metrics
                    .as_ref()
                    .is_some_and(|old| old.seq >= sample.seq)
                {
                    return true;
                }
                entry.metrics = Some(sample);
                entry.metrics_received_us = Some(now_us());
                true
            }
            None => false,
        })
    }

    fn has_profile(&self, id: &str) -> Option<bool> {
        self.read().get(id).map(|a| a.profile.is_some())
    }
}

/// How hard to try fetching a new agent's profile.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Timeout of each profile query.
    pub profile_timeout: Duration,
    /// Profile queries before giving up (the agent stays listed without a profile).
    pub profile_attempts: u32,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            profile_timeout: Duration::from_secs(1),
            profile_attempts: 10,
        }
    }
}

/// Subscriptions could not be declared.
#[derive(Debug, Error)]
#[error("zenoh: cannot {what}: {reason}")]
pub struct RegistryError {
    what: String,
    reason: String,
}

/// Keeps [`AgentsView`] up to date while it lives.
pub struct Registry {
    view: AgentsView,
    tasks: Vec<JoinHandle<()>>,
}

impl Registry {
    /// Declares the subscriptions and starts following the agents under `keys`.
    pub async fn start(
        session: &Session,
        keys: KeySpace,
        options: RegistryOptions,
    ) -> Result<Self, RegistryError> {
        let view = AgentsView::new();
        let err = |what: String| {
            move |e: zenoh::Error| RegistryError {
                what,
                reason: e.to_string(),
            }
        };

        let tokens = keys.all_agents();
        let liveliness = session
            .liveliness()
            .declare_subscriber(&tokens)
            .history(true)
            .await
            .map_err(err(format!("subscribe to liveliness {tokens}")))?;
        let profiles_key = keys.all_agent_profiles();
        let profiles = session
            .declare_subscriber(&profiles_key)
            .await
            .map_err(err(format!("subscribe to {profiles_key}")))?;
        let metrics_key = keys.all_agent_metrics();
        let metrics = session
            .declare_subscriber(&metrics_key)
            .await
            .map_err(err(format!("subscribe to {metrics_key}")))?;

        let presence_task = {
            let (view, keys, session) = (view.clone(), keys.clone(), session.clone());
            tokio::spawn(async move {
                while let Ok(sample) = liveliness.recv_async().await {
                    let key = sample.key_expr().as_str();
                    let id = match keys.agent_id_of(key) {
                        Ok(id) => id.to_string(),
                        Err(e) => {
                            warn!(error = %e, "ignoring liveliness token that is not an agent");
                            continue;
                        }
                    };
                    match sample.kind() {
                        SampleKind::Put => {
                            info!(agent = %id, "agent joined");
                            view.join(&id);
                            tokio::spawn(fetch_profile(
                                session.clone(),
                                keys.clone(),
                                view.clone(),
                                id,
                                options.clone(),
                            ));
                        }
                        SampleKind::Delete => {
                            info!(agent = %id, "agent left");
                            view.leave(&id);
                        }
                    }
                }
            })
        };
        let profile_task = {
            let (view, keys) = (view.clone(), keys.clone());
            tokio::spawn(async move {
                while let Ok(sample) = profiles.recv_async().await {
                    if let Some(profile) = decode_from::<AgentProfile>(&keys, &sample, |p| &p.id) {
                        let id = profile.id.clone();
                        if !view.set_profile(profile) {
                            debug!(agent = %id, "profile of an agent not (yet) present");
                        }
                    }
                }
            })
        };
        let metrics_task = {
            let (view, keys) = (view.clone(), keys.clone());
            tokio::spawn(async move {
                while let Ok(sample) = metrics.recv_async().await {
                    if let Some(m) = decode_from::<MetricsSample>(&keys, &sample, |m| &m.agent) {
                        let id = m.agent.clone();
                        if !view.set_metrics(m) {
                            debug!(agent = %id, "metrics of an agent not (yet) present");
                        }
                    }
                }
            })
        };
        Ok(Self {
            view,
            tasks: vec![presence_task, profile_task, metrics_task],
        })
    }

    /// A handle on the live view, for the API and the driver.
    pub fn view(&self) -> AgentsView {
        self.view.clone()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Decodes a message published under `agents/{id}/…` and checks that it speaks for that `id`.
fn decode_from<M: mose_protocol::Message>(
    keys: &KeySpace,
    sample: &Sample,
    id_of: impl Fn(&M) -> &String,
) -> Option<M> {
    let key = sample.key_expr().as_str();
    let key_id = match keys.agent_id_of(key) {
        Ok(id) => id,
        Err(e) => {
            warn!(error = %e, "ignoring sample");
            return None;
        }
    };
    match decode::<M>(&sample.payload().to_bytes()) {
        Ok(m) if id_of(&m) == key_id => Some(m),
        Ok(m) => {
            warn!(key, claimed = %id_of(&m), "ignoring message whose agent id does not match its key");
            None
        }
        Err(e) => {
            warn!(key, error = %e, "ignoring undecodable message");
            None
        }
    }
}

/// Fetches a joined agent's profile, retrying until it arrives, the agent leaves, or the
/// attempts run out.
async fn fetch_profile(
    session: Session,
    keys: KeySpace,
    view: AgentsView,
    id: String,
    options: RegistryOptions,
) {
    let key = keys.agent_profile(&id);
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=options.profile_attempts {
        match view.has_profile(&id) {
            None | Some(true) => return, // left, or the profile came by subscription
            Some(false) => {}
        }
        match session
            .get(&key)
            .consolidation(ConsolidationMode::None)
            .timeout(options.profile_timeout)
            .await
        {
            Ok(replies) => {
                while let Ok(reply) = replies.recv_async().await {
                    match reply.result() {
                        Ok(sample) => {
                            if let Some(p) = decode_from::<AgentProfile>(&keys, sample, |p| &p.id) {
                                view.set_profile(p);
                                return;
                            }
                        }
                        Err(e) => warn!(agent = %id, error = ?e.payload().try_to_string(),
                                        "profile query answered with an error"),
                    }
                }
            }
            Err(e) => warn!(agent = %id, error = %e, "profile query failed"),
        }
        debug!(agent = %id, attempt, "no profile yet, retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    warn!(agent = %id, attempts = options.profile_attempts,
          "agent is present but never answered its profile query");
}
