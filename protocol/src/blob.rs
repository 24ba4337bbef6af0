//! Chunked, digest-checked transfer of large files (checkpoint images) over Zenoh.
//!
//! The owner serves a file under a key `K`: `K/manifest` answers the [`BlobManifest`] (size,
//! chunk size, chunk count, SHA-256) and `K/chunk/{i}` answers chunk `i`, read from disk on
//! demand, so serving costs no more memory than the chunks in flight. Measured on Zenoh 1.10 one
//! big reply fails on slow links and costs 3× its size in RSS, hence the chunks.
//!
//! The fetcher keeps several gets in flight, retries a chunk that times out, is missing or has the
//! wrong length, writes chunks to its sink strictly in order (so the sink can be a pipe into a
//! restore) and hashes them on the way. Memory stays bounded by the window: a chunk is only
//! requested when it is within `in_flight` chunks of the next one to write. A digest mismatch is an
//! error; [`fetch_to_file`] then removes the partial file, so a wrong image never lands on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use zenoh::query::{ConsolidationMode, Query};
use zenoh::Session;

use crate::codec::{self, CodecError, Message, MessageKind};
use crate::transport::QueryService;

/// Default chunk size: 1 MiB (the measured sweet spot for Zenoh replies: docs/protocol.md,
/// "Zenoh pitfalls").
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Largest chunk a fetcher accepts from a manifest, so a hostile manifest cannot make it allocate
/// without bound.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;

/// What a fetcher learns first: how big the blob is and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobManifest {
    /// Total length of the blob in bytes.
    pub size: u64,
    /// Length of every chunk but the last, in bytes.
    pub chunk_size: u32,
    /// Number of chunks, the last one possibly short.
    pub chunks: u64,
    /// SHA-256 of the whole blob, checked by the fetcher after the last chunk.
    pub sha256: [u8; 32],
}

impl Message for BlobManifest {
    const KIND: MessageKind = MessageKind::BlobManifest;
}

impl BlobManifest {
    /// Length of chunk `index`.
    pub fn chunk_len(&self, index: u64) -> u64 {
        let start = index * u64::from(self.chunk_size);
        (self.size - start).min(u64::from(self.chunk_size))
    }

    /// The digest as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    fn check(&self) -> Result<(), String> {
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return Err(format!(
                "chunk size {} is outside 1..={MAX_CHUNK_SIZE}",
                self.chunk_size
            ));
        }
        let expected = self.size.div_ceil(u64::from(self.chunk_size));
        if self.chunks != expected {
            return Err(format!(
                "{} chunks announced, {expected} needed for {} bytes",
                self.chunks, self.size
            ));
        }
        Ok(())
    }
}

/// Everything that can go wrong serving or fetching a blob.
#[derive(Debug, Error)]
pub enum BlobError {
    /// The key is not a valid blob key.
    #[error("'{key}' is not a usable blob key: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Zenoh refused to declare the blob's queryable.
    #[error("zenoh refused to serve '{key}': {reason}")]
    Serve {
        /// The blob's key.
        key: String,
        /// Zenoh's message.
        reason: String,
    },
    /// No server answered the manifest query.
    #[error("no manifest for blob '{key}' after {attempts} attempts: {last}")]
    ManifestUnavailable {
        /// The blob's key.
        key: String,
        /// How many queries were sent.
        attempts: u32,
        /// What the last attempt returned.
        last: String,
    },
    /// The manifest arrived but is inconsistent (sizes that do not add up).
    #[error("manifest of blob '{key}' is invalid: {reason}")]
    BadManifest {
        /// The blob's key.
        key: String,
        /// What does not add up.
        reason: String,
    },
    /// A chunk stayed unavailable through every retry.
    #[error("chunk {index} of blob '{key}' unavailable after {attempts} attempts: {last}")]
    ChunkUnavailable {
        /// The blob's key.
        key: String,
        /// The chunk's index, from 0.
        index: u64,
        /// How many queries were sent for it.
        attempts: u32,
        /// What the last attempt returned.
        last: String,
    },
    /// The reassembled blob does not hash to the manifest's digest.
    #[error("blob '{key}' is corrupt: SHA-256 {actual}, manifest says {expected}")]
    DigestMismatch {
        /// The blob's key.
        key: String,
        /// The manifest's SHA-256, hex.
        expected: String,
        /// The SHA-256 of what arrived, hex.
        actual: String,
    },
    /// The sink the chunks are written to failed.
    #[error("writing blob '{key}' to its destination failed: {source}")]
    Sink {
        /// The blob's key.
        key: String,
        /// The sink's I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest or chunk reply could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn check_key(key: &str) -> Result<(), BlobError> {
    zenoh::key_expr::KeyExpr::try_from(format!("{key}/manifest"))
        .map(|_| ())
        .map_err(|e| BlobError::InvalidKey {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
    if key.contains('*') || key.contains('$') {
        return Err(BlobError::InvalidKey {
            key: key.to_string(),
            reason: "wildcards are not allowed in a blob key".into(),
        });
    }
    Ok(())
}

/// Computes the manifest of a file by reading it once.
pub async fn manifest_of_file(path: &Path, chunk_size: u32) -> Result<BlobManifest, BlobError> {
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(BlobError::BadManifest {
            key: path.display().to_string(),
            reason: format!("chunk size {chunk_size} is outside 1..={MAX_CHUNK_SIZE}"),
        });
    }
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&owned).map_err(io_err(&owned))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io_err(&owned))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok(BlobManifest {
            size,
            chunk_size,
            chunks: size.div_ceil(u64::from(chunk_size)),
            sha256: hasher.finalize().into(),
        })
    })
    .await
    .expect("manifest hashing task panicked")
}

