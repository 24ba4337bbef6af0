//! The testbed's container images, built from local files only (no registry is reachable).
//!
//! Two kinds of image, one writer:
//! * **workloads** ([`ImageSource::Workload`]): one static binary of `mose-workloads`
//!   (`counter-service`, `memload`) at `/<binary>`;
//! * **Debian programs** ([`ImageSource::Debian`]: `memcached`, `iperf3`, `redis-server`, the
//!   papers' workloads):
//!   the program of a Debian 12 package installed on this machine (`testbed/setup-host.sh`
//!   installs them) plus exactly the shared libraries it loads, as `ldd` resolves them, at the
//!   paths the dynamic loader looks them up. The versions of the packages they came from are
//!   recorded in a label, so the image ID changes exactly when Debian updates one of them.
//!
//! Every image is one layer with those files and a minimal `/etc/passwd`, `/etc/group` and
//! `/tmp`. We write the image as a `docker-archive` ourselves, byte for byte deterministic
//! (sorted entries, mtime 0, uid/gid 0, fixed `created`), and hosts `podman load` it. Why not
//! `podman import`: import stamps the current time into the image config, so two hosts
//! importing the same tar get different image IDs, and a checkpoint made on one host references
//! an image ID the other does not have. With our archive the image ID is the SHA-256 of a config
//! we control: identical on every host and across rebuilds of the same files.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mose_command::{Cmd, CommandError};
use sha2::{Digest, Sha256};

use crate::error::{Result, TestbedError};

/// Where an image's program comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A static binary of `mose-workloads`, placed at `/<binary>`.
    Workload {
        /// The binary's name.
        binary: &'static str,
    },
    /// `program` (an absolute path) of the installed Debian package `package`, placed at the
    /// same path, with the shared libraries it loads.
    Debian {
        /// The package.
        package: &'static str,
        /// The program's absolute path.
        program: &'static str,
    },
}

/// What goes into one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Short name, also the archive file stem.
    pub name: &'static str,
    /// Name:tag hosts know the image by.
    pub reference: &'static str,
    /// Where the program comes from.
    pub source: ImageSource,
    /// Fixed arguments after the program in the entry point.
    pub entry_args: &'static [&'static str],
    /// Default arguments (the config's `Cmd`): arguments given to `podman run <image> ...`
    /// replace them.
    pub default_args: &'static [&'static str],
    /// TCP ports the workload listens on (image metadata only).
    pub tcp_ports: &'static [u16],
    /// (absolute path, contents) of configuration files written into the image, for programs
    /// that read their settings only from a file.
    pub config_files: &'static [(&'static str, &'static str)],
}

impl ImageSpec {
    /// The program's absolute path inside the image.
    pub fn program_path(&self) -> String {
        match self.source {
            ImageSource::Workload { binary } => format!("/{binary}"),
            ImageSource::Debian { program, .. } => program.to_string(),
        }
    }
}

/// The stateful TCP counter service (port 7000).
pub const COUNTER: ImageSpec = ImageSpec {
    name: "counter",
    reference: "localhost/mose/counter:latest",
    source: ImageSource::Workload {
        binary: "counter-service",
    },
    entry_args: &[],
    default_args: &[],
    tcp_ports: &[7000],
    config_files: &[],
};

/// The memory-dirtying calibration workload.
pub const MEMLOAD: ImageSpec = ImageSpec {
    name: "memload",
    reference: "localhost/mose/memload:latest",
    source: ImageSource::Workload { binary: "memload" },
    entry_args: &[],
    default_args: &[],
    tcp_ports: &[],
    config_files: &[],
};

/// memcached 1.6 (Debian 12) on TCP 11211. `podman run <image> -m <MiB>` sets the cache size
/// (default 64 MiB). `-u root`: memcached refuses to run as root without it, and the container's
/// root is the only user the image has.
pub const MEMCACHED: ImageSpec = ImageSpec {
    name: "memcached",
    reference: "localhost/mose/memcached:latest",
    source: ImageSource::Debian {
        package: "memcached",
        program: "/usr/bin/memcached",
    },
    entry_args: &["-u", "root", "-p", "11211"],
    default_args: &["-m", "64"],
    tcp_ports: &[11211],
    config_files: &[],
};

