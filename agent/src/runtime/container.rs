//! What we send to and read from libpod about containers. The serde structs hold only the
//! fields the agent uses, every one optional or defaulted: podman 4.3 and 5.x differ in fields
//! we do not read (5.x drops `State.Health` without a healthcheck, adds `StoppedByUser`, ...),
//! and a strict model of the whole inspect document is what broke the `podman-api` crate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::limits::Ulimit;

/// Which network namespace a new container joins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Netns {
    /// A namespace we made (COAT: same IP and MAC on every host), by its path, e.g.
    /// `/run/netns/svc`. Podman configures nothing in it, so the container is "IP-less" from
    /// podman's point of view and the checkpoint refers to the path, not to a podman network.
    Path(PathBuf),
    /// A fresh namespace with only loopback.
    #[default]
    None,
}

/// A container to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSpec {
    /// The container's name.
    pub name: String,
    /// Image reference or ID; must already be present (no registry is assumed reachable).
    pub image: String,
    /// Overrides the image's entrypoint when given.
    pub entrypoint: Option<Vec<String>>,
    /// Overrides the image's command (arguments to the entrypoint) when given.
    pub command: Option<Vec<String>>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Labels (MOSE marks its containers with one).
    pub labels: BTreeMap<String, String>,
    /// The network namespace to join.
    pub netns: Netns,
    /// Usually [`super::HostLimits::container_ulimits`].
    pub ulimits: Vec<Ulimit>,
    /// Named volumes to mount; podman creates those that do not exist yet.
    pub volumes: Vec<NamedVolume>,
}

/// A named volume and where the container mounts it (libpod's `NamedVolume`, whose fields
/// carry no JSON tags: hence the capitalised names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedVolume {
    /// The volume's name on the host.
    #[serde(rename = "Name")]
    pub name: String,
    /// The absolute path in the container.
    #[serde(rename = "Dest")]
    pub dest: String,
}

/// One entry of `GET /volumes/json`: the part the agent uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct VolumeSummary {
    /// The volume's name.
    #[serde(rename = "Name")]
    pub name: String,
}

/// libpod's `SpecGenerator`, reduced to what [`CreateSpec`] sets.
#[derive(Debug, Serialize)]
pub(crate) struct SpecGenerator<'a> {
    name: &'a str,
    image: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a [String]>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    netns: Namespace,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    r_limits: &'a [Ulimit],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    volumes: &'a [NamedVolume],
}

#[derive(Debug, Serialize)]
struct Namespace {
    nsmode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
}

impl<'a> From<&'a CreateSpec> for SpecGenerator<'a> {
    fn from(s: &'a CreateSpec) -> Self {
        let netns = match &s.netns {
            Netns::Path(p) => Namespace {
                nsmode: "path",
                value: Some(p.to_string_lossy().into_owned()),
            },
            Netns::None => Namespace {
                nsmode: "none",
                value: None,
            },
        };
        SpecGenerator {
            name: &s.name,
            image: &s.image,
            entrypoint: s.entrypoint.as_deref(),
            command: s.command.as_deref(),
            env: &s.env,
            labels: &s.labels,
            netns,
            r_limits: &s.ulimits,
            volumes: &s.volumes,
        }
    }
}

/// `POST /containers/create` answer.
#[derive(Debug, Deserialize)]
pub(crate) struct CreateResponse {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Warnings", default)]
    pub warnings: Option<Vec<String>>,
}

/// The part of `GET /containers/{name}/json` the agent uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ContainerInfo {
    /// Container ID.
    #[serde(rename = "Id")]
    pub id: String,
    /// Container name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Image ID.
    #[serde(rename = "Image")]
    pub image: String,
    /// The image reference it was created from.
    #[serde(rename = "ImageName")]
    pub image_name: String,
    /// OCI runtime podman runs it with (`runc`).
    #[serde(rename = "OCIRuntime")]
    pub oci_runtime: String,
    /// The container's bundle directory (podman's `userdata`): where the runtime keeps its
    /// checkpoint and pre-checkpoint images.
    #[serde(rename = "StaticDir")]
    pub static_dir: String,
    /// Run state.
    #[serde(rename = "State")]
    pub state: ContainerState,
    /// Host configuration (network mode).
    #[serde(rename = "HostConfig")]
    pub host_config: HostConfig,
}

