//! The versioned binary envelope every MOSE message travels in.
//!
//! Layout: `b"MO"` magic, protocol version (u16, little endian), message kind (u8), then the
//! message body in postcard. The kind byte means a profile can never be decoded as a task by
//! accident, and the version is checked before the body is touched, so a peer speaking another
//! protocol version gets a precise error instead of a confusing deserialisation failure.

use serde::{de::DeserializeOwned, Serialize};
use thiserror::Error;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 7;

const MAGIC: [u8; 2] = *b"MO";
const HEADER_LEN: usize = 5;

/// The kind byte of each message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    /// An agent's [`AgentProfile`](crate::messages::AgentProfile).
    AgentProfile = 1,
    /// A periodic [`MetricsSample`](crate::messages::MetricsSample).
    MetricsSample = 2,
    /// A migration [`Task`](crate::messages::Task).
    Task = 3,
    /// A [`StepRequest`](crate::steps::StepRequest) to an agent.
    StepRequest = 4,
    /// An agent's [`StepReply`](crate::steps::StepReply).
    StepReply = 5,
    /// A [`PhaseEvent`](crate::messages::PhaseEvent) of a task.
    PhaseEvent = 6,
    /// A [`BlobManifest`](crate::blob::BlobManifest) of a chunked transfer.
    BlobManifest = 7,
}

impl MessageKind {
    /// The kind's name in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::AgentProfile => "AgentProfile",
            Self::MetricsSample => "MetricsSample",
            Self::Task => "Task",
            Self::StepRequest => "StepRequest",
            Self::StepReply => "StepReply",
            Self::PhaseEvent => "PhaseEvent",
            Self::BlobManifest => "BlobManifest",
        }
    }
}

/// A type that travels in the envelope.
pub trait Message: Serialize + DeserializeOwned {
    /// The kind byte written into the envelope header.
    const KIND: MessageKind;
}

/// Why bytes could not be decoded.
#[derive(Debug, Error)]
pub enum CodecError {
    /// Fewer bytes than the header needs.
    #[error("message truncated: {got} bytes, the header alone needs {HEADER_LEN}")]
    Truncated {
        /// How many bytes arrived.
        got: usize,
    },
    /// The first two bytes are not MOSE's magic.
    #[error("not a MOSE message: bad magic {found:02x?}")]
    BadMagic {
        /// The two bytes found.
        found: [u8; 2],
    },
    /// The sender speaks another wire version.
    #[error("unsupported protocol version {got}, this node speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion {
        /// The sender's wire version.
        got: u16,
    },
    /// The header names another message type than the one expected.
    #[error("expected a {expected} message, got kind byte {got}")]
    WrongKind {
        /// The type the receiver expected.
        expected: &'static str,
        /// The kind byte found.
        got: u8,
    },
    /// The body does not decode as the expected type.
    #[error("malformed {kind} body: {source}")]
    Malformed {
        /// The expected message type.
        kind: &'static str,
        /// postcard's decoding error.
        #[source]
        source: postcard::Error,
    },
    /// The body decoded but bytes were left over.
    #[error("{count} unexpected trailing bytes after a {kind} body")]
    TrailingBytes {
        /// The message type.
        kind: &'static str,
        /// How many bytes were left.
        count: usize,
    },
    /// The value could not be serialized.
    #[error("cannot encode {kind}: {source}")]
    Encode {
        /// The message type.
        kind: &'static str,
        /// postcard's encoding error.
        #[source]
        source: postcard::Error,
    },
}

/// Encodes `msg` in the envelope.
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.push(M::KIND as u8);
    postcard::to_io(msg, &mut out).map_err(|source| CodecError::Encode {
        kind: M::KIND.name(),
        source,
    })?;
    Ok(out)
}

/// Decodes an `M` from `bytes`, checking magic, version, kind and that nothing trails the body.
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, CodecError> {
    if bytes.len() < HEADER_LEN {
        return Err(CodecError::Truncated { got: bytes.len() });
    }
    let magic = [bytes[0], bytes[1]];
    if magic != MAGIC {
        return Err(CodecError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([bytes[2], bytes[3]]);
    if version != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion { got: version });
    }
    if bytes[4] != M::KIND as u8 {
        return Err(CodecError::WrongKind {
            expected: M::KIND.name(),
            got: bytes[4],
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<M>(&bytes[HEADER_LEN..]).map_err(|source| {
        CodecError::Malformed {
            kind: M::KIND.name(),
            source,
        }
    })?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes {
            kind: M::KIND.name(),
            count: rest.len(),
        });
    }
    Ok(msg)
}