/// The Redis 7.0 server (Debian 12) on TCP 6379, in memory only (`--save ''`, no AOF), serving
/// the overlay without a password (`--protected-mode no`: the service namespace is reachable
/// only through the overlay's flows).
pub const REDIS: ImageSpec = ImageSpec {
    name: "redis",
    reference: "localhost/mose/redis:latest",
    source: ImageSource::Debian {
        package: "redis-server",
        program: "/usr/bin/redis-server",
    },
    entry_args: &[
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ],
    default_args: &[],
    tcp_ports: &[6379],
    config_files: &[],
};

/// The iperf3 3.12 server (Debian 12) on TCP 5201; arguments given to `podman run` are added
/// (e.g. `-1` to serve one test and exit).
pub const IPERF3: ImageSpec = ImageSpec {
    name: "iperf3",
    reference: "localhost/mose/iperf3:latest",
    source: ImageSource::Debian {
        package: "iperf3",
        program: "/usr/bin/iperf3",
    },
    entry_args: &["-s", "-p", "5201"],
    default_args: &[],
    tcp_ports: &[5201],
    config_files: &[],
};

/// The Mosquitto 2.0 MQTT broker (Debian 12) on TCP 1883. Its settings come only from a file:
/// without one it listens on loopback only. Anonymous clients (the overlay's flows are the
/// only way in), in memory only, and `user root`: the image's only user (Mosquitto would
/// otherwise look for a `mosquitto` user to drop to).
pub const MOSQUITTO: ImageSpec = ImageSpec {
    name: "mosquitto",
    reference: "localhost/mose/mosquitto:latest",
    source: ImageSource::Debian {
        package: "mosquitto",
        program: "/usr/sbin/mosquitto",
    },
    entry_args: &["-c", "/etc/mosquitto/mose.conf"],
    default_args: &[],
    tcp_ports: &[1883],
    config_files: &[(
        "/etc/mosquitto/mose.conf",
        "listener 1883 0.0.0.0\nallow_anonymous true\npersistence false\nuser root\n",
    )],
};

/// The images every testbed host gets ([`ImageBuilder::build_all`], `FourHost::up`).
pub const ALL: &[ImageSpec] = &[COUNTER, MEMLOAD];

/// The images of Debian programs, built on demand ([`ImageBuilder::build`]): they are ≈ 8 MB
/// each (glibc, OpenSSL), and loading them on every host of every testbed would slow down
/// `FourHost::up` for tests that never use them (measured in `docs/testbed.md`, "Workloads").
pub const DEBIAN: &[ImageSpec] = &[MEMCACHED, IPERF3, REDIS, MOSQUITTO];

/// A built image archive, ready for [`crate::Host::load_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// What was built.
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

/// One file of an image's layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    /// Path inside the image, relative to its root (`usr/bin/memcached`).
    pub path: String,
    /// Unix permission bits.
    pub mode: u32,
    /// Contents.
    pub data: Vec<u8>,
}

