//! Iterative pre-copy: a chain of CRIU pre-dumps, each holding only the pages dirtied since the
//! round before, while the container keeps running.
//!
//! podman 4.3 keeps one pre-checkpoint per container (`--pre-checkpoint` replaces the last one
//! and dumps all memory again), so the rounds go to the OCI runtime podman itself drives
//! (runc) with CRIU's `--parent-path`: round `r` is written to `<bundle>/mose-precopy/<r>` with
//! a `parent` link `../<previous round>`, and `<bundle>/pre-checkpoint` — where podman's final
//! `--with-previous` dump looks for its parent — is pointed at the newest round, so the final
//! dump too holds only what changed since (measured in the Debian 12 guest: 16 MiB of state,
//! 1 MiB/s dirtied: rounds of 16.5 MB, then 2.1 MB, 2.1 MB).
//!
//! CRIU owns the container's soft-dirty bits from the first round to the final dump: whoever
//! else clears them (`clear_refs` 4, as the agent's dirty-rate profiler does) makes the next
//! round miss the pages written before the clear, and the restore brings back stale memory
//! (seen in the VM guests: the counter restored with an old count). So a chain holds the bits:
//! a file `<SOFT_DIRTY_HOLDS>/<container>` from the first round until [`Podman::drop_pre_dumps`],
//! and the profiler measures a held container with accessed bits instead
//! ([`soft_dirty_held`]). A file, not process memory, because `mose-agent calibrate` pre-dumps
//! in another process than the agent that profiles.
//!
//! Transfer: each round is a tar of its own (members `mose-precopy/<r>/…`, the `parent` link
//! kept as a link), sent while the service runs. Before the restore the rounds are joined
//! into one pre-checkpoint archive plus the `pre-checkpoint` link ([`join_rounds`]);
//! `podman container restore --import-previous` unpacks it into the new container's bundle,
//! where CRIU follows the same chain it was dumped against.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::criu_stats::{parse_stats_dump, CriuDumpStats};
use super::error::{Op, Result, RuntimeError};
use super::libpod::{check_name, Podman};

/// The chain's directory inside a container's bundle.
pub const CHAIN_DIR: &str = "mose-precopy";
/// Where podman's `--with-previous` dump and `--import-previous` restore expect the parent
/// images (podman's `preCheckpointDir`), relative to the bundle.
const PRE_CHECKPOINT: &str = "pre-checkpoint";
/// CRIU's statistics file, written into the round's work directory.
const STATS_DUMP: &str = "stats-dump";
/// One file per container (by the name pre-dumps were asked for) whose soft-dirty bits a
/// pre-copy chain holds.
pub const SOFT_DIRTY_HOLDS: &str = "/run/mose/soft-dirty-holds";

/// Whether a pre-copy chain holds `container`'s soft-dirty bits (holds kept in `dir`).
pub fn soft_dirty_held(dir: &Path, container: &str) -> bool {
    dir.join(container).exists()
}

/// What one pre-copy round produced.
#[derive(Debug, Clone, PartialEq)]
pub struct PreDumpReport {
    /// The round's image directory (inside the container's bundle).
    pub dir: PathBuf,
    /// The runtime's whole pre-dump (freeze, dump, thaw).
    pub elapsed: Duration,
    /// CRIU's dump statistics of the round, if it wrote them.
    pub criu: Option<CriuDumpStats>,
}