/// Serves one file under a key until dropped.
pub struct BlobServer {
    key: String,
    manifest: BlobManifest,
    _service: QueryService,
}

impl BlobServer {
    /// Hashes `path` and serves it under `key` in chunks of `chunk_size`.
    pub async fn serve_file(
        session: &Session,
        key: &str,
        path: &Path,
        chunk_size: u32,
    ) -> Result<Self, BlobError> {
        let manifest = manifest_of_file(path, chunk_size).await?;
        Self::serve(session, key, path, manifest).await
    }

    /// Serves `path` under `key` with a manifest computed elsewhere (e.g. while the file was
    /// written). The file must not change while served: fetchers would see a digest mismatch.
    pub async fn serve(
        session: &Session,
        key: &str,
        path: &Path,
        manifest: BlobManifest,
    ) -> Result<Self, BlobError> {
        check_key(key)?;
        manifest.check().map_err(|reason| BlobError::BadManifest {
            key: key.to_string(),
            reason,
        })?;
        let file = Arc::new(std::fs::File::open(path).map_err(io_err(path))?);
        let served = Arc::new(Served {
            key: key.to_string(),
            manifest_bytes: codec::encode(&manifest)?,
            manifest: manifest.clone(),
            file,
        });
        let service = QueryService::start(session, &format!("{key}/**"), move |query| {
            served.clone().answer(query)
        })
        .await
        .map_err(|e| BlobError::Serve {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        tracing::debug!(
            key,
            size = manifest.size,
            chunks = manifest.chunks,
            "serving blob"
        );
        Ok(Self {
            key: key.to_string(),
            manifest,
            _service: service,
        })
    }

    /// The key the blob is served under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The manifest fetchers receive.
    pub fn manifest(&self) -> &BlobManifest {
        &self.manifest
    }
}

struct Served {
    key: String,
    manifest: BlobManifest,
    manifest_bytes: Vec<u8>,
    file: Arc<std::fs::File>,
}

impl Served {
    async fn answer(self: Arc<Self>, query: Query) {
        let asked = query.key_expr().as_str().to_string();
        let result = match asked.strip_prefix(self.key.as_str()) {
            Some("/manifest") => Ok(self.manifest_bytes.clone()),
            Some(rest) => match rest
                .strip_prefix("/chunk/")
                .and_then(|i| i.parse::<u64>().ok())
            {
                Some(index) => self.read_chunk(index).await,
                None => Err(format!("no such part of blob '{}': {asked}", self.key)),
            },
            None => Err(format!("no such part of blob '{}': {asked}", self.key)),
        };
        let sent = match result {
            Ok(bytes) => query.reply(query.key_expr().clone(), bytes).await,
            Err(reason) => {
                tracing::warn!(key = %self.key, %reason, "refusing blob query");
                query.reply_err(reason).await
            }
        };
        if let Err(e) = sent {
            tracing::debug!(key = %self.key, error = %e, "blob reply not sent");
        }
    }

    async fn read_chunk(self: &Arc<Self>, index: u64) -> Result<Vec<u8>, String> {
        if index >= self.manifest.chunks {
            return Err(format!(
                "chunk {index} out of range: blob '{}' has {} chunks",
                self.key, self.manifest.chunks
            ));
        }
        // At most one chunk (a u32 size): always fits.
        let len = usize::try_from(self.manifest.chunk_len(index)).unwrap_or(usize::MAX);
        let offset = index * u64::from(self.manifest.chunk_size);
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map(|()| buf)
                .map_err(|e| format!("reading chunk {index} at offset {offset}: {e}"))
        })
        .await
        .map_err(|e| format!("chunk reader failed: {e}"))?
    }
}

