//! How the agent names what it makes for a service: its namespace and veth (the same on every
//! host, docs/coat.md "Names"), and the files of a task in the work directory. The orchestrator
//! names images by their role ([`ImageId`]); the files and keys behind them are the agent's.

use std::path::{Path, PathBuf};

use mose_protocol::keys::validate_id;
use mose_protocol::steps::ImageId;

use super::error::{CoatError, Result};

/// The interface a service has inside its namespace.
pub const SERVICE_IFNAME: &str = "eth0";

/// The joined pre-copy rounds, in the task's directory during a restore.
pub const JOINED_ROUNDS: &str = "rounds.joined";

/// The suffix of a service's state file in its task's directory.
const STATE_SUFFIX: &str = ".state.json";

/// The namespace of `service` on every host: one path everywhere, because the checkpoint
/// records it and podman restores into exactly that path.
pub fn netns_name(service: &str) -> String {
    format!("mose-{service}")
}

/// The host-side veth (and OvS port) of `service`: `mv-<service>` when that fits the 15 bytes
/// of an interface name, else `mv-` and 12 hex digits of a hash of the name.
pub fn host_ifname(service: &str) -> String {
    let plain = format!("mv-{service}");
    if plain.len() <= 15 {
        return plain;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = service.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("mv-{:012x}", hash >> 16)
}

/// The host's volume for the volume `volume` of `service`: `mose.<service>.<volume>`. A volume
/// name has no dot, so [`volume_of`] splits every such name one way only; the `mose.` prefix is
/// MOSE's on every host (docs/operations.md, "Volumes").
pub fn volume_name(service: &str, volume: &str) -> String {
    format!("mose.{service}.{volume}")
}

/// Whether the host volume `name` is one of `service`'s ([`volume_name`]).
pub fn volume_of(service: &str, name: &str) -> bool {
    name.strip_prefix("mose.")
        .and_then(|rest| rest.strip_prefix(service))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|volume| !volume.is_empty() && !volume.contains('.'))
}

/// Container names as podman accepts them, short enough for [`netns_name`] (a netns name is a
/// file name, and `mose-` + 59 fits every tool that prints it).
pub fn check_service(service: &str) -> Result<()> {
    check_chunk("service name", service, 59)
}

/// A task id names a directory of the work dir and a key chunk: a key chunk that does not
/// start with a dot (`..` would leave the work dir).
pub fn check_task(task: &str) -> Result<()> {
    check_chunk("task id", task, 128)
}

fn check_chunk(what: &'static str, value: &str, max_len: usize) -> Result<()> {
    let ok = validate_id(what, value).is_ok()
        && value.len() <= max_len
        && value.starts_with(|c: char| c.is_ascii_alphanumeric());
    match ok {
        true => Ok(()),
        false => Err(CoatError::Invalid(format!(
            "invalid {what} {value:?}: 1-{max_len} characters of [A-Za-z0-9_.-], starting alphanumeric"
        ))),
    }
}

/// Everything of `task` on this host: its archives and its services' state.
pub fn task_dir(work_dir: &Path, task: &str) -> PathBuf {
    work_dir.join(task)
}

/// The archive of `image` of `task`: `<work_dir>/<task>/<image chunk>.tar`.
pub fn image_path(work_dir: &Path, task: &str, image: ImageId) -> PathBuf {
    task_dir(work_dir, task).join(format!("{}.tar", image.key_chunk()))
}

/// The persisted state of `service` in `task`: `<work_dir>/<task>/<service>.state.json`.
pub fn state_path(work_dir: &Path, task: &str, service: &str) -> PathBuf {
    task_dir(work_dir, task).join(format!("{service}{STATE_SUFFIX}"))
}

/// Whether `name` (a file in a task's directory) is a state file.
pub fn is_state_file(name: &str) -> bool {
    name.ends_with(STATE_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interfaces_and_are_stable() {
        assert_eq!(netns_name("counter"), "mose-counter");
        assert_eq!(host_ifname("counter"), "mv-counter");
        let long = host_ifname("a-rather-long-service-name");
        assert_eq!(long.len(), 15);
        assert_eq!(long, host_ifname("a-rather-long-service-name"));
        assert_ne!(long, host_ifname("a-rather-long-service-namf"));
    }

    #[test]
    fn a_volume_belongs_to_one_service_only() {
        assert_eq!(volume_name("redis", "data"), "mose.redis.data");
        assert!(volume_of("redis", "mose.redis.data"));
        // "a.b" is not "a" with a volume "b.data", nor is "a" a part of "a.b".
        assert!(volume_of("a.b", &volume_name("a.b", "data")));
        assert!(!volume_of("a", &volume_name("a.b", "data")));
        assert!(!volume_of("a.b", &volume_name("a", "b")));
        for other in [
            "redis.data",
            "mose.redis.",
            "mose.redis",
            "mose.redisx.data",
            "data",
        ] {
            assert!(!volume_of("redis", other), "{other}");
        }
    }

    #[test]
    fn bad_names_and_ids_are_refused() {
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a*", &"x".repeat(60)] {
            assert!(check_service(bad).is_err(), "{bad:?}");
        }
        assert!(check_service("counter_1.v2").is_ok());
        for bad in ["", "..", "t/1", ".t", "t$1", &"t".repeat(129)] {
            assert!(check_task(bad).is_err(), "{bad:?}");
        }
        assert!(check_task("t-1.a_b").is_ok());
    }

    #[test]
    fn files_are_named_by_task_image_and_service() {
        let w = Path::new("/w");
        assert_eq!(
            image_path(w, "t1", ImageId::Round(2)),
            Path::new("/w/t1/round-2.tar")
        );
        assert_eq!(
            image_path(w, "t1", ImageId::Final),
            Path::new("/w/t1/final.tar")
        );
        let state = state_path(w, "t1", "counter");
        assert_eq!(state, Path::new("/w/t1/counter.state.json"));
        assert!(is_state_file("counter.state.json"));
        assert!(!is_state_file("final.tar") && !is_state_file(JOINED_ROUNDS));
    }
}
