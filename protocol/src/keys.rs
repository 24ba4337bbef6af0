//! The key-expression scheme (docs/protocol.md#key-expressions).
//!
//! Every key lives under one prefix (default `mose`) so several MOSE domains can share a LAN.
//! Identifiers (agent ids, task ids, image names, rpc ops) are single key chunks: they must not
//! contain `/` or any of Zenoh's wildcard/special characters, or a key built from them would
//! silently address something else.

use thiserror::Error;

/// Default prefix of every MOSE key.
pub const DEFAULT_PREFIX: &str = "mose";

/// A key or identifier that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// An identifier or prefix is empty.
    #[error("{what} is empty")]
    Empty {
        /// What the identifier names.
        what: &'static str,
    },
    /// An identifier contains a character that is not allowed in a key chunk.
    #[error(
        "{what} '{value}' contains '{ch}': only letters, digits, '-', '_' and '.' are allowed"
    )]
    BadChar {
        /// What the identifier names (agent id, service, ...).
        what: &'static str,
        /// The identifier as given.
        value: String,
        /// The first offending character.
        ch: char,
    },
    /// A received key does not belong to this key space.
    #[error("key '{key}' is not under prefix '{prefix}' or has the wrong shape")]
    NotOurs {
        /// The key received.
        key: String,
        /// The key space's prefix.
        prefix: String,
    },
}

/// Checks that `value` can be one chunk of a key expression.
pub fn validate_id(what: &'static str, value: &str) -> Result<(), KeyError> {
    if value.is_empty() {
        return Err(KeyError::Empty { what });
    }
    if let Some(ch) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(KeyError::BadChar {
            what,
            value: value.to_string(),
            ch,
        });
    }
    Ok(())
}

/// The operation a query on `{space}/{op}` names, only when its key names it exactly: one
/// plain chunk after `space`, no wildcard anywhere. A query on `mose/agents/*/rpc/abort`
/// reaches every agent's queryable; each must refuse it rather than act on it.
pub fn exact_rpc_op<'a>(key: &'a str, space: &str) -> Option<&'a str> {
    let op = key.strip_prefix(space)?.strip_prefix('/')?;
    (!op.is_empty() && !op.contains(['/', '*', '$'])).then_some(op)
}

/// The keys of one MOSE domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl Default for KeySpace {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_string(),
        }
    }
}