impl Podman {
    /// Pre-dump `container`'s memory as round `round` on top of round `parent` (`None`: the
    /// first round, which starts a new chain). The container keeps running. Needs kernel
    /// soft-dirty tracking; without it the runtime's error says so.
    #[tracing::instrument(skip(self, timeout))]
    pub async fn pre_dump(
        &self,
        container: &str,
        round: &str,
        parent: Option<&str>,
        timeout: Duration,
    ) -> Result<PreDumpReport> {
        let op = Op::PreDump;
        // The container's name also names its soft-dirty hold file.
        check_name(op, container)?;
        for name in std::iter::once(round).chain(parent) {
            check_round(op, name)?;
        }
        let info = self.inspect(container).await?;
        if info.static_dir.is_empty() {
            return Err(RuntimeError::Invalid {
                op,
                why: format!("podman did not report the bundle directory of {container}"),
            });
        }
        let bundle = PathBuf::from(&info.static_dir);
        let chain = bundle.join(CHAIN_DIR);
        let dir = chain.join(round);
        let io_err = |what: &str, path: &Path| {
            let what = format!("{what} {}", path.display());
            move |source| RuntimeError::LocalIo {
                op,
                target: container.to_string(),
                what,
                source,
            }
        };
        if parent.is_none() {
            // A chain left by an earlier, abandoned migration must not become a parent.
            remove_chain(&bundle).map_err(io_err("remove the old chain in", &bundle))?;
        }
        let holds = Path::new(SOFT_DIRTY_HOLDS);
        std::fs::create_dir_all(holds).map_err(io_err("create", holds))?;
        let hold = holds.join(container);
        std::fs::write(&hold, info.static_dir.as_bytes())
            .map_err(io_err("hold the soft-dirty bits with", &hold))?;
        std::fs::create_dir_all(&chain).map_err(io_err("create", &chain))?;
        let runtime = self.info().await?.host.oci_runtime;
        let program = match runtime.path.is_empty() {
            true => runtime.name,
            false => runtime.path,
        };
        let args = pre_dump_args(&dir, parent, &info.id);
        let t0 = Instant::now();
        self.run_cli(op, container, &program, &args, timeout)
            .await?;
        let elapsed = t0.elapsed();
        point_pre_checkpoint(&bundle, round).map_err(io_err("point pre-checkpoint at", &dir))?;
        let criu = std::fs::read(dir.join(STATS_DUMP))
            .ok()
            .and_then(|b| parse_stats_dump(&b).ok());
        tracing::info!(
            ms = mose_protocol::units::millis(elapsed),
            pages = criu.map(|c| c.pages_written),
            "pre-copy round dumped"
        );
        Ok(PreDumpReport { dir, elapsed, criu })
    }

    /// Removes the pre-copy chain from `container`'s bundle and releases its soft-dirty bits
    /// (after a restore, or when a migration was abandoned). A container that is gone has no
    /// chain left, but its hold is released all the same.
    pub async fn drop_pre_dumps(&self, container: &str) -> Result<()> {
        check_name(Op::PreDump, container)?;
        let hold = Path::new(SOFT_DIRTY_HOLDS).join(container);
        match std::fs::remove_file(&hold) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(RuntimeError::LocalIo {
                    op: Op::PreDump,
                    target: container.to_string(),
                    what: format!("release the soft-dirty hold {}", hold.display()),
                    source: e,
                })
            }
            _ => {}
        }
        let info = match self.inspect(container).await {
            Ok(info) => info,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if info.static_dir.is_empty() {
            return Ok(());
        }
        remove_chain(Path::new(&info.static_dir)).map_err(|source| RuntimeError::LocalIo {
            op: Op::PreDump,
            target: container.to_string(),
            what: format!("remove the pre-copy chain in {}", info.static_dir),
            source,
        })
    }
}

/// `runc checkpoint --pre-dump`: memory only (no sockets or locks, so no options for them),
/// images and CRIU's log and statistics in the round's directory.
fn pre_dump_args(dir: &Path, parent: Option<&str>, id: &str) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "checkpoint".into(),
        "--pre-dump".into(),
        "--image-path".into(),
        dir.into(),
        "--work-path".into(),
        dir.into(),
    ];
    if let Some(parent) = parent {
        // Relative to the image directory, as CRIU records it: the link survives the move
        // to another bundle.
        args.extend(["--parent-path".into(), format!("../{parent}").into()]);
    }
    args.push(id.into());
    args
}

/// Round names become directory names and the target of CRIU's `parent` link: the rule of
/// container names (no separators, no leading dot).
fn check_round(op: Op, name: &str) -> Result<()> {
    check_name(op, name).map_err(|_| RuntimeError::Invalid {
        op,
        why: format!("invalid pre-copy round name {name:?}: [A-Za-z0-9_.-], starting alphanumeric"),
    })
}