/// What an image holds besides what its spec says: its files and where they came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageContent {
    /// The payload; [`rootfs_tar`] adds `/etc/{passwd,group}`, `/tmp` and parent directories.
    pub files: Vec<LayerFile>,
    /// `package=version` of every Debian package a file came from, sorted (empty for workloads).
    pub packages: Vec<String>,
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
        Cmd::new(&cargo)
            .current_dir(&self.workspace)
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
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .deadline(Duration::from_secs(900))
            .output()
            .await?;
        Ok(self.target_dir.join(target).join("release"))
    }

    /// Build the workloads and write the archive of every image in [`ALL`].
    pub async fn build_all(&self) -> Result<Vec<BuiltImage>> {
        self.build(ALL).await
    }

    /// Write the archives of `specs` (in that order). The workloads are compiled only if one
    /// of them needs a workload binary; Debian images need their package installed.
    pub async fn build(&self, specs: &[ImageSpec]) -> Result<Vec<BuiltImage>> {
        let mut bin_dir: Option<PathBuf> = None;
        let mut out = Vec::new();
        for spec in specs {
            let (spec, out_dir) = (spec.clone(), self.out_dir.clone());
            let task = match spec.source {
                ImageSource::Workload { binary } => {
                    let dir = match &bin_dir {
                        Some(d) => d.clone(),
                        None => {
                            let d = self.build_workloads().await?;
                            bin_dir = Some(d.clone());
                            d
                        }
                    };
                    let bin = dir.join(binary);
                    tokio::task::spawn_blocking(move || {
                        write_image(&spec, &workload_content(&bin)?, &out_dir)
                    })
                }
                ImageSource::Debian { package, program } => {
                    let content = debian_content(package, program).await?;
                    tokio::task::spawn_blocking(move || write_image(&spec, &content, &out_dir))
                }
            };
            let img = task
                .await
                .map_err(|e| TestbedError::State(format!("image writer task failed: {e}")))??;
            tracing::info!(image = %img.reference, id = %img.id, archive = %img.archive.display(), "image built");
            out.push(img);
        }
        Ok(out)
    }
}

/// A workload image's content: the static binary at `/<file name>`.
pub fn workload_content(binary: &Path) -> Result<ImageContent> {
    let data = std::fs::read(binary).map_err(|e| {
        TestbedError::io(
            format!("read workload binary {} (built?)", binary.display()),
            e,
        )
    })?;
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            TestbedError::Invalid(format!("workload binary path {}", binary.display()))
        })?;
    Ok(ImageContent {
        files: vec![LayerFile {
            path: name,
            mode: 0o755,
            data,
        }],
        packages: Vec::new(),
    })
}

/// The Debian packages of `specs` that are not installed on this machine (tests skip on them).
pub async fn missing_packages(specs: &[ImageSpec]) -> Vec<&'static str> {
    let mut missing = Vec::new();
    for spec in specs {
        if let ImageSource::Debian { package, .. } = spec.source {
            if !matches!(package_installed(package).await, Ok(true)) {
                missing.push(package);
            }
        }
    }
    missing
}