/// The `State` section of an inspect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ContainerState {
    /// `created`, `running`, `paused`, `exited`, ...
    #[serde(rename = "Status")]
    pub status: String,
    /// The container is running (and not paused).
    #[serde(rename = "Running")]
    pub running: bool,
    /// The container is paused.
    #[serde(rename = "Paused")]
    pub paused: bool,
    /// Host PID of the container's init process (0 when not running).
    #[serde(rename = "Pid")]
    pub pid: i64,
    /// Exit code of the last run.
    #[serde(rename = "ExitCode")]
    pub exit_code: i64,
    /// The runtime's error of the last start, if any.
    #[serde(rename = "Error")]
    pub error: String,
    /// When it started, as podman prints it.
    #[serde(rename = "StartedAt")]
    pub started_at: String,
    /// It was stopped by a checkpoint.
    #[serde(rename = "Checkpointed")]
    pub checkpointed: bool,
    /// It was created by a restore.
    #[serde(rename = "Restored")]
    pub restored: bool,
}

/// The `HostConfig` section of an inspect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct HostConfig {
    /// `ns:/run/netns/svc` for a container joined to a namespace path.
    #[serde(rename = "NetworkMode")]
    pub network_mode: String,
}

impl ContainerInfo {
    /// The reference of the image it runs (its ID when it was created from a bare ID).
    pub fn image_reference(&self) -> &str {
        match self.image_name.is_empty() {
            true => &self.image,
            false => &self.image_name,
        }
    }

    /// The namespace path the container joined, if it was created with [`Netns::Path`].
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.host_config
            .network_mode
            .strip_prefix("ns:")
            .map(PathBuf::from)
    }
}

/// One sample of `GET /containers/stats?stream=false`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ContainerStats {
    /// Container ID.
    #[serde(rename = "ContainerID")]
    pub id: String,
    /// Container name.
    #[serde(rename = "Name")]
    pub name: String,
    /// CPU use in percent of one CPU since the previous sample.
    #[serde(rename = "CPU")]
    pub cpu_percent: f64,
    /// Memory charged to the container's cgroup (includes page cache).
    #[serde(rename = "MemUsage")]
    pub mem_usage_bytes: u64,
    /// The cgroup's memory limit.
    #[serde(rename = "MemLimit")]
    pub mem_limit_bytes: u64,
    /// Bytes received on the container's interfaces.
    #[serde(rename = "NetInput")]
    pub net_input_bytes: u64,
    /// Bytes sent on the container's interfaces.
    #[serde(rename = "NetOutput")]
    pub net_output_bytes: u64,
    /// Processes in the container.
    #[serde(rename = "PIDs")]
    pub pids: u64,
}

/// The stats endpoint's envelope. `Error` is a Go error marshalled as `{}`, useless as text;
/// an unknown container shows up as `Stats: null` with status 200.
#[derive(Debug, Deserialize)]
pub(crate) struct StatsEnvelope {
    #[serde(rename = "Stats", default)]
    pub stats: Option<Vec<ContainerStats>>,
}

/// `GET /version`: the top-level `Version` is the engine's.
#[derive(Debug, Deserialize)]
pub(crate) struct VersionResponse {
    #[serde(rename = "Version")]
    pub version: String,
}

/// The part of `GET /info` the capability probe uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct HostInfo {
    /// The `host` section.
    pub host: HostSection,
}

/// The `host` section of `GET /info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HostSection {
    /// `v1` or `v2`.
    pub cgroup_version: String,
    /// The OCI runtime podman uses.
    pub oci_runtime: OciRuntime,
    /// Kernel release.
    pub kernel: String,
}

/// The OCI runtime podman uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct OciRuntime {
    /// Its name (`runc`, `crun`).
    pub name: String,
    /// The runtime's binary (e.g. `/usr/bin/runc`).
    pub path: String,
    /// Its version banner.
    pub version: String,
}