impl KeySpace {
    /// A key space under `prefix`, which may have several chunks (`site-a/mose`).
    pub fn new(prefix: &str) -> Result<Self, KeyError> {
        if prefix.is_empty() {
            return Err(KeyError::Empty { what: "prefix" });
        }
        for chunk in prefix.split('/') {
            validate_id("prefix chunk", chunk)?;
        }
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    /// The prefix every key of this space starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Liveliness token of an agent: `{prefix}/agents/{id}`.
    pub fn agent(&self, id: &str) -> String {
        format!("{}/agents/{id}", self.prefix)
    }

    /// Matches every agent's liveliness token.
    pub fn all_agents(&self) -> String {
        format!("{}/agents/*", self.prefix)
    }

    /// Profile queryable (and put-on-change) of an agent.
    pub fn agent_profile(&self, id: &str) -> String {
        format!("{}/agents/{id}/profile", self.prefix)
    }

    /// Matches every agent's profile updates.
    pub fn all_agent_profiles(&self) -> String {
        format!("{}/agents/*/profile", self.prefix)
    }

    /// Periodic metrics of an agent.
    pub fn agent_metrics(&self, id: &str) -> String {
        format!("{}/agents/{id}/metrics", self.prefix)
    }

    /// Matches every agent's metrics.
    pub fn all_agent_metrics(&self) -> String {
        format!("{}/agents/*/metrics", self.prefix)
    }

    /// A migration-step queryable of an agent.
    pub fn agent_rpc(&self, id: &str, op: &str) -> String {
        format!("{}/{op}", self.agent_rpc_space(id))
    }

    /// The key space of agent `id`'s steps: `{prefix}/agents/{id}/rpc`.
    pub fn agent_rpc_space(&self, id: &str) -> String {
        format!("{}/agents/{id}/rpc", self.prefix)
    }

    /// A migration task with its plan.
    pub fn task(&self, task: &str) -> String {
        format!("{}/tasks/{task}", self.prefix)
    }

    /// Phase events the orchestrator publishes for a task.
    pub fn task_events(&self, task: &str) -> String {
        format!("{}/tasks/{task}/events", self.prefix)
    }

    /// Phase events agent `agent` publishes for `task`: in the agent's own key space, so a
    /// secured domain knows who sent them (access control, docs/security.md).
    pub fn agent_events(&self, agent: &str, task: &str) -> String {
        format!("{}/agents/{agent}/events/{task}", self.prefix)
    }

    /// Matches every agent's phase events.
    pub fn all_agent_events(&self) -> String {
        format!("{}/agents/*/events/*", self.prefix)
    }

    /// A checkpoint or container image of `task`, served by agent `source` to agent `to` (the
    /// destination, the only one allowed to fetch it in a secured domain).
    pub fn image(
        &self,
        source: &str,
        to: &str,
        task: &str,
        image: crate::steps::ImageId,
    ) -> String {
        format!(
            "{}/agents/{source}/images/{to}/{task}/{}",
            self.prefix,
            image.key_chunk()
        )
    }

    /// Matches every image served to agent `to`, whoever serves it.
    pub fn images_for(&self, to: &str) -> String {
        format!("{}/agents/*/images/{to}/**", self.prefix)
    }

    /// An orchestrator call (submit/inspect/cancel a task).
    pub fn orchestrator_rpc(&self, op: &str) -> String {
        format!("{}/{op}", self.orchestrator_rpc_space())
    }

    /// The key space of the orchestrator's calls: `{prefix}/orchestrator/rpc`.
    pub fn orchestrator_rpc_space(&self) -> String {
        format!("{}/orchestrator/rpc", self.prefix)
    }

    /// The agent id in a key of the form `{prefix}/agents/{id}[/...]`.
    pub fn agent_id_of<'k>(&self, key: &'k str) -> Result<&'k str, KeyError> {
        let not_ours = || KeyError::NotOurs {
            key: key.to_string(),
            prefix: self.prefix.clone(),
        };
        let rest = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix("/agents/"))
            .ok_or_else(not_ours)?;
        let id = rest.split('/').next().unwrap_or_default();
        validate_id("agent id", id).map_err(|_| not_ours())?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_op_is_the_last_chunk() {
        let k = KeySpace::default();
        let edge1 = k.agent_rpc_space("edge1");
        assert_eq!(
            exact_rpc_op(&k.agent_rpc("edge1", "switch-flow"), &edge1),
            Some("switch-flow")
        );
        let orch = k.orchestrator_rpc_space();
        assert_eq!(
            exact_rpc_op(&k.orchestrator_rpc("submit"), &orch),
            Some("submit")
        );
        for wild in [
            "mose/agents/*/rpc/abort",
            "mose/agents/**/abort",
            "mose/agents/edge1/rpc/*",
            "mose/agents/edge1/rpc/**",
            "mose/agents/edge1/rpc/ab*",
            "mose/agents/edge1/rpc/$*",
            "mose/agents/edge1/rpc/abort/x",
            "mose/agents/edge1/rpc/",
            "mose/agents/edge1/rpc",
            "",
        ] {
            assert_eq!(exact_rpc_op(wild, &edge1), None, "{wild}");
        }
    }

    #[test]
    fn keys_follow_the_spec() {
        let k = KeySpace::default();
        assert_eq!(k.agent("edge1"), "mose/agents/edge1");
        assert_eq!(k.agent_profile("edge1"), "mose/agents/edge1/profile");
        assert_eq!(k.agent_metrics("edge1"), "mose/agents/edge1/metrics");
        assert_eq!(
            k.agent_rpc("edge1", "checkpoint"),
            "mose/agents/edge1/rpc/checkpoint"
        );
        assert_eq!(k.task("t1"), "mose/tasks/t1");
        assert_eq!(k.task_events("t1"), "mose/tasks/t1/events");
        assert_eq!(
            k.image("edge1", "edge2", "t1", crate::steps::ImageId::Final),
            "mose/agents/edge1/images/edge2/t1/final"
        );
        assert_eq!(k.images_for("edge2"), "mose/agents/*/images/edge2/**");
        assert_eq!(k.agent_events("edge1", "t1"), "mose/agents/edge1/events/t1");
        assert_eq!(k.orchestrator_rpc("submit"), "mose/orchestrator/rpc/submit");
    }

    #[test]
    fn prefix_is_configurable_and_validated() {
        let k = KeySpace::new("site-a/mose").unwrap();
        assert_eq!(k.agent("x"), "site-a/mose/agents/x");
        assert!(matches!(KeySpace::new(""), Err(KeyError::Empty { .. })));
        assert!(matches!(
            KeySpace::new("a/*"),
            Err(KeyError::BadChar { ch: '*', .. })
        ));
        assert!(KeySpace::new("a//b").is_err());
    }

    #[test]
    fn ids_reject_key_syntax() {
        for bad in ["a/b", "*", "a**", "$x", "a?b", "a#b", "é"] {
            assert!(validate_id("agent id", bad).is_err(), "{bad} accepted");
        }
        validate_id("agent id", "edge-1_a.b").unwrap();
    }

    #[test]
    fn agent_id_is_extracted_from_keys() {
        let k = KeySpace::default();
        assert_eq!(k.agent_id_of("mose/agents/edge1").unwrap(), "edge1");
        assert_eq!(k.agent_id_of("mose/agents/edge1/metrics").unwrap(), "edge1");
        assert!(k.agent_id_of("other/agents/edge1").is_err());
        assert!(k.agent_id_of("mose/agents/").is_err());
        assert!(k.agent_id_of("mose/tasks/x").is_err());
    }
}