async fn package_installed(package: &str) -> Result<bool> {
    match mose_command::run("dpkg-query", ["-W", "-f", "${db:Status-Status}", package]).await {
        Ok(status) => Ok(status.trim() == "installed"),
        // dpkg-query exits 1 for a package it has never heard of.
        Err(CommandError::Failed { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A Debian image's content: `program` of the installed `package` and the shared libraries it
/// loads (`ldd`), each at the path the loader resolved it to, as a plain file (symlinks
/// followed: the image needs no symlinks, and the bytes are what counts for the ID).
///
/// Why the installed files rather than `apt-get download` + unpacking: the package's runtime
/// dependencies would have to be resolved and unpacked too (with the maintainer scripts' effects
/// missing), and half of what they hold is never loaded. `ldd` answers exactly which files the
/// program needs. (`ldd` runs the dynamic loader on the program: fine for a binary of an
/// installed Debian package, never use it on untrusted files.)
pub async fn debian_content(package: &str, program: &str) -> Result<ImageContent> {
    if !package_installed(package).await? {
        return Err(TestbedError::State(format!(
            "Debian package {package} is not installed: run testbed/setup-host.sh (it installs \
             the workload packages without starting their system daemons)"
        )));
    }
    let ldd = mose_command::run("ldd", [program]).await?;
    let mut paths = vec![PathBuf::from(program)];
    paths.extend(parse_ldd(&ldd).map_err(|why| TestbedError::Parse {
        path: format!("ldd {program}").into(),
        why,
    })?);
    let mut files = Vec::new();
    for p in &paths {
        let data = tokio::fs::read(p)
            .await
            .map_err(|e| TestbedError::io(format!("read {} (for {package})", p.display()), e))?;
        files.push(LayerFile {
            path: relative(p)?,
            mode: 0o755,
            data,
        });
    }
    Ok(ImageContent {
        files,
        packages: package_versions(&paths).await?,
    })
}

/// The absolute library paths in `ldd` output, in order. Lines without a path (the vDSO) are
/// skipped; a library the loader cannot find is an error, since the image would not start.
pub fn parse_ldd(out: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let mut v = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let target = line.split_once("=>").map_or(line, |(_, t)| t.trim());
        if target.starts_with("not found") {
            return Err(format!("the loader cannot find {line}"));
        }
        match target.split_whitespace().next() {
            Some(p) if p.starts_with('/') => v.push(PathBuf::from(p)),
            _ if line.contains("=>") => return Err(format!("no path in line {line:?}")),
            _ => {} // linux-vdso.so.1 (0x...): provided by the kernel
        }
    }
    if v.is_empty() {
        return Err(format!(
            "no shared libraries listed (not a dynamic executable?): {out:?}"
        ));
    }
    Ok(v)
}

/// `/usr/bin/x` → `usr/bin/x`; only plain absolute paths are accepted.
fn relative(p: &Path) -> Result<String> {
    let s = p.to_string_lossy();
    match s.strip_prefix('/') {
        Some(rel) if is_plain(rel) => Ok(rel.to_string()),
        _ => Err(TestbedError::Invalid(format!(
            "image file path {s:?} is not a plain absolute path"
        ))),
    }
}

/// `a/b/c`: not empty, no leading, trailing or double `/`, no `.` or `..`.
fn is_plain(rel: &str) -> bool {
    rel.split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// `package=version` (sorted) of the packages owning `paths`, from one `dpkg-query -S` and one
/// `dpkg-query -W` (each reads dpkg's whole database: ≈ 0.1 s, so not once per file).
///
/// With merged /usr, the path the loader reports (`/lib/x86_64-linux-gnu/libevent-2.1.so.7`)
/// is often not the one dpkg registered (`/usr/lib/x86_64-linux-gnu/libevent-2.1.so.7.0.1`, or a
/// symlink under `/lib`). So we ask for every spelling (directory with and without `/usr`,
/// link name and real name) and keep the entries that resolve to the same real file. (A glob
/// `*/<name>` finds them too, but costs ≈ 0.3 s per pattern.)
async fn package_versions(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut real = Vec::new();
    let mut spellings = BTreeSet::new();
    for p in paths {
        let r = tokio::fs::canonicalize(p)
            .await
            .map_err(|e| TestbedError::io(format!("resolve {}", p.display()), e))?;
        for dir in [p.parent(), r.parent()].into_iter().flatten() {
            let dir = dir.to_string_lossy();
            let other = match dir.strip_prefix("/usr") {
                Some(rest) if rest.starts_with('/') => rest.to_string(),
                _ => format!("/usr{dir}"),
            };
            for name in [p.file_name(), r.file_name()].into_iter().flatten() {
                let name = name.to_string_lossy();
                spellings.insert(format!("{dir}/{name}"));
                spellings.insert(format!("{other}/{name}"));
            }
        }
        real.push(r);
    }
    let out = dpkg_search(&spellings).await?;
    let mut owner: BTreeMap<PathBuf, String> = BTreeMap::new();
    for line in out.lines().filter(|l| !l.starts_with("diversion ")) {
        // "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6"; shared paths: "pkg1, pkg2: /path"
        let Some((pkgs, path)) = line.split_once(": ") else {
            continue;
        };
        let Ok(r) = std::fs::canonicalize(path.trim()) else {
            continue;
        };
        if real.contains(&r) {
            if let Some(first) = pkgs.split(", ").next() {
                owner.entry(r).or_insert_with(|| first.trim().to_string());
            }
        }
    }
    if let Some((p, _)) = paths
        .iter()
        .zip(&real)
        .find(|(_, r)| !owner.contains_key(*r))
    {
        return Err(TestbedError::State(format!(
            "{} belongs to no installed Debian package (dpkg-query -S)",
            p.display()
        )));
    }
    let pkgs: BTreeSet<&str> = owner.values().map(String::as_str).collect();
    let versions = mose_command::run(
        "dpkg-query",
        ["-W", "-f", "${Package}=${Version}\\n"]
            .into_iter()
            .chain(pkgs),
    )
    .await?;
    let mut v: Vec<String> = versions.lines().map(str::to_string).collect();
    v.sort();
    v.dedup();
    Ok(v)
}

/// `dpkg-query -S <paths>`'s output. It exits 1 when any path is unknown to dpkg, which is
/// expected here (we ask for every spelling of a file), so that status is not an error: a file
/// without an owner is reported by the caller.
async fn dpkg_search(paths: &BTreeSet<String>) -> Result<String> {
    let out = Cmd::new("dpkg-query")
        .arg("-S")
        .args(paths)
        .output_any_status()
        .await?;
    match out.status.code() {
        Some(0 | 1) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => Err(CommandError::Failed {
            program: "dpkg-query".into(),
            args: std::iter::once("-S".to_string())
                .chain(paths.iter().cloned())
                .collect(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into()),
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

fn append_dir(b: &mut tar::Builder<impl Write>, path: &str, mode: u32) -> Result<()> {
    let h = header(path, tar::EntryType::Directory, mode, 0)?;
    b.append(&h, std::io::empty())
        .map_err(|e| TestbedError::io(format!("append {path} to tar"), e))
}

/// The layer: `/etc/{passwd,group}`, `/tmp`, the payload `files` and their parent directories,
/// in sorted order (a directory `a/` sorts before everything under it). A payload path that is
/// not plain, or that collides with another entry, is an error.
pub fn rootfs_tar(files: &[LayerFile]) -> Result<Vec<u8>> {
    // path → (mode, Some(data) = file / None = directory); directories end with '/'.
    let mut entries: BTreeMap<String, (u32, Option<&[u8]>)> = BTreeMap::new();
    entries.insert("etc/".into(), (0o755, None));
    entries.insert("etc/group".into(), (0o644, Some(&b"root:x:0:\n"[..])));
    entries.insert(
        "etc/passwd".into(),
        (0o644, Some(&b"root:x:0:0:root:/:/sbin/nologin\n"[..])),
    );
    entries.insert("tmp/".into(), (0o1777, None));
    for f in files {
        if !is_plain(&f.path) {
            return Err(TestbedError::Invalid(format!(
                "image file path {:?} is not a plain relative path",
                f.path
            )));
        }
        let parts: Vec<&str> = f.path.split('/').collect();
        let mut dir = String::new();
        for part in &parts[..parts.len() - 1] {
            dir = format!("{dir}{part}/");
            if entries.contains_key(dir.trim_end_matches('/')) {
                return Err(TestbedError::Invalid(format!(
                    "image path {dir} is both a file and a directory"
                )));
            }
            entries.entry(dir.clone()).or_insert((0o755, None));
        }
        if entries.contains_key(&f.path) || entries.contains_key(&format!("{}/", f.path)) {
            return Err(TestbedError::Invalid(format!(
                "image file {} given twice (or clashes with the base files)",
                f.path
            )));
        }
        entries.insert(f.path.clone(), (f.mode, Some(&f.data)));
    }
    let mut b = tar::Builder::new(Vec::new());
    for (path, (mode, data)) in &entries {
        match data {
            Some(d) => append(&mut b, path, *mode, d)?,
            None => append_dir(&mut b, path, *mode)?,
        }
    }
    b.into_inner()
        .map_err(|e| TestbedError::io("finish rootfs tar", e))
}

/// The image config (Docker image spec v1.2 / OCI compatible). serde_json's default map is
/// sorted, so the bytes, and thus the image ID, depend only on the inputs. Keys that a workload
/// image does not use (`Cmd`, the packages label) are left out, so those images keep the IDs
/// they had before Debian images existed.
pub fn image_config(spec: &ImageSpec, packages: &[String], layer_digest_hex: &str) -> Vec<u8> {
    let ports: serde_json::Map<String, serde_json::Value> = spec
        .tcp_ports
        .iter()
        .map(|p| (format!("{p}/tcp"), serde_json::json!({})))
        .collect();
    let program = spec.program_path();
    let entrypoint: Vec<&str> = std::iter::once(program.as_str())
        .chain(spec.entry_args.iter().copied())
        .collect();
    let (path_env, created_by) = match spec.source {
        ImageSource::Workload { binary } => {
            ("PATH=/", format!("mose-testbed images.rs: /{binary}"))
        }
        ImageSource::Debian { package, program } => (
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            format!("mose-testbed images.rs: {program} of Debian package {package} + the shared libraries it loads"),
        ),
    };
    let mut labels =
        serde_json::json!({"org.opencontainers.image.title": spec.name, "io.mose.testbed": "1"});
    if !packages.is_empty() {
        labels["io.mose.debian.packages"] = packages.join(" ").into();
    }
    let mut config = serde_json::json!({
        "Entrypoint": entrypoint,
        "Env": [path_env],
        "ExposedPorts": ports,
        "WorkingDir": "/",
        "Labels": labels,
    });
    if !spec.default_args.is_empty() {
        config["Cmd"] = spec.default_args.into();
    }
    let cfg = serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest_hex}")]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": created_by}],
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
/// with `content`. Deterministic: the same content gives the same bytes and ID.
pub fn write_image(spec: &ImageSpec, content: &ImageContent, out_dir: &Path) -> Result<BuiltImage> {
    let mut files = content.files.clone();
    for (path, text) in spec.config_files {
        files.push(LayerFile {
            path: relative(Path::new(path))?,
            mode: 0o644,
            data: text.as_bytes().to_vec(),
        });
    }
    let layer = rootfs_tar(&files)?;
    let layer_hex = sha256_hex(&layer);
    let config = image_config(spec, &content.packages, &layer_hex);
    let config_hex = sha256_hex(&config);
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{config_hex}.json"),
        "RepoTags": [spec.reference],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }]))
    .expect("a json! value always serialises");

    let mut b = tar::Builder::new(Vec::new());
    append(&mut b, &format!("{config_hex}.json"), 0o644, &config)?;
    append_dir(&mut b, &format!("{layer_hex}/"), 0o755)?;
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

    fn workload(dir: &Path, name: &str, data: &[u8]) -> ImageContent {
        let bin = dir.join(name);
        std::fs::write(&bin, data).unwrap();
        workload_content(&bin).unwrap()
    }

    fn file(path: &str) -> LayerFile {
        LayerFile {
            path: path.into(),
            mode: 0o755,
            data: path.as_bytes().to_vec(),
        }
    }

    /// The image config inside a docker-archive.
    fn config_of(archive: &Path) -> (String, Vec<u8>) {
        let arch = std::fs::read(archive).unwrap();
        let mut t = tar::Archive::new(&arch[..]);
        for e in t.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            if p.ends_with(".json") && p != "manifest.json" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
                return (p, buf);
            }
        }
        panic!("no config in {}", archive.display());
    }

    #[test]
    fn archives_are_deterministic_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let content = workload(dir.path(), "counter-service", b"\x7fELF not really");
        let a = write_image(&COUNTER, &content, &dir.path().join("a")).unwrap();
        let b = write_image(&COUNTER, &content, &dir.path().join("b")).unwrap();
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
        let (name, cfg) = config_of(&a.archive);
        assert_eq!(format!("sha256:{}", sha256_hex(&cfg)), a.id);
        assert_eq!(format!("sha256:{name}"), format!("{}.json", a.id));
    }

    /// The workload images' config is what it was before Debian images were added (their IDs
    /// did not change with the extension of the model).
    #[test]
    fn workload_config_is_unchanged() {
        let cfg: serde_json::Value =
            serde_json::from_slice(&image_config(&COUNTER, &[], "ab")).unwrap();
        assert_eq!(
            cfg["config"],
            serde_json::json!({
                "Entrypoint": ["/counter-service"],
                "Env": ["PATH=/"],
                "ExposedPorts": {"7000/tcp": {}},
                "WorkingDir": "/",
                "Labels": {"org.opencontainers.image.title": "counter", "io.mose.testbed": "1"},
            })
        );
        assert_eq!(
            cfg["history"][0]["created_by"],
            "mose-testbed images.rs: /counter-service"
        );
    }

    #[test]
    fn debian_config_has_entrypoint_cmd_and_packages() {
        let pk = vec!["libc6=2.36".to_string(), "memcached=1.6.18".to_string()];
        let cfg: serde_json::Value =
            serde_json::from_slice(&image_config(&MEMCACHED, &pk, "ab")).unwrap();
        let c = &cfg["config"];
        assert_eq!(
            c["Entrypoint"],
            serde_json::json!(["/usr/bin/memcached", "-u", "root", "-p", "11211"])
        );
        assert_eq!(c["Cmd"], serde_json::json!(["-m", "64"]));
        assert_eq!(c["ExposedPorts"], serde_json::json!({"11211/tcp": {}}));
        assert_eq!(
            c["Labels"]["io.mose.debian.packages"],
            "libc6=2.36 memcached=1.6.18"
        );
        let other = image_config(&MEMCACHED, &["memcached=1.6.19".into()], "ab");
        assert_ne!(
            sha256_hex(&other),
            sha256_hex(&serde_json::to_vec(&cfg).unwrap())
        );
    }

    #[test]
    fn layer_has_parent_directories_in_order() {
        let files = vec![
            file("usr/bin/memcached"),
            file("lib64/ld-linux-x86-64.so.2"),
            file("lib/x86_64-linux-gnu/libc.so.6"),
        ];
        let names: Vec<_> = entries(&rootfs_tar(&files).unwrap())
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(
            names,
            [
                "etc/",
                "etc/group",
                "etc/passwd",
                "lib/",
                "lib/x86_64-linux-gnu/",
                "lib/x86_64-linux-gnu/libc.so.6",
                "lib64/",
                "lib64/ld-linux-x86-64.so.2",
                "tmp/",
                "usr/",
                "usr/bin/",
                "usr/bin/memcached",
            ]
        );
        // Order of the input does not matter.
        let mut rev = files.clone();
        rev.reverse();
        assert_eq!(rootfs_tar(&files).unwrap(), rootfs_tar(&rev).unwrap());
    }

    #[test]
    fn bad_layer_paths_are_errors() {
        for bad in [
            vec![file("/abs")],
            vec![file("a/../b")],
            vec![file("a//b")],
            vec![file("a/")],
            vec![file("")],
            vec![file("etc/passwd")],
            vec![file("x"), file("x")],
            vec![file("x"), file("x/y")],
            vec![file("x/y"), file("x")],
            vec![file("tmp")],
        ] {
            let e = rootfs_tar(&bad).unwrap_err();
            assert!(matches!(e, TestbedError::Invalid(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ldd_output_is_parsed() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibevent-2.1.so.7 => /lib/x86_64-linux-gnu/libevent-2.1.so.7 (0x00007f)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libevent-2.1.so.7"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let e = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(e.contains("libfoo.so.1"), "{e}");
        assert!(parse_ldd("\tnot a dynamic executable\n").is_err());
        assert!(parse_ldd("").is_err());
    }

    #[test]
    fn different_binaries_give_different_ids() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_image(
            &MEMLOAD,
            &workload(dir.path(), "memload", b"one"),
            dir.path(),
        )
        .unwrap();
        let b = write_image(
            &MEMLOAD,
            &workload(dir.path(), "memload", b"two"),
            dir.path(),
        )
        .unwrap();
        assert_ne!(a.id, b.id);
    }

    #[tokio::test]
    async fn a_missing_package_is_reported_not_built() {
        const NOPE: ImageSpec = ImageSpec {
            name: "nope",
            reference: "localhost/mose/nope:latest",
            source: ImageSource::Debian {
                package: "mose-no-such-package",
                program: "/usr/bin/true",
            },
            entry_args: &[],
            default_args: &[],
            tcp_ports: &[],
            config_files: &[],
        };
        assert_eq!(
            missing_packages(&[COUNTER, NOPE]).await,
            ["mose-no-such-package"]
        );
        let e = debian_content("mose-no-such-package", "/usr/bin/true")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("mose-no-such-package"), "{e}");
    }

    #[test]
    fn missing_binary_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = workload_content(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("read workload binary"), "{e}");
    }
}