impl HostInfo {
    /// 1 or 2; 0 when podman did not say.
    pub fn cgroup_version(&self) -> u8 {
        match self.host.cgroup_version.as_str() {
            "v1" => 1,
            "v2" => 2,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSPECT_4_3: &str = include_str!("testdata/inspect-podman-4.3.1.json");
    /// Podman 5.x shape (libpod/define/container_inspect.go of v5): no `State.Health` without
    /// a healthcheck, `StoppedByUser`, new `Config`/`HostConfig` fields.
    const INSPECT_5: &str = include_str!("testdata/inspect-podman-5.x.json");
    const STATS_4_3: &str = include_str!("testdata/stats-podman-4.3.1.json");

    #[test]
    fn inspect_reads_podman_4_and_5() {
        for (v, json) in [("4.3", INSPECT_4_3), ("5.x", INSPECT_5)] {
            let c: ContainerInfo =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(c.name, "rtx1", "{v}");
            assert_eq!(c.id.len(), 64, "{v}");
            assert!(c.state.running && c.state.pid > 0, "{v}");
            assert_eq!(c.state.status, "running", "{v}");
            assert_eq!(
                c.netns_path(),
                Some(PathBuf::from("/run/netns/rtxns")),
                "{v}"
            );
            assert_eq!(c.oci_runtime, "runc", "{v}");
        }
    }

    #[test]
    fn inspect_tolerates_missing_sections() {
        let c: ContainerInfo =
            serde_json::from_str(r#"{"Id":"x","State":{"Status":"exited"}}"#).unwrap();
        assert_eq!(
            (c.id.as_str(), c.state.status.as_str(), c.netns_path()),
            ("x", "exited", None)
        );
    }

    #[test]
    fn stats_envelope_parses_and_marks_unknown_containers() {
        let e: StatsEnvelope = serde_json::from_str(STATS_4_3).unwrap();
        let s = &e.stats.unwrap()[0];
        assert_eq!(s.name, "rtx1");
        assert!(s.pids >= 1);
        let unknown: StatsEnvelope = serde_json::from_str(r#"{"Error":{},"Stats":null}"#).unwrap();
        assert!(unknown.stats.is_none());
    }

    #[test]
    fn create_request_has_netns_path_ulimits_and_volumes() {
        let spec = CreateSpec {
            name: "svc".into(),
            image: "localhost/mose/counter:latest".into(),
            netns: Netns::Path("/run/netns/svc".into()),
            ulimits: vec![Ulimit::fixed("nofile", 20000)],
            volumes: vec![NamedVolume {
                name: "mose.svc.data".into(),
                dest: "/data".into(),
            }],
            ..CreateSpec::default()
        };
        let v = serde_json::to_value(SpecGenerator::from(&spec)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "name": "svc", "image": "localhost/mose/counter:latest",
                "netns": {"nsmode": "path", "value": "/run/netns/svc"},
                "r_limits": [{"type": "nofile", "soft": 20000, "hard": 20000}],
                "volumes": [{"Name": "mose.svc.data", "Dest": "/data"}],
            })
        );
        let v = serde_json::to_value(SpecGenerator::from(&CreateSpec::default())).unwrap();
        assert_eq!(v["netns"], serde_json::json!({"nsmode": "none"}));
        assert!(
            v.get("r_limits").is_none() && v.get("command").is_none() && v.get("volumes").is_none()
        );
    }

    #[test]
    fn info_cgroup_version() {
        let i: HostInfo =
            serde_json::from_str(r#"{"host":{"cgroupVersion":"v2","ociRuntime":{"name":"runc"}}}"#)
                .unwrap();
        assert_eq!(
            (i.cgroup_version(), i.host.oci_runtime.name.as_str()),
            (2, "runc")
        );
        assert_eq!(HostInfo::default().cgroup_version(), 0);
    }
}

/// One entry of `GET /containers/json` (running containers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ContainerSummary {
    /// Its names.
    #[serde(rename = "Names")]
    pub names: Vec<String>,
    /// Host PID of its init process.
    #[serde(rename = "Pid")]
    pub pid: i64,
    /// `running`, `exited`, ...
    #[serde(rename = "State")]
    pub state: String,
}