fn remove_chain(bundle: &Path) -> io::Result<()> {
    let link = bundle.join(PRE_CHECKPOINT);
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link)?,
        Ok(_) => std::fs::remove_file(&link)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    match std::fs::remove_dir_all(bundle.join(CHAIN_DIR)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Points `<bundle>/pre-checkpoint` at round `round`, replacing it in one rename.
fn point_pre_checkpoint(bundle: &Path, round: &str) -> io::Result<()> {
    let link = bundle.join(PRE_CHECKPOINT);
    if std::fs::symlink_metadata(&link).is_ok_and(|m| m.is_dir()) {
        // podman's own pre-checkpoint directory: a rename cannot replace a directory.
        std::fs::remove_dir_all(&link)?;
    }
    let tmp = bundle.join(format!("{PRE_CHECKPOINT}.new"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("{CHAIN_DIR}/{round}"), &tmp)?;
    std::fs::rename(&tmp, &link)
}

/// Writes round `round`'s image directory `dir` as a tar to `out`: members
/// `mose-precopy/<round>/…`, the `parent` link stored as a link. Returns the bytes written.
pub fn write_round_archive(dir: &Path, round: &str, out: &Path) -> io::Result<u64> {
    check_round(Op::PreDump, round).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut tar = tar::Builder::new(BufWriter::new(File::create(out)?));
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(format!("{CHAIN_DIR}/{round}"), dir)?;
    let mut file = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    file.flush()?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Joins the round archives `rounds` (name and archive, oldest first) into the one
/// pre-checkpoint archive `podman container restore --import-previous` takes: every round's
/// members, then the `pre-checkpoint` link to the last round. An archive holding anything but
/// its own round's directory is refused: it would unpack elsewhere in the bundle.
pub fn join_rounds(rounds: &[(String, PathBuf)], out: &Path) -> io::Result<()> {
    let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let Some((last, _)) = rounds.last() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no pre-copy round to join",
        ));
    };
    let mut tar = tar::Builder::new(BufWriter::new(File::create(out)?));
    for (round, path) in rounds {
        check_round(Op::PreDump, round).map_err(|e| invalid(e.to_string()))?;
        let prefix = Path::new(CHAIN_DIR).join(round);
        let mut archive = tar::Archive::new(BufReader::new(File::open(path)?));
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = entry.path()?.into_owned();
            if !name.starts_with(&prefix)
                || name
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(invalid(format!(
                    "{}: member {} is outside {}",
                    path.display(),
                    name.display(),
                    prefix.display()
                )));
            }
            let mut header = entry.header().clone();
            match entry.link_name()? {
                Some(target) => {
                    let target = target.into_owned();
                    tar.append_link(&mut header, &name, target)?
                }
                None => tar.append_data(&mut header, &name, &mut entry)?,
            }
        }
    }
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_mode(0o777);
    link.set_size(0);
    tar.append_link(&mut link, PRE_CHECKPOINT, format!("{CHAIN_DIR}/{last}"))?;
    let file = tar.into_inner()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

