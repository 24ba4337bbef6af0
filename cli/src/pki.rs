//! `mose pki`: the domain's certificate authority (docs/security.md). Works on files only; no
//! orchestrator is needed.

use std::path::PathBuf;

use clap::Subcommand;
use mose_pki::{Ca, CertificateInfo};
use mose_protocol::domain::{Member, MemberRole};

/// Where the CA lives unless `--ca` or `MOSE_CA` says otherwise.
const DEFAULT_CA_DIR: &str = "/var/lib/mose/ca";

#[derive(Debug, clap::Args)]
pub struct PkiArgs {
    /// The CA's directory (its key never leaves it)
    #[arg(long, global = true, env = "MOSE_CA", default_value = DEFAULT_CA_DIR)]
    ca: PathBuf,
    #[command(subcommand)]
    command: PkiCommand,
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create the domain's CA (once per domain)
    Init {
        /// The CA's name, in its certificate
        #[arg(long, default_value = "MOSE domain CA")]
        name: String,
        /// Validity in days
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue (or renew) a member's certificate and write its TLS directory: ca.pem, cert.pem,
    /// key.pem (0600) and roster.toml, which is what a node's --tls-dir reads
    #[command(
        after_help = "Example:\n  mose pki issue --role edge --id edge1 --out /etc/mose/tls\n\nOther nodes allow a new member once they have the new roster (`mose pki roster --out \
                      DIR`) and restarted."
    )]
    Issue {
        /// orchestrator, edge, mobile or operator
        #[arg(long, value_parser = parse_role)]
        role: MemberRole,
        /// The member's id: the agent id for edge and mobile (one key chunk)
        #[arg(long)]
        id: String,
        /// The TLS directory to write
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Validity in days
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Write the current roster and CA certificate into a node's TLS directory
    Roster {
        /// The node's TLS directory
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// List the domain's members and when their certificates expire
    List,
}

fn parse_role(s: &str) -> Result<MemberRole, String> {
    s.parse()
        .map_err(|e: mose_protocol::domain::DomainError| e.to_string())
}

/// "2027-12-03 (364 days left)", or "EXPIRED …".
fn expiry(info: &CertificateInfo) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let date = time::OffsetDateTime::from_unix_timestamp(info.not_after_unix_s)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| info.not_after_unix_s.to_string());
    let days = (info.not_after_unix_s - now) / 86_400;
    match info.not_after_unix_s > now {
        true => format!("{date} ({days} days left)"),
        false => format!("EXPIRED {date}"),
    }
}

pub fn run(args: PkiArgs) -> anyhow::Result<()> {
    match args.command {
        PkiCommand::Init { name, days } => {
            let ca = Ca::init(&args.ca, &name, days)?;
            let info = ca.certificate()?;
            println!(
                "created CA {:?} in {}, valid until {}",
                info.common_name,
                args.ca.display(),
                expiry(&info)
            );
        }
        PkiCommand::Issue {
            role,
            id,
            out,
            days,
        } => {
            let member = Member::new(role, &id)?;
            let issued = Ca::open(&args.ca)?.issue(&member, days, &out)?;
            println!(
                "{} {} ({}) in {}, valid until {}",
                match issued.new_member {
                    true => "issued",
                    false => "renewed",
                },
                member,
                issued.info.common_name,
                out.display(),
                expiry(&issued.info)
            );
        }
        PkiCommand::Roster { out } => {
            let ca = Ca::open(&args.ca)?;
            ca.export(&out)?;
            println!(
                "{}: roster of {} members",
                out.display(),
                ca.roster()?.members.len()
            );
        }
        PkiCommand::List => {
            let ca = Ca::open(&args.ca)?;
            println!("{:<13} {:<24} EXPIRES", "ROLE", "ID");
            for (member, info) in ca.issued()? {
                println!(
                    "{:<13} {:<24} {}",
                    member.role,
                    member.id,
                    info.as_ref().map_or("unknown (no copy)".into(), expiry)
                );
            }
        }
    }
    Ok(())
}
