//! The access-control policy of a secured domain, as Zenoh's `access_control` configuration.
//!
//! Every node builds the same policy from the domain's [`Roster`] and enforces it on what
//! reaches it (ingress): Zenoh applies a policy per link, matched on the certificate's common
//! name of the peer at the other end, so a member that breaks the rules is refused by every
//! honest node it talks to. Default deny; what is allowed (docs/security.md):
//!
//! | who | may send | on |
//! |---|---|---|
//! | any member | subscriptions, liveliness subscriptions and queries (reading) | `{p}/**` |
//! | the orchestrator | queries | agents' `rpc/**` and `profile` |
//! | the orchestrator | puts | `{p}/tasks/**` |
//! | the orchestrator | queryables, replies | `{p}/orchestrator/**` |
//! | operators | queries | `{p}/orchestrator/rpc/**` |
//! | agent `a` | puts, queryables, replies, liveliness tokens | `{p}/agents/a`, `{p}/agents/a/**` |
//! | edge `e` | queries | `{p}/agents/*/images/e/**` (images served *to* it) |
//!
//! Zenoh's access control is fixed when a session opens: a member added to the roster is
//! allowed by a node once that node restarts with the new roster.

use serde::Serialize;

use crate::domain::{MemberRole, Roster};
use crate::keys::KeySpace;

/// Zenoh's message kinds, as its access-control configuration names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Put,
    Delete,
    DeclareSubscriber,
    Query,
    Reply,
    DeclareQueryable,
    LivelinessToken,
    LivelinessQuery,
    DeclareLivelinessSubscriber,
}