/// How a fetch behaves.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Chunks requested at once (also the reorder window).
    pub in_flight: usize,
    /// Time allowed for one chunk; size it to the chunk and the link.
    pub chunk_timeout: Duration,
    /// Further attempts per chunk (and for the manifest) after the first.
    pub retries: u32,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            in_flight: 4,
            chunk_timeout: Duration::from_secs(5),
            retries: 5,
        }
    }
}

/// Progress of a fetch, reported after each chunk written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes written so far.
    pub bytes_done: u64,
    /// Size of the whole blob in bytes.
    pub bytes_total: u64,
    /// Chunks written so far.
    pub chunks_done: u64,
    /// Number of chunks in the blob.
    pub chunks_total: u64,
}

/// One get with the first reply's payload, or why there was none.
async fn get_once(session: &Session, key: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let replies = session
        .get(key)
        .consolidation(ConsolidationMode::None)
        .timeout(timeout)
        .await
        .map_err(|e| format!("get failed: {e}"))?;
    match replies.recv_async().await {
        Ok(reply) => match reply.result() {
            Ok(sample) => Ok(sample.payload().to_bytes().into_owned()),
            Err(err) => Err(format!(
                "source answered an error: {}",
                err.payload()
                    .try_to_string()
                    .unwrap_or_else(|_| "(not text)".into())
            )),
        },
        // The channel closes empty on timeout, or when no queryable matched (which also happens
        // right after a remote queryable was declared): both are worth a retry.
        Err(_) => Err(format!("no reply within {timeout:?}")),
    }
}

/// Backoff between attempts: short at first, since the common cause is a queryable not yet
/// propagated, then doubling, so a route lost for a moment mid-transfer (seen once in the
/// services test, cause not found) is waited out for about 3 s over the default retries
/// instead of failing the transfer in a few hundred milliseconds.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 << attempt.min(6))
}