#[cfg(test)]
// Test fixtures: small lengths and byte patterns.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    /// A round directory as CRIU leaves it: images, and from the second round on a `parent` link.
    fn fake_round(root: &Path, round: &str, parent: Option<&str>, pages: &[u8]) -> PathBuf {
        let dir = root.join(round);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pages-1.img"), pages).unwrap();
        std::fs::write(dir.join("pagemap-1.img"), b"map").unwrap();
        if let Some(p) = parent {
            std::os::unix::fs::symlink(format!("../{p}"), dir.join("parent")).unwrap();
        }
        dir
    }

    #[test]
    fn joined_rounds_unpack_into_the_chain_podman_and_criu_follow() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        let mut rounds = Vec::new();
        for (i, (name, parent)) in [
            ("pre-0", None),
            ("pre-1", Some("pre-0")),
            ("pre-2", Some("pre-1")),
        ]
        .into_iter()
        .enumerate()
        {
            let dir = fake_round(&src, name, parent, &vec![i as u8; 4096 * (3 - i)]);
            let out = t.path().join(format!("{name}.tar"));
            let len = write_round_archive(&dir, name, &out).unwrap();
            assert_eq!(len, std::fs::metadata(&out).unwrap().len());
            rounds.push((name.to_string(), out));
        }
        let joined = t.path().join("previous.chain");
        join_rounds(&rounds, &joined).unwrap();

        let bundle = t.path().join("bundle");
        tar::Archive::new(File::open(&joined).unwrap())
            .unpack(&bundle)
            .unwrap();
        // pre-checkpoint -> the last round; each round's parent -> the round before.
        let last = std::fs::canonicalize(bundle.join(PRE_CHECKPOINT)).unwrap();
        assert_eq!(
            last,
            std::fs::canonicalize(bundle.join(CHAIN_DIR).join("pre-2")).unwrap()
        );
        let mid = std::fs::canonicalize(last.join("parent")).unwrap();
        assert!(mid.ends_with("mose-precopy/pre-1"), "{}", mid.display());
        let first = std::fs::canonicalize(mid.join("parent")).unwrap();
        assert!(first.ends_with("mose-precopy/pre-0"), "{}", first.display());
        assert!(!first.join("parent").exists());
        // Every round's pages arrive intact.
        for (i, dir) in [&first, &mid, &last].into_iter().enumerate() {
            let pages = std::fs::read(dir.join("pages-1.img")).unwrap();
            assert_eq!(pages, vec![i as u8; 4096 * (3 - i)]);
        }
    }

    #[test]
    fn a_round_archive_with_foreign_members_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let dir = fake_round(&t.path().join("src"), "pre-0", None, b"pages");
        let out = t.path().join("pre-0.tar");
        write_round_archive(&dir, "pre-0", &out).unwrap();
        // Offered under another round's name, its members are outside that round.
        let err = join_rounds(&[("pre-1".into(), out)], &t.path().join("j")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("outside mose-precopy/pre-1"),
            "{err}"
        );
        let err = join_rounds(&[], &t.path().join("j")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_garbage_round_archive_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let bad = t.path().join("pre-0.tar");
        std::fs::write(&bad, vec![0x5a; 3000]).unwrap();
        assert!(join_rounds(&[("pre-0".into(), bad)], &t.path().join("j")).is_err());
    }

    #[test]
    fn bad_round_names_are_refused_before_anything_runs() {
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(check_round(Op::PreDump, bad).is_err(), "{bad:?}");
        }
        let t = tempfile::tempdir().unwrap();
        let err = write_round_archive(t.path(), "../up", &t.path().join("o")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn pre_dump_arguments_chain_to_the_parent_round() {
        let dir = Path::new("/b/mose-precopy/pre-1");
        let shown = |a: Vec<OsString>| {
            a.iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            shown(pre_dump_args(dir, Some("pre-0"), "abc")),
            "checkpoint --pre-dump --image-path /b/mose-precopy/pre-1 --work-path \
             /b/mose-precopy/pre-1 --parent-path ../pre-0 abc"
        );
        assert!(!shown(pre_dump_args(dir, None, "abc")).contains("--parent-path"));
    }

    #[test]
    fn pre_checkpoint_is_repointed_and_the_chain_removed() {
        let t = tempfile::tempdir().unwrap();
        let b = t.path();
        fake_round(&b.join(CHAIN_DIR), "pre-0", None, b"p");
        fake_round(&b.join(CHAIN_DIR), "pre-1", Some("pre-0"), b"q");
        // podman's own pre-checkpoint directory from an earlier dump is replaced.
        std::fs::create_dir_all(b.join(PRE_CHECKPOINT)).unwrap();
        point_pre_checkpoint(b, "pre-0").unwrap();
        point_pre_checkpoint(b, "pre-1").unwrap();
        assert_eq!(
            std::fs::read_link(b.join(PRE_CHECKPOINT)).unwrap(),
            Path::new("mose-precopy/pre-1")
        );
        remove_chain(b).unwrap();
        assert!(std::fs::symlink_metadata(b.join(PRE_CHECKPOINT)).is_err());
        assert!(!b.join(CHAIN_DIR).exists());
        remove_chain(b).unwrap();
    }
}
