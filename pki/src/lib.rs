//! The domain's certificate authority: what `mose pki` runs.
//!
//! A MOSE domain trusts one CA. Its directory holds the CA's certificate and key, the roster of
//! every member it issued ([`Roster`]), and a copy of each certificate it issued (for `list`).
//! Issuing writes a node's TLS directory — `ca.pem`, `cert.pem`, `key.pem`, `roster.toml` — which
//! is what the node's `--tls-dir` reads (`mose_protocol::transport::TlsDir`). Keys are ECDSA
//! P-256; private keys and the CA's directory are readable by their owner only.
//!
//! Rotation (docs/security.md): issue again (same role and id) and restart the node; a new
//! member is allowed by a node once that node has the new roster and restarted.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use mose_protocol::domain::{DomainError, Member, MemberRole, Roster};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// The CA certificate's file in a CA directory and in a node's TLS directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key (CA directory only).
pub const CA_KEY: &str = "ca.key";
/// A node's certificate in its TLS directory.
pub const NODE_CERT: &str = "cert.pem";
/// A node's private key in its TLS directory.
pub const NODE_KEY: &str = "key.pem";
/// The roster, in both.
pub const ROSTER: &str = "roster.toml";
/// Copies of issued certificates in the CA directory, `{role}-{id}.pem`.
const ISSUED: &str = "issued";
/// Backdating of `not_before`, so a node whose clock is a little behind accepts a fresh
/// certificate.
const CLOCK_SKEW: Duration = Duration::hours(1);

/// What `mose pki` can fail at.
#[derive(Debug, Error)]
pub enum PkiError {
    /// A file or directory could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `init` on a directory that has a CA already.
    #[error("{0} holds a CA already; remove it first to start a new domain")]
    Exists(PathBuf),
    /// No CA in the directory.
    #[error("{0} holds no CA (create one with `mose pki init`)")]
    NoCa(PathBuf),
    /// Certificate generation or parsing failed.
    #[error("{what}: {reason}")]
    Certificate {
        /// What was being done.
        what: &'static str,
        /// rcgen's or x509-parser's message.
        reason: String,
    },
    /// The roster cannot be read, written or extended.
    #[error("roster {path}: {reason}")]
    Roster {
        /// The roster file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A member that cannot be issued.
    #[error(transparent)]
    Member(#[from] DomainError),
    /// A node's certificate names another member than the node is.
    #[error("the certificate {path} is for {found:?}, but this node is {expected}")]
    WrongIdentity {
        /// The certificate file.
        path: PathBuf,
        /// Its common name.
        found: String,
        /// Who the node is (`role:id`, or the role alone).
        expected: String,
    },
    /// A node's certificate is not valid now.
    #[error("the certificate {path} is not valid now (valid from {not_before_unix_s} to {not_after_unix_s}, Unix seconds): renew it with `mose pki issue`")]
    NotValidNow {
        /// The certificate file.
        path: PathBuf,
        /// Start of validity.
        not_before_unix_s: i64,
        /// End of validity.
        not_after_unix_s: i64,
    },
    /// A private key that others may read.
    #[error("the private key {path} has mode {mode:o}: others may read it; chmod 600 it")]
    KeyReadable {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A validity of zero days or more than a century.
    #[error("validity of {0} days is outside 1..=36500")]
    Validity(u32),
}

type Result<T> = std::result::Result<T, PkiError>;

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> PkiError + 'p {
    move |source| PkiError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |e| PkiError::Certificate {
        what,
        reason: e.to_string(),
    }
}

/// What a certificate says, as far as operators and access control care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's common name (`{role}:{id}` for members).
    pub common_name: String,
    /// The issuer's common name.
    pub issuer: String,
    /// Start of validity, Unix seconds.
    pub not_before_unix_s: i64,
    /// End of validity, Unix seconds.
    pub not_after_unix_s: i64,
}

impl CertificateInfo {
    /// The member the certificate names, if its common name is one.
    pub fn member(&self) -> std::result::Result<Member, DomainError> {
        Member::from_common_name(&self.common_name)
    }
}

/// Reads the first certificate of a PEM file.
pub fn read_certificate(path: &Path) -> Result<CertificateInfo> {
    let bytes = fs::read(path).map_err(io("read certificate", path))?;
    parse_certificate(&bytes)
}

fn parse_certificate(pem: &[u8]) -> Result<CertificateInfo> {
    let bad = |reason: String| PkiError::Certificate {
        what: "parse certificate",
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let cn = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    Ok(CertificateInfo {
        common_name: cn(cert.subject()),
        issuer: cn(cert.issuer()),
        not_before_unix_s: cert.validity().not_before.timestamp(),
        not_after_unix_s: cert.validity().not_after.timestamp(),
    })
}

/// Checks a node's own TLS identity before it joins: the certificate names the member the node
/// is (`role` and, where it has one, `id`), is valid now, and the key is readable by its owner
/// only. The node's peers would refuse a wrong name anyway; this says so at start.
pub fn check_node(
    cert: &Path,
    key: &Path,
    role: MemberRole,
    id: Option<&str>,
) -> Result<CertificateInfo> {
    let mode = fs::metadata(key)
        .map_err(io("read", key))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyReadable {
            path: key.to_path_buf(),
            mode,
        });
    }
    let info = read_certificate(cert)?;
    let matches = info
        .member()
        .is_ok_and(|m| m.role == role && (id.is_none() || id == Some(m.id.as_str())));
    if !matches {
        return Err(PkiError::WrongIdentity {
            path: cert.to_path_buf(),
            found: info.common_name,
            expected: match id {
                Some(id) => format!("{role}:{id}"),
                None => format!("{role}:…"),
            },
        });
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if now < info.not_before_unix_s || now > info.not_after_unix_s {
        return Err(PkiError::NotValidNow {
            path: cert.to_path_buf(),
            not_before_unix_s: info.not_before_unix_s,
            not_after_unix_s: info.not_after_unix_s,
        });
    }
    Ok(info)
}

/// Writes `contents` to `path` with `mode`, replacing it (through a temporary file, so a
/// reader never sees half a key).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(contents).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("flush", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename into place", path))
}

fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io("set mode of", dir))
}

fn validity(days: u32) -> Result<(OffsetDateTime, OffsetDateTime)> {
    if !(1..=36_500).contains(&days) {
        return Err(PkiError::Validity(days));
    }
    let now = OffsetDateTime::now_utc();
    Ok((now - CLOCK_SKEW, now + Duration::days(i64::from(days))))
}

/// A node's certificate and key, as issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The node's TLS directory.
    pub dir: PathBuf,
    /// What the certificate says.
    pub info: CertificateInfo,
    /// Whether the member was new to the roster (else: a renewal).
    pub new_member: bool,
}

/// The domain CA in its directory.
pub struct Ca {
    dir: PathBuf,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Creates a new domain CA named `name` in `dir` (0700), valid for `days`, with an empty
    /// roster. Refuses a directory that has a CA.
    pub fn init(dir: &Path, name: &str, days: u32) -> Result<Ca> {
        if dir.join(CA_CERT).exists() || dir.join(CA_KEY).exists() {
            return Err(PkiError::Exists(dir.to_path_buf()));
        }
        let (not_before, not_after) = validity(days)?;
        let key = KeyPair::generate().map_err(cert_err("generate the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .self_signed(&key)
            .map_err(cert_err("sign the CA certificate"))?;
        make_dir(dir, 0o700)?;
        write_file(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
        let ca = Ca {
            dir: dir.to_path_buf(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        };
        ca.save_roster(&Roster::default())?;
        Ok(ca)
    }

    /// The CA in `dir`.
    pub fn open(dir: &Path) -> Result<Ca> {
        let cert_path = dir.join(CA_CERT);
        if !cert_path.exists() {
            return Err(PkiError::NoCa(dir.to_path_buf()));
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
        let key_path = dir.join(CA_KEY);
        let key_pem = fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err("read the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(cert_err("read the CA certificate"))?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            cert_pem,
            issuer,
        })
    }

    /// The CA's certificate.
    pub fn certificate(&self) -> Result<CertificateInfo> {
        parse_certificate(self.cert_pem.as_bytes())
    }

    /// Every member issued so far.
    pub fn roster(&self) -> Result<Roster> {
        let path = self.dir.join(ROSTER);
        let bad = |reason: String| PkiError::Roster {
            path: path.clone(),
            reason,
        };
        let text = fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let roster: Roster = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        roster.validate().map_err(|e| bad(e.to_string()))?;
        Ok(roster)
    }

    fn save_roster(&self, roster: &Roster) -> Result<()> {
        let path = self.dir.join(ROSTER);
        let text = toml::to_string(roster).map_err(|e| PkiError::Roster {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let header = "# The members of this MOSE domain, written by `mose pki issue`.\n";
        write_file(&path, format!("{header}{text}").as_bytes(), 0o644)
    }

    /// Issues `member` a certificate valid for `days` and writes its TLS directory `out`
    /// (0700): `ca.pem`, `cert.pem`, `key.pem` (0600) and the roster, which now lists it.
    /// Issuing a member again renews it.
    pub fn issue(&self, member: &Member, days: u32, out: &Path) -> Result<Issued> {
        let (not_before, not_after) = validity(days)?;
        let mut roster = self.roster()?;
        let new_member = roster.add(member.clone())?;
        let key = KeyPair::generate().map_err(cert_err("generate the node key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, member.common_name());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every node both accepts and opens links.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_err("sign the node certificate"))?;
        make_dir(out, 0o700)?;
        write_file(&out.join(NODE_KEY), key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&out.join(NODE_CERT), cert.pem().as_bytes(), 0o644)?;
        let issued = self.dir.join(ISSUED);
        make_dir(&issued, 0o700)?;
        write_file(
            &issued.join(format!("{}.pem", file_stem(member))),
            cert.pem().as_bytes(),
            0o644,
        )?;
        if new_member {
            self.save_roster(&roster)?;
        }
        self.export(out)?;
        Ok(Issued {
            dir: out.to_path_buf(),
            info: parse_certificate(cert.pem().as_bytes())?,
            new_member,
        })
    }

    /// Refreshes the CA certificate and the roster in a node's TLS directory `out` (after
    /// members were added), leaving its certificate and key alone.
    pub fn export(&self, out: &Path) -> Result<()> {
        make_dir(out, 0o700)?;
        write_file(&out.join(CA_CERT), self.cert_pem.as_bytes(), 0o644)?;
        let roster = self.dir.join(ROSTER);
        let text = fs::read(&roster).map_err(io("read", &roster))?;
        write_file(&out.join(ROSTER), &text, 0o644)
    }

    /// The certificate last issued to each member, in roster order (a member whose copy is
    /// missing is listed with `None`).
    pub fn issued(&self) -> Result<Vec<(Member, Option<CertificateInfo>)>> {
        self.roster()?
            .members
            .into_iter()
            .map(|m| {
                let path = self.dir.join(ISSUED).join(format!("{}.pem", file_stem(&m)));
                let info = match path.exists() {
                    true => Some(read_certificate(&path)?),
                    false => None,
                };
                Ok((m, info))
            })
            .collect()
    }
}

/// Where [`issue_domain`] puts `member`'s TLS directory under `dir`.
pub fn member_dir(dir: &Path, member: &Member) -> PathBuf {
    dir.join(file_stem(member))
}

/// `{role}-{id}`: a member as a file name (a common name's `:` is awkward in paths).
fn file_stem(member: &Member) -> String {
    format!("{}-{}", member.role, member.id)
}

/// A whole domain in one go, for labs and tests: a CA in `dir/ca` and a TLS directory
/// [`member_dir`] per member, every one with the complete roster. Returns the TLS
/// directories in the order of `members`.
pub fn issue_domain(dir: &Path, name: &str, members: &[Member], days: u32) -> Result<Vec<PathBuf>> {
    let ca = Ca::init(&dir.join("ca"), name, days)?;
    let dirs: Vec<PathBuf> = members.iter().map(|m| member_dir(dir, m)).collect();
    for (m, out) in members.iter().zip(&dirs) {
        ca.issue(m, days, out)?;
    }
    for out in &dirs {
        ca.export(out)?;
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn a_domain_issues_members_with_private_keys_and_a_roster() {
        let tmp = tempfile::tempdir().unwrap();
        let ca_dir = tmp.path().join("ca");
        let ca = Ca::init(&ca_dir, "test domain", 30).unwrap();
        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&ca_dir.join(CA_KEY)), 0o600);
        assert_eq!(ca.certificate().unwrap().common_name, "test domain");
        assert!(matches!(
            Ca::init(&ca_dir, "again", 30),
            Err(PkiError::Exists(_))
        ));

        let edge1 = Member::new(MemberRole::Edge, "edge1").unwrap();
        let node = tmp.path().join("edge1");
        let issued = ca.issue(&edge1, 10, &node).unwrap();
        assert!(issued.new_member);
        assert_eq!(issued.info.common_name, "edge:edge1");
        assert_eq!(issued.info.member().unwrap(), edge1);
        assert_eq!(issued.info.issuer, "test domain");
        let days = (issued.info.not_after_unix_s - issued.info.not_before_unix_s) / 86_400;
        assert_eq!(
            days, 10,
            "validity plus the skew allowance rounds down to 10 days"
        );
        assert_eq!(mode(&node), 0o700);
        assert_eq!(mode(&node.join(NODE_KEY)), 0o600);
        let info = read_certificate(&node.join(NODE_CERT)).unwrap();
        assert_eq!(info, issued.info);

        // Reopened from disk, the CA renews and adds members.
        let ca = Ca::open(&ca_dir).unwrap();
        assert!(!ca.issue(&edge1, 10, &node).unwrap().new_member);
        let ops = Member::new(MemberRole::Operator, "alice").unwrap();
        ca.issue(&ops, 10, &tmp.path().join("alice")).unwrap();
        let roster = ca.roster().unwrap();
        assert_eq!(roster.members, vec![edge1.clone(), ops]);
        // The first node's roster is stale until exported again.
        let stale: Roster =
            toml::from_str(&fs::read_to_string(node.join(ROSTER)).unwrap()).unwrap();
        assert_eq!(stale.members, vec![edge1]);
        ca.export(&node).unwrap();
        let fresh: Roster =
            toml::from_str(&fs::read_to_string(node.join(ROSTER)).unwrap()).unwrap();
        assert_eq!(fresh, roster);
        assert_eq!(ca.issued().unwrap().len(), 2);

        // The node's own check: right name, private key.
        let (cert, key) = (node.join(NODE_CERT), node.join(NODE_KEY));
        check_node(&cert, &key, MemberRole::Edge, Some("edge1")).unwrap();
        let wrong = check_node(&cert, &key, MemberRole::Edge, Some("edge2")).unwrap_err();
        assert!(wrong.to_string().contains("\"edge:edge1\""), "{wrong}");
        assert!(check_node(&cert, &key, MemberRole::Orchestrator, None).is_err());
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            check_node(&cert, &key, MemberRole::Edge, Some("edge1")),
            Err(PkiError::KeyReadable { mode: 0o644, .. })
        ));
    }

    #[test]
    fn a_lab_domain_gives_every_member_the_whole_roster() {
        let tmp = tempfile::tempdir().unwrap();
        let members = [
            Member::new(MemberRole::Orchestrator, "o").unwrap(),
            Member::new(MemberRole::Edge, "a").unwrap(),
        ];
        let dirs = issue_domain(tmp.path(), "lab", &members, 1).unwrap();
        assert_eq!(dirs[1], tmp.path().join("edge-a"));
        for d in &dirs {
            let r: Roster = toml::from_str(&fs::read_to_string(d.join(ROSTER)).unwrap()).unwrap();
            assert_eq!(r.members, members);
        }
    }

    #[test]
    fn bad_requests_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(Ca::open(tmp.path()), Err(PkiError::NoCa(_))));
        let ca = Ca::init(tmp.path(), "d", 1).unwrap();
        let m = Member::new(MemberRole::Mobile, "m").unwrap();
        assert!(matches!(
            ca.issue(&m, 0, &tmp.path().join("m")),
            Err(PkiError::Validity(0))
        ));
        ca.issue(&m, 1, &tmp.path().join("m")).unwrap();
        let clash = Member::new(MemberRole::Edge, "m").unwrap();
        let err = ca.issue(&clash, 1, &tmp.path().join("m2")).unwrap_err();
        assert!(err.to_string().contains("two agents"), "{err}");
        assert!(matches!(
            read_certificate(&tmp.path().join("nope.pem")),
            Err(PkiError::Io { .. })
        ));
        assert!(parse_certificate(b"not a pem").is_err());
    }
}
