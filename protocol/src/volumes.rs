//! A service's named volumes: what an operator asks for (`data:/data`) and the rules that keep
//! them portable. Podman exports a container's named volumes inside its checkpoint archive and
//! creates them again from it on restore, so a volume's content moves with the service — in the
//! final archive, that is inside the freeze (docs/operations.md, "Volumes").

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How many volumes one service may have.
pub const MAX_VOLUMES: usize = 16;
/// The longest volume name.
pub const MAX_VOLUME_NAME_LEN: usize = 32;
/// The longest mount path.
pub const MAX_VOLUME_PATH_LEN: usize = 1024;

/// A named volume of a service and where its container sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeMount {
    /// The volume's name within its service: 1-32 characters of `[A-Za-z0-9_-]`, starting
    /// alphanumeric. No dot: the host names the volume `mose.{service}.{name}`, and a name
    /// without a dot keeps that split unambiguous for every service name.
    pub name: String,
    /// The absolute path in the container it is mounted at.
    pub path: String,
}

/// A volume request that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// The name breaks the naming rule.
    #[error(
        "volume name {0:?} is not usable: 1-{MAX_VOLUME_NAME_LEN} characters of [A-Za-z0-9_-], \
         starting alphanumeric"
    )]
    BadName(String),
    /// The mount path is not a plain absolute path.
    #[error(
        "volume path {0:?} is not usable: an absolute path of at most {MAX_VOLUME_PATH_LEN} \
         characters, without `..`, other than `/`"
    )]
    BadPath(String),
    /// `NAME:/PATH` was expected.
    #[error("volume {0:?} is not NAME:/PATH (e.g. data:/data)")]
    Syntax(String),
    /// Two volumes share a name or a path.
    #[error("volume {what} {value:?} is given twice")]
    Twice {
        /// `name` or `path`.
        what: &'static str,
        /// The repeated value.
        value: String,
    },
    /// More than [`MAX_VOLUMES`].
    #[error("{0} volumes asked for; a service has at most {MAX_VOLUMES}")]
    TooMany(usize),
}

impl VolumeMount {
    /// Checks the name and the path.
    pub fn check(&self) -> Result<(), VolumeError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_VOLUME_NAME_LEN
            && self.name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !name_ok {
            return Err(VolumeError::BadName(self.name.clone()));
        }
        let p = &self.path;
        let path_ok = p.starts_with('/')
            && p.len() <= MAX_VOLUME_PATH_LEN
            && !p.trim_end_matches('/').is_empty()
            && !p.contains('\0')
            && !p.contains(':')
            && p.split('/').all(|part| part != "..");
        match path_ok {
            true => Ok(()),
            false => Err(VolumeError::BadPath(p.clone())),
        }
    }
}

/// Checks every volume of a service, and that no two share a name or a path.
pub fn check_volumes(volumes: &[VolumeMount]) -> Result<(), VolumeError> {
    if volumes.len() > MAX_VOLUMES {
        return Err(VolumeError::TooMany(volumes.len()));
    }
    for (i, v) in volumes.iter().enumerate() {
        v.check()?;
        let earlier = &volumes[..i];
        if earlier.iter().any(|e| e.name == v.name) {
            return Err(VolumeError::Twice {
                what: "name",
                value: v.name.clone(),
            });
        }
        let path = v.path.trim_end_matches('/');
        if earlier.iter().any(|e| e.path.trim_end_matches('/') == path) {
            return Err(VolumeError::Twice {
                what: "path",
                value: v.path.clone(),
            });
        }
    }
    Ok(())
}

impl FromStr for VolumeMount {
    type Err = VolumeError;

    /// `NAME:/PATH`, as `podman run -v` and `mose deploy --volume` write it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, path) = s
            .split_once(':')
            .ok_or_else(|| VolumeError::Syntax(s.to_string()))?;
        let v = VolumeMount {
            name: name.to_string(),
            path: path.to_string(),
        };
        v.check()?;
        Ok(v)
    }
}

impl std::fmt::Display for VolumeMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            path: path.into(),
        }
    }

    #[test]
    fn name_colon_path_parses_and_prints_back() {
        let parsed: VolumeMount = "data:/var/lib/redis".parse().unwrap();
        assert_eq!(parsed, v("data", "/var/lib/redis"));
        assert_eq!(parsed.to_string(), "data:/var/lib/redis");
    }

    #[test]
    fn names_without_dots_and_plain_absolute_paths_only() {
        for bad in ["", "a.b", "-x", "x/y", "x y", &"n".repeat(33)] {
            assert_eq!(
                v(bad, "/d").check(),
                Err(VolumeError::BadName(bad.into())),
                "{bad:?}"
            );
        }
        for bad in ["", "d", "/", "//", "/a/../b", "/..", "/a:b", "/a\0"] {
            assert_eq!(
                v("d", bad).check(),
                Err(VolumeError::BadPath(bad.into())),
                "{bad:?}"
            );
        }
        for good in ["/data", "/var/lib/redis/", "/a/.b", "/a..b"] {
            assert_eq!(v("d", good).check(), Ok(()), "{good:?}");
        }
        assert_eq!(
            "data".parse::<VolumeMount>(),
            Err(VolumeError::Syntax("data".into()))
        );
    }

    #[test]
    fn a_name_or_a_path_given_twice_and_too_many_volumes_are_refused() {
        assert_eq!(
            check_volumes(&[v("a", "/x"), v("a", "/y")]),
            Err(VolumeError::Twice {
                what: "name",
                value: "a".into()
            })
        );
        assert_eq!(
            check_volumes(&[v("a", "/x"), v("b", "/x/")]),
            Err(VolumeError::Twice {
                what: "path",
                value: "/x/".into()
            })
        );
        let many: Vec<_> = (0..=MAX_VOLUMES)
            .map(|i| v(&format!("v{i}"), &format!("/v{i}")))
            .collect();
        assert_eq!(
            check_volumes(&many),
            Err(VolumeError::TooMany(MAX_VOLUMES + 1))
        );
        assert_eq!(check_volumes(&many[..MAX_VOLUMES]), Ok(()));
    }
}
