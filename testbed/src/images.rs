//! The testbed's container images, built from local files only (no registry is reachable).
//!
//! Each image is one layer holding one static binary of `mose-workloads` plus a minimal
//! `/etc/passwd` and `/etc/group`. We write the image as a `docker-archive` ourselves, byte for
//! byte deterministic (sorted entries, mtime 0, uid/gid 0, fixed `created`), and hosts
//! `podman load` it. Why not `podman import`: import stamps the current time into the image
//! config, so two hosts importing the same tar get different image IDs, and a checkpoint made on
//! one host references an image ID the other does not have. With our archive the image ID is
//! the SHA-256 of a config we control: identical on every host and across rebuilds of the same binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cmd;
use crate::error::{Result, TestbedError};

/// What goes into one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Short name, also the archive file stem.
    pub name: &'static str,
    /// Name:tag hosts know the image by.
    pub reference: &'static str,
    /// Binary of `mose-workloads` placed at `/<binary>`.
    pub binary: &'static str,
    /// TCP ports the workload listens on (image metadata only).
    pub tcp_ports: &'static [u16],
}

/// The stateful TCP counter service (port 7000).
pub const COUNTER: ImageSpec = ImageSpec {
    name: "counter",
    reference: "localhost/mose/counter:latest",
    binary: "counter-service",
    tcp_ports: &[7000],
};

/// The memory-dirtying calibration workload.
pub const MEMLOAD: ImageSpec = ImageSpec {
    name: "memload",
    reference: "localhost/mose/memload:latest",
    binary: "memload",
    tcp_ports: &[],
};

/// Every testbed image.
pub const ALL: &[ImageSpec] = &[COUNTER, MEMLOAD];

/// A built image archive, ready for [`crate::Host::load_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub spec: ImageSpec,
    /// Name:tag (same as `spec.reference`).
    pub reference: String,
    /// The `docker-archive` tar to `podman load`.
    pub archive: PathBuf,
    /// The plain rootfs tar (the image's only layer), e.g. for `podman import`.
    pub rootfs: PathBuf,
    /// `sha256:<hex>` of the image config: the image ID podman reports after loading.
    pub id: String,
}

/// Builds the workloads (static) and writes the image archives.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    /// The cargo workspace root (holds `testbed/workloads`).
    pub workspace: PathBuf,
    /// Cargo target dir of the static build, separate from the caller's so a nested cargo never
    /// waits on the lock of the build that runs the tests, and the `+crt-static` flags never
    /// invalidate it.
    pub target_dir: PathBuf,
    /// Where archives go.
    pub out_dir: PathBuf,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        let workspace = crate::workspace_dir();
        let target = crate::out_dir();
        ImageBuilder {
            target_dir: target.join("workloads-static"),
            out_dir: target.join("images"),
            workspace,
        }
    }
}

/// The Rust target triple of the static build (this machine's architecture, glibc, static).
pub fn static_target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

impl ImageBuilder {
    /// `cargo build --release -p mose-workloads` with `+crt-static`; returns the binaries' directory.
    pub async fn build_workloads(&self) -> Result<PathBuf> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target = static_target();
        let mut c = tokio::process::Command::new(&cargo);
        c.current_dir(&self.workspace)
            .args([
                "build",
                "--release",
                "--target",
                &target,
                "-p",
                "mose-workloads",
            ])
            .env("CARGO_TARGET_DIR", &self.target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            // Set when we run under `cargo test`; it would override RUSTFLAGS.
            .env_remove("CARGO_ENCODED_RUSTFLAGS");
        cmd::output(c, Duration::from_secs(900)).await?;
        Ok(self.target_dir.join(target).join("release"))
    }

    /// Build the workloads and write every image archive.
    pub async fn build_all(&self) -> Result<Vec<BuiltImage>> {
        let bin_dir = self.build_workloads().await?;
        let mut out = Vec::new();
        for spec in ALL {
            let bin = bin_dir.join(spec.binary);
            let (spec, out_dir) = (spec.clone(), self.out_dir.clone());
            let img = tokio::task::spawn_blocking(move || write_image(&spec, &bin, &out_dir))
                .await
                .map_err(|e| TestbedError::State(format!("image writer task failed: {e}")))??;
            tracing::info!(image = %img.reference, id = %img.id, archive = %img.archive.display(), "image built");
            out.push(img);
        }
        Ok(out)
    }
}

/// A tar header with everything that could vary between builds fixed.
fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .map_err(|e| TestbedError::io(format!("tar path {path}"), e))?;
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("")
        .and_then(|_| h.set_groupname(""))
        .map_err(|e| TestbedError::io("tar owner names", e))?;
    h.set_cksum();
    Ok(h)
}

fn append(b: &mut tar::Builder<impl Write>, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let h = header(path, tar::EntryType::Regular, mode, data.len() as u64)?;
    b.append(&h, data)
        .map_err(|e| TestbedError::io(format!("append {path} to tar"), e))
}

fn append_dir(b: &mut tar::Builder<impl Write>, path: &str) -> Result<()> {
    let h = header(path, tar::EntryType::Directory, 0o755, 0)?;
    b.append(&h, std::io::empty())
        .map_err(|e| TestbedError::io(format!("append {path} to tar"), e))
}

