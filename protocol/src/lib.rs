//! MOSE-RS wire protocol.
//!
//! * [`keys`]: the Zenoh key-expression scheme (one configurable prefix, SPEC §3).
//! * [`messages`]: every message that crosses the wire, plus [`model`] for the PAM data types.
//! * [`codec`]: the versioned binary envelope (postcard inside) with typed errors.
//! * [`blob`]: chunked, digest-checked transfer of large files (checkpoint images) over Zenoh.
//! * `cli` (feature `cli`): command-line pieces shared by the MOSE binaries.
//! * [`transport`]: how a MOSE node opens its Zenoh session (peer mode, scouting, lease).
//!
//! This crate defines *what* is said and *how it is encoded*; when and why to say it is the
//! agent's and the orchestrator's business.

pub mod blob;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod keys;
pub mod messages;
pub mod model;
pub mod transport;

pub use codec::{decode, encode, CodecError, Message, PROTOCOL_VERSION};
pub use keys::{KeyError, KeySpace};
