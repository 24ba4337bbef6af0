//! A throwaway secured MOSE domain for tests: a CA and one TLS directory per member in a
//! temporary directory, so tests run with mutual TLS and access control like a real domain.

use std::path::PathBuf;

use mose_protocol::domain::{Member, MemberRole};

/// A test domain; its files go when it is dropped.
pub struct TestDomain {
    dir: tempfile::TempDir,
}

impl TestDomain {
    /// A domain of `members` (role, id), each issued a certificate valid for a day.
    pub fn new(members: &[(MemberRole, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory for the test domain");
        let members: Vec<Member> = members
            .iter()
            .map(|(role, id)| Member::new(*role, id).expect("valid test member"))
            .collect();
        mose_pki::issue_domain(dir.path(), "test domain", &members, 1)
            .expect("issue the test domain");
        Self { dir }
    }

    /// The TLS directory of member `role`/`id` (`--tls-dir`).
    pub fn tls_dir(&self, role: MemberRole, id: &str) -> PathBuf {
        let member = Member::new(role, id).expect("valid test member");
        mose_pki::member_dir(self.dir.path(), &member)
    }

    /// The domain's CA directory (to issue outsiders with another CA, make another domain).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }
}

/// A TLS endpoint on loopback at a free port.
pub fn tls_loopback() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    format!("tls/127.0.0.1:{port}")
}