#[derive(Debug, Serialize)]
struct Rule {
    id: String,
    messages: Vec<Message>,
    flows: [&'static str; 1],
    permission: &'static str,
    key_exprs: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Subject {
    id: String,
    /// `None`: every peer (Zenoh's wildcard subject).
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_common_names: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct Policy {
    rules: Vec<String>,
    subjects: Vec<String>,
}

/// Zenoh's `access_control` section.
#[derive(Debug, Serialize)]
pub struct AccessControl {
    enabled: bool,
    default_permission: &'static str,
    rules: Vec<Rule>,
    subjects: Vec<Subject>,
    policies: Vec<Policy>,
}

impl AccessControl {
    /// The domain's policy for `keys`, from `roster`.
    pub fn for_domain(keys: &KeySpace, roster: &Roster) -> Self {
        let p = keys.prefix();
        let mut acl = AccessControl {
            enabled: true,
            default_permission: "deny",
            rules: Vec::new(),
            subjects: Vec::new(),
            policies: Vec::new(),
        };
        let names = |role: Option<MemberRole>| -> Vec<String> {
            roster
                .members
                .iter()
                .filter(|m| role.is_none() || role == Some(m.role))
                .map(|m| m.common_name())
                .collect()
        };
        use Message::*;
        // What a node sends is its own business: the policy is enforced where it arrives (with
        // deny by default, Zenoh filters egress too unless a rule allows it).
        let all = vec![
            Put,
            Delete,
            DeclareSubscriber,
            Query,
            Reply,
            DeclareQueryable,
            LivelinessToken,
            LivelinessQuery,
            DeclareLivelinessSubscriber,
        ];
        acl.rule("send", "egress", None, all, vec!["**".into()]);
        acl.grant(
            "read",
            names(None),
            vec![
                DeclareSubscriber,
                LivelinessQuery,
                DeclareLivelinessSubscriber,
            ],
            vec![format!("{p}/**")],
        );
        let orchestrators = names(Some(MemberRole::Orchestrator));
        acl.grant(
            "drive-steps",
            orchestrators.clone(),
            vec![Query],
            vec![
                format!("{p}/agents/*/rpc/**"),
                format!("{p}/agents/*/profile"),
            ],
        );
        acl.grant(
            "publish-tasks",
            orchestrators.clone(),
            vec![Put, Delete],
            vec![format!("{p}/tasks/**")],
        );
        acl.grant(
            "serve-orchestrator",
            orchestrators,
            vec![DeclareQueryable, Reply],
            vec![format!("{p}/orchestrator/**")],
        );
        acl.grant(
            "call-orchestrator",
            names(Some(MemberRole::Operator)),
            vec![Query],
            vec![format!("{p}/orchestrator/rpc/**")],
        );
        for agent in roster.members.iter().filter(|m| m.role.is_agent()) {
            let id = &agent.id;
            acl.grant(
                &format!("own-space.{id}"),
                vec![agent.common_name()],
                vec![Put, Delete, DeclareQueryable, Reply, LivelinessToken],
                vec![keys.agent(id), format!("{}/**", keys.agent(id))],
            );
            if agent.role == MemberRole::Edge {
                acl.grant(
                    &format!("fetch-images.{id}"),
                    vec![agent.common_name()],
                    vec![Query],
                    vec![keys.images_for(id)],
                );
            }
        }
        acl
    }

    /// Allows `messages` on `key_exprs` from the members named `names` (nothing when no member
    /// has the role: Zenoh refuses a subject with no names).
    fn grant(
        &mut self,
        id: &str,
        names: Vec<String>,
        messages: Vec<Message>,
        key_exprs: Vec<String>,
    ) {
        if names.is_empty() {
            return;
        }
        self.rule(id, "ingress", Some(names), messages, key_exprs);
    }

    /// Allows `messages` on `key_exprs` in `flow` for the peers named `names` (`None`: all).
    fn rule(
        &mut self,
        id: &str,
        flow: &'static str,
        names: Option<Vec<String>>,
        messages: Vec<Message>,
        key_exprs: Vec<String>,
    ) {
        self.rules.push(Rule {
            id: id.to_string(),
            messages,
            flows: [flow],
            permission: "allow",
            key_exprs,
        });
        self.subjects.push(Subject {
            id: id.to_string(),
            cert_common_names: names,
        });
        self.policies.push(Policy {
            rules: vec![id.to_string()],
            subjects: vec![id.to_string()],
        });
    }

    /// The section as JSON, for `zenoh::Config::insert_json5("access_control", …)`.
    pub fn to_json(&self) -> String {
        // Plain strings, vectors and enums: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Member;

    fn roster() -> Roster {
        let mut r = Roster::default();
        for (role, id) in [
            (MemberRole::Orchestrator, "ctrl"),
            (MemberRole::Edge, "edge1"),
            (MemberRole::Edge, "edge2"),
            (MemberRole::Mobile, "mobile1"),
            (MemberRole::Operator, "alice"),
        ] {
            r.add(Member::new(role, id).unwrap()).unwrap();
        }
        r
    }

    #[test]
    fn zenoh_accepts_the_policy() {
        let acl = AccessControl::for_domain(&KeySpace::default(), &roster());
        let mut config = zenoh::Config::default();
        config
            .insert_json5("access_control", &acl.to_json())
            .unwrap();
        let json = format!("{config}");
        assert!(json.contains("\"default_permission\":\"deny\""), "{json}");
    }

    #[test]
    fn agents_speak_only_in_their_own_space_and_edges_fetch_only_their_images() {
        let acl = AccessControl::for_domain(&KeySpace::default(), &roster());
        let rule = |id: &str| acl.rules.iter().find(|r| r.id == id);
        let own = rule("own-space.edge1").unwrap();
        assert_eq!(own.key_exprs, ["mose/agents/edge1", "mose/agents/edge1/**"]);
        let subject = acl
            .subjects
            .iter()
            .find(|s| s.id == "own-space.edge1")
            .unwrap();
        assert_eq!(
            subject.cert_common_names.as_deref().unwrap(),
            ["edge:edge1"]
        );
        assert_eq!(
            rule("fetch-images.edge2").unwrap().key_exprs,
            ["mose/agents/*/images/edge2/**"]
        );
        assert!(rule("fetch-images.mobile1").is_none());
        assert!(rule("own-space.mobile1").is_some());
        assert!(rule("own-space.alice").is_none());
        let steps = acl.subjects.iter().find(|s| s.id == "drive-steps").unwrap();
        assert_eq!(
            steps.cert_common_names.as_deref().unwrap(),
            ["orchestrator:ctrl"]
        );
        // Nothing lets anyone but the orchestrator query agents' steps.
        for r in acl.rules.iter().filter(|r| r.flows == ["ingress"]) {
            if r.key_exprs.iter().any(|k| k.contains("/rpc/"))
                && r.messages.contains(&Message::Query)
            {
                assert!(
                    ["drive-steps", "call-orchestrator"].contains(&r.id.as_str()),
                    "{}",
                    r.id
                );
            }
        }
    }

    #[test]
    fn roles_nobody_has_grant_nothing() {
        let mut r = Roster::default();
        r.add(Member::new(MemberRole::Edge, "e").unwrap()).unwrap();
        let acl = AccessControl::for_domain(&KeySpace::default(), &r);
        assert!(acl
            .subjects
            .iter()
            .all(|s| s.cert_common_names.iter().all(|n| !n.is_empty())));
        assert!(acl.rules.iter().all(|r| r.id != "drive-steps"));
        let mut config = zenoh::Config::default();
        config
            .insert_json5("access_control", &acl.to_json())
            .unwrap();
    }
}