/// Fetches the manifest of the blob under `key`.
pub async fn fetch_manifest(
    session: &Session,
    key: &str,
    opts: &FetchOptions,
) -> Result<BlobManifest, BlobError> {
    check_key(key)?;
    let mkey = format!("{key}/manifest");
    let mut last = String::new();
    for attempt in 0..=opts.retries {
        match get_once(session, &mkey, opts.chunk_timeout).await {
            Ok(bytes) => {
                let manifest: BlobManifest = codec::decode(&bytes)?;
                manifest.check().map_err(|reason| BlobError::BadManifest {
                    key: key.to_string(),
                    reason,
                })?;
                return Ok(manifest);
            }
            Err(e) => last = e,
        }
        if attempt < opts.retries {
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    Err(BlobError::ManifestUnavailable {
        key: key.to_string(),
        attempts: opts.retries + 1,
        last,
    })
}

async fn fetch_chunk(
    session: &Session,
    key: &str,
    manifest: &BlobManifest,
    index: u64,
    opts: &FetchOptions,
) -> Result<(u64, Vec<u8>), BlobError> {
    let ckey = format!("{key}/chunk/{index}");
    let expected = manifest.chunk_len(index);
    let mut last = String::new();
    for attempt in 0..=opts.retries {
        match get_once(session, &ckey, opts.chunk_timeout).await {
            Ok(bytes) if bytes.len() as u64 == expected => return Ok((index, bytes)),
            Ok(bytes) => last = format!("{} bytes, expected {expected}", bytes.len()),
            Err(e) => last = e,
        }
        tracing::debug!(key, index, attempt, %last, "chunk attempt failed");
        if attempt < opts.retries {
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
    Err(BlobError::ChunkUnavailable {
        key: key.to_string(),
        index,
        attempts: opts.retries + 1,
        last,
    })
}

/// Fetches the blob under `key` into `sink`, in order, verifying its SHA-256.
///
/// On error the sink holds a prefix of the blob and must be discarded.
pub async fn fetch_into<W: AsyncWrite + Unpin>(
    session: &Session,
    key: &str,
    sink: &mut W,
    opts: &FetchOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<BlobManifest, BlobError> {
    let manifest = fetch_manifest(session, key, opts).await?;
    let window = opts.in_flight.max(1) as u64;
    let sink_err = |source| BlobError::Sink {
        key: key.to_string(),
        source,
    };

    let mut hasher = Sha256::new();
    let mut pending = FuturesUnordered::new();
    let mut ready: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut next_request = 0u64;
    let mut next_write = 0u64;
    let mut bytes_done = 0u64;

    while next_write < manifest.chunks {
        while next_request < manifest.chunks && next_request < next_write + window {
            pending.push(fetch_chunk(session, key, &manifest, next_request, opts));
            next_request += 1;
        }
        let (index, bytes) = pending
            .next()
            .await
            .expect("a chunk is pending while chunks remain unwritten")?;
        ready.insert(index, bytes);
        while let Some(bytes) = ready.remove(&next_write) {
            hasher.update(&bytes);
            sink.write_all(&bytes).await.map_err(sink_err)?;
            bytes_done += bytes.len() as u64;
            next_write += 1;
            progress(Progress {
                bytes_done,
                bytes_total: manifest.size,
                chunks_done: next_write,
                chunks_total: manifest.chunks,
            });
        }
    }
    // Every chunk is written; the (empty) request set still borrows the manifest.
    drop(pending);
    sink.flush().await.map_err(sink_err)?;

    let actual: [u8; 32] = hasher.finalize().into();
    if actual != manifest.sha256 {
        return Err(BlobError::DigestMismatch {
            key: key.to_string(),
            expected: manifest.sha256_hex(),
            actual: hex::encode(actual),
        });
    }
    Ok(manifest)
}

/// Fetches the blob under `key` into the file `dest`. The file appears only once complete and
/// verified (written as `dest.partial`, then renamed); on error nothing is left behind.
pub async fn fetch_to_file(
    session: &Session,
    key: &str,
    dest: &Path,
    opts: &FetchOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<BlobManifest, BlobError> {
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = async {
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(io_err(&partial))?;
        let manifest = fetch_into(session, key, &mut file, opts, progress).await?;
        file.sync_all().await.map_err(io_err(&partial))?;
        tokio::fs::rename(&partial, dest)
            .await
            .map_err(io_err(dest))?;
        Ok(manifest)
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(size: u64, chunk_size: u32) -> BlobManifest {
        BlobManifest {
            size,
            chunk_size,
            chunks: size.div_ceil(u64::from(chunk_size)),
            sha256: [0; 32],
        }
    }

    #[test]
    fn chunk_lengths_cover_the_blob() {
        let m = manifest(10, 4);
        assert_eq!(m.chunks, 3);
        assert_eq!(
            (0..m.chunks).map(|i| m.chunk_len(i)).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        assert_eq!(manifest(0, 4).chunks, 0);
        assert_eq!(manifest(8, 4).chunk_len(1), 4);
    }

    #[test]
    fn inconsistent_manifests_are_rejected() {
        assert!(manifest(10, 4).check().is_ok());
        let mut m = manifest(10, 4);
        m.chunks = 2;
        assert!(m.check().unwrap_err().contains("3 needed"));
        m.chunk_size = 0;
        assert!(m.check().is_err());
        let m = manifest(1 << 40, MAX_CHUNK_SIZE + 1);
        assert!(m.check().is_err());
    }

    #[test]
    fn keys_with_wildcards_are_rejected() {
        assert!(check_key("mose/images/t1/ckpt").is_ok());
        assert!(check_key("mose/images/*/ckpt").is_err());
        assert!(check_key("mose//x").is_err());
        assert!(check_key("").is_err());
    }
}
