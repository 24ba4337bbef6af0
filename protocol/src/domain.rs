//! Who belongs to a MOSE domain: members, their certificate names, the roster.
//!
//! Every node of a secured domain holds a certificate from the domain's CA whose common name is
//! `{role}:{id}` ([`Member::common_name`]). Zenoh's access control matches peers by that name,
//! and every node derives the same policy from the domain's [`Roster`] (see `acl`, and
//! docs/security.md): an agent may speak only under its own key space, only the orchestrator
//! may drive steps, only operators may call the orchestrator.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::keys::{validate_id, KeyError};

/// What a member is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// The orchestrator: drives migrations and deployments.
    Orchestrator,
    /// An edge agent: hosts services, serves and fetches their images.
    Edge,
    /// A mobile agent: steers its device's flows.
    Mobile,
    /// A person or script calling the orchestrator's RPC.
    Operator,
}

impl MemberRole {
    /// Every role, in the order the roster lists them.
    pub const ALL: [MemberRole; 4] = [
        MemberRole::Orchestrator,
        MemberRole::Edge,
        MemberRole::Mobile,
        MemberRole::Operator,
    ];

    /// The role's name in certificates, rosters and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Orchestrator => "orchestrator",
            MemberRole::Edge => "edge",
            MemberRole::Mobile => "mobile",
            MemberRole::Operator => "operator",
        }
    }

    /// An agent's role (edge and mobile members run agents).
    pub fn is_agent(self) -> bool {
        matches!(self, MemberRole::Edge | MemberRole::Mobile)
    }
}

impl fmt::Display for MemberRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MemberRole {
    type Err = DomainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MemberRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| DomainError::UnknownRole(s.to_string()))
    }
}

impl From<crate::messages::Role> for MemberRole {
    fn from(role: crate::messages::Role) -> Self {
        match role {
            crate::messages::Role::Edge => MemberRole::Edge,
            crate::messages::Role::Mobile => MemberRole::Mobile,
        }
    }
}

/// A roster entry or a certificate name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    /// Not one of orchestrator, edge, mobile, operator.
    #[error("unknown role {0:?}: expected orchestrator, edge, mobile or operator")]
    UnknownRole(String),
    /// A common name without the `role:id` shape.
    #[error("certificate name {0:?} is not of the form ROLE:ID")]
    NotAMemberName(String),
    /// The id is not one key chunk.
    #[error(transparent)]
    Id(#[from] KeyError),
    /// The same member twice in a roster.
    #[error("the roster lists {0} twice")]
    Duplicate(String),
    /// Two agents with the same id (an edge and a mobile both `x` would share a key space).
    #[error("the roster has two agents with id {0:?}")]
    DuplicateAgent(String),
}

/// One member of the domain: its role and id (an agent's id, the orchestrator's or operator's
/// name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// What the member is for.
    pub role: MemberRole,
    /// Its id, one key chunk (`[A-Za-z0-9._-]`).
    pub id: String,
}

impl Member {
    /// A member, with its id checked.
    pub fn new(role: MemberRole, id: &str) -> Result<Self, DomainError> {
        validate_id("member id", id)?;
        Ok(Self {
            role,
            id: id.to_string(),
        })
    }

    /// The certificate's common name: `{role}:{id}` (`:` never occurs in an id, so the name is
    /// unambiguous).
    pub fn common_name(&self) -> String {
        format!("{}:{}", self.role, self.id)
    }

    /// The member a certificate's common name stands for.
    pub fn from_common_name(name: &str) -> Result<Self, DomainError> {
        let (role, id) = name
            .split_once(':')
            .ok_or_else(|| DomainError::NotAMemberName(name.to_string()))?;
        Member::new(role.parse()?, id)
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.id)
    }
}

/// Every member of the domain, as the CA issued them. Each node loads it to build its access
/// control; a member missing from a node's roster can connect (its certificate is valid) but
/// is refused everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roster {
    /// The members, in the order they were issued.
    #[serde(default, rename = "member")]
    pub members: Vec<Member>,
}

impl Roster {
    /// Checks ids, and that no member (and no agent id) appears twice.
    pub fn validate(&self) -> Result<(), DomainError> {
        let mut names = std::collections::BTreeSet::new();
        let mut agents = std::collections::BTreeSet::new();
        for m in &self.members {
            validate_id("member id", &m.id)?;
            if !names.insert(m.common_name()) {
                return Err(DomainError::Duplicate(m.to_string()));
            }
            if m.role.is_agent() && !agents.insert(m.id.as_str()) {
                return Err(DomainError::DuplicateAgent(m.id.clone()));
            }
        }
        Ok(())
    }

    /// The members of `role`.
    pub fn of(&self, role: MemberRole) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.role == role)
    }

    /// Whether `member` is listed.
    pub fn contains(&self, member: &Member) -> bool {
        self.members.contains(member)
    }

    /// Adds `member` unless it is listed already; false if it was.
    pub fn add(&mut self, member: Member) -> Result<bool, DomainError> {
        if self.contains(&member) {
            return Ok(false);
        }
        self.members.push(member);
        if let Err(e) = self.validate() {
            self.members.pop();
            return Err(e);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_round_trip() {
        let m = Member::new(MemberRole::Edge, "edge1").unwrap();
        assert_eq!(m.common_name(), "edge:edge1");
        assert_eq!(Member::from_common_name("edge:edge1").unwrap(), m);
        assert_eq!(
            Member::from_common_name("operator:ops.team-1").unwrap(),
            Member::new(MemberRole::Operator, "ops.team-1").unwrap()
        );
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(matches!(
            Member::from_common_name("edge1"),
            Err(DomainError::NotAMemberName(_))
        ));
        assert!(matches!(
            Member::from_common_name("root:x"),
            Err(DomainError::UnknownRole(_))
        ));
        assert!(matches!(
            Member::from_common_name("edge:a:b"),
            Err(DomainError::Id(_))
        ));
        assert!(matches!(
            Member::from_common_name("edge:*"),
            Err(DomainError::Id(_))
        ));
        assert!(Member::new(MemberRole::Edge, "").is_err());
    }

    #[test]
    fn rosters_refuse_duplicates() {
        let mut r = Roster::default();
        assert!(r.add(Member::new(MemberRole::Edge, "a").unwrap()).unwrap());
        assert!(!r.add(Member::new(MemberRole::Edge, "a").unwrap()).unwrap());
        r.add(Member::new(MemberRole::Operator, "a").unwrap())
            .unwrap();
        let err = r.add(Member::new(MemberRole::Mobile, "a").unwrap());
        assert!(
            matches!(err, Err(DomainError::DuplicateAgent(_))),
            "{err:?}"
        );
        assert_eq!(r.of(MemberRole::Edge).count(), 1);
    }
}