/// The layer: `/etc/{passwd,group}`, `/tmp` and the binary, in sorted order.
pub fn rootfs_tar(binary_name: &str, binary: &[u8]) -> Result<Vec<u8>> {
    // (path, mode, Some(data) = file / None = directory)
    let mut files: Vec<(&str, u32, Option<&[u8]>)> = vec![
        (binary_name, 0o755, Some(binary)),
        ("etc/", 0o755, None),
        ("etc/group", 0o644, Some(b"root:x:0:\n")),
        (
            "etc/passwd",
            0o644,
            Some(b"root:x:0:0:root:/:/sbin/nologin\n"),
        ),
        ("tmp/", 0o1777, None),
    ];
    files.sort_by(|a, b| a.0.cmp(b.0));
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data) in files {
        match data {
            Some(d) => append(&mut b, path, mode, d)?,
            None => {
                let h = header(path, tar::EntryType::Directory, mode, 0)?;
                b.append(&h, std::io::empty())
                    .map_err(|e| TestbedError::io(format!("append {path} to tar"), e))?;
            }
        }
    }
    b.into_inner()
        .map_err(|e| TestbedError::io("finish rootfs tar", e))
}

/// The image config (Docker image spec v1.2 / OCI compatible). serde_json's default map is
/// sorted, so the bytes, and thus the image ID, depend only on the inputs.
pub fn image_config(spec: &ImageSpec, layer_digest_hex: &str) -> Vec<u8> {
    let ports: serde_json::Map<String, serde_json::Value> = spec
        .tcp_ports
        .iter()
        .map(|p| (format!("{p}/tcp"), serde_json::json!({})))
        .collect();
    let cfg = serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": [format!("/{}", spec.binary)],
            "Env": ["PATH=/"],
            "ExposedPorts": ports,
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.title": spec.name, "io.mose.testbed": "1"},
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest_hex}")]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": format!("mose-testbed images.rs: /{}", spec.binary)}],
    });
    serde_json::to_vec(&cfg).expect("a json! value always serialises")
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Write `<out_dir>/<name>.tar` (docker-archive) and `<out_dir>/<name>-rootfs.tar` for `spec`
/// with the binary at `binary`. Deterministic: the same binary gives the same bytes and ID.
pub fn write_image(spec: &ImageSpec, binary: &Path, out_dir: &Path) -> Result<BuiltImage> {
    let bin = std::fs::read(binary).map_err(|e| {
        TestbedError::io(
            format!("read workload binary {} (built?)", binary.display()),
            e,
        )
    })?;
    let layer = rootfs_tar(spec.binary, &bin)?;
    let layer_hex = sha256_hex(&layer);
    let config = image_config(spec, &layer_hex);
    let config_hex = sha256_hex(&config);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [spec.reference],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }]))
    .expect("a json! value always serialises");

    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, &format!("{config_hex}.json"), 0o644, &config)?;
    append_dir(&mut b, &format!("{layer_hex}/"))?;
    append(&mut b, &format!("{layer_hex}/layer.tar"), 0o644, &layer)?;
    append(&mut b, "manifest.json", 0o644, &manifest)?;
    let archive_bytes = b
        .into_inner()
        .map_err(|e| TestbedError::io("finish image archive", e))?;

    std::fs::create_dir_all(out_dir)
        .map_err(|e| TestbedError::io(format!("create {}", out_dir.display()), e))?;
    let archive = out_dir.join(format!("{}.tar", spec.name));
    let rootfs = out_dir.join(format!("{}-rootfs.tar", spec.name));
    write_atomic(&archive, &archive_bytes)?;
    write_atomic(&rootfs, &layer)?;
    Ok(BuiltImage {
        spec: spec.clone(),
        reference: spec.reference.to_string(),
        archive,
        rootfs,
        id: format!("sha256:{config_hex}"),
    })
}

/// Write via a temp file + rename, so a parallel reader (another test loading the image) never
/// sees a half-written archive.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    // Unique per process *and* call: parallel tests in one process build the same images.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{seq}", std::process::id()));
    std::fs::write(&tmp, data)
        .map_err(|e| TestbedError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| TestbedError::io(format!("rename to {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_bytes: &[u8]) -> Vec<(String, u32, u64)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn archives_are_deterministic_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("counter-service");
        std::fs::write(&bin, b"\x7fELF not really").unwrap();
        let a = write_image(&COUNTER, &bin, &dir.path().join("a")).unwrap();
        let b = write_image(&COUNTER, &bin, &dir.path().join("b")).unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(
            std::fs::read(&a.archive).unwrap(),
            std::fs::read(&b.archive).unwrap()
        );
        assert!(a.id.starts_with("sha256:") && a.id.len() == 71);

        let root = entries(&std::fs::read(&a.rootfs).unwrap());
        let names: Vec<_> = root.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["counter-service", "etc/", "etc/group", "etc/passwd", "tmp/"]
        );
        assert_eq!(root[0].1, 0o755);
        assert!(root.iter().all(|e| e.2 == 0), "mtime 0 everywhere");

        // The archive's config file is named by, and hashes to, the image ID.
        let arch = std::fs::read(&a.archive).unwrap();
        let mut t = tar::Archive::new(&arch[..]);
        let mut found = false;
        for e in t.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            if p.ends_with(".json") && p != "manifest.json" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
                assert_eq!(format!("sha256:{}", sha256_hex(&buf)), a.id);
                assert_eq!(format!("sha256:{p}"), format!("{}.json", a.id));
                found = true;
            }
        }
        assert!(found);
    }

    #[test]
    fn different_binaries_give_different_ids() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("memload");
        std::fs::write(&bin, b"one").unwrap();
        let a = write_image(&MEMLOAD, &bin, dir.path()).unwrap();
        std::fs::write(&bin, b"two").unwrap();
        let b = write_image(&MEMLOAD, &bin, dir.path()).unwrap();
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn missing_binary_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_image(&COUNTER, &dir.path().join("nope"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("read workload binary"), "{e}");
    }
}
