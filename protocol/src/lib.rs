//! MOSE-RS wire protocol.
//!
//! * [`keys`]: the Zenoh key-expression scheme (one configurable prefix, docs/protocol.md).
//! * [`messages`]: profiles, metrics, tasks and phase events; [`steps`]: the typed step
//!   contract between orchestrator and agents; [`model`]: the PAM data types; [`units`]: rates; [`volumes`]: a service's named volumes.
//! * [`domain`]: the members of a secured domain and their certificate names; [`acl`]: the
//!   access control every node derives from the domain's roster.
//! * [`codec`]: the versioned binary envelope (postcard inside) with typed errors.
//! * [`blob`]: chunked, digest-checked transfer of large files (checkpoint images) over Zenoh.
//! * `cli` (feature `cli`): command-line pieces shared by the MOSE binaries.
//! * [`transport`]: how a MOSE node opens its Zenoh session (peer mode, scouting, lease).
//!
//! `blob` and `transport` are the only modules that use Zenoh; they sit behind the default
//! feature `zenoh`. With `default-features = false` the crate is plain serde data and its codec
//! (what the HTTP API crate `mose-api` and the `mose` CLI build on, without linking Zenoh).
//!
//! This crate defines *what* is said and *how it is encoded*; when and why to say it is the
//! agent's and the orchestrator's business.

#[cfg(feature = "zenoh")]
pub mod acl;
#[cfg(feature = "zenoh")]
pub mod blob;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod domain;
pub mod keys;
pub mod messages;
pub mod model;
pub mod steps;
#[cfg(feature = "zenoh")]
pub mod transport;
pub mod units;
pub mod volumes;

pub use codec::{decode, encode, CodecError, Message, PROTOCOL_VERSION};
pub use keys::{KeyError, KeySpace};

#[cfg(test)]
mod test_support {
    use serde::de::value::{Error as ValueError, StrDeserializer};
    use serde::de::{Deserialize, IntoDeserializer};

    /// Deserialises a unit variant from its serde name, as a JSON string would.
    pub(crate) fn from_name<T: Deserialize<'static>>(name: &'static str) -> Result<T, ValueError> {
        let de: StrDeserializer<'static, ValueError> = name.into_deserializer();
        T::deserialize(de)
    }
}
