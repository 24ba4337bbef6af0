//! The TCP connections inside a checkpoint archive, as far as a restore's clients need them:
//! for each established socket CRIU dumped, `inq_seq` — the socket's `rcv_nxt`, which is the
//! client's first unacknowledged byte when the freeze swallowed its request. CRIU writes one
//! `checkpoint/tcp-stream-<inode>.img` per connection: the per-process image magics, a u32
//! length, a protobuf `tcp_stream_entry` (criu/images/tcp-stream.proto), then the queued data.

use std::io::Read;
use std::path::Path;

use super::archive::TarScanner;
use super::criu_stats::{fields, first_entry, Value};

/// `IMG_COMMON_MAGIC`: per-process CRIU images start with it.
const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// `TCP_STREAM_MAGIC`.
const TCP_STREAM_MAGIC: u32 = 0x5146_5506;
/// The entry is ~40 bytes; the queued data that follows it is not needed, but a member is kept
/// whole or not at all, so allow for socket buffers of a few MiB.
const MAX_TCP_STREAM_IMAGE: u64 = 16 << 20;

fn is_tcp_stream(name: &str) -> bool {
    name.rsplit('/')
        .next()
        .is_some_and(|base| base.starts_with("tcp-stream-") && base.ends_with(".img"))
}

/// `inq_seq` of every TCP stream image in the podman checkpoint archive at `path`.
pub fn tcp_receive_seqs(path: &Path) -> Result<Vec<u32>, String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| format!("open the checkpoint {}: {e}", path.display()))?;
    let mut scan = TarScanner::new(is_tcp_stream, MAX_TCP_STREAM_IMAGE);
    let mut buf = vec![0u8; 256 * 1024];
    let mut seqs = Vec::new();
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read the checkpoint {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        for member in scan.feed(&buf[..n])? {
            seqs.push(
                parse_tcp_stream(&member.data)
                    .map_err(|e| format!("{} in {}: {e}", member.name, path.display()))?,
            );
        }
    }
    Ok(seqs)
}

/// `inq_seq` (field 2) of a `tcp-stream-*.img` file.
fn parse_tcp_stream(file: &[u8]) -> Result<u32, String> {
    let entry = first_entry(
        file,
        [IMG_COMMON_MAGIC, TCP_STREAM_MAGIC],
        "tcp-stream image",
    )?;
    fields(entry)?
        .into_iter()
        .find_map(|(n, v)| match (n, v) {
            (2, Value::Varint(x)) => u32::try_from(x).ok(),
            _ => None,
        })
        .ok_or_else(|| "tcp_stream_entry has no inq_seq".to_string())
}

#[cfg(test)]
// Test fixtures: small lengths and byte patterns.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn image(entry: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(IMG_COMMON_MAGIC.to_le_bytes());
        v.extend(TCP_STREAM_MAGIC.to_le_bytes());
        v.extend((entry.len() as u32).to_le_bytes());
        v.extend(entry);
        v.extend(b"queued data");
        v
    }

    #[test]
    fn inq_seq_is_read_and_bad_images_are_errors() {
        // inq_len = 0, inq_seq = 0xdeadbeef, outq_len = 5
        let entry = [0x08, 0x00, 0x10, 0xef, 0xfd, 0xb6, 0xf5, 0x0d, 0x18, 0x05];
        assert_eq!(parse_tcp_stream(&image(&entry)), Ok(0xdead_beef));
        assert!(parse_tcp_stream(&image(&[0x08, 0x00]))
            .unwrap_err()
            .contains("no inq_seq"));
        assert!(parse_tcp_stream(b"short").is_err());
        let mut wrong = image(&entry);
        wrong[4] ^= 1;
        assert!(parse_tcp_stream(&wrong).unwrap_err().contains("not a CRIU"));
        let mut cut = image(&entry);
        cut.truncate(15);
        assert!(parse_tcp_stream(&cut).unwrap_err().contains("runs past"));
    }

    #[test]
    fn only_tcp_stream_images_are_wanted() {
        assert!(is_tcp_stream("checkpoint/tcp-stream-1a2b.img"));
        assert!(!is_tcp_stream("checkpoint/pages-1.img"));
        assert!(!is_tcp_stream("stats-dump"));
    }
}
