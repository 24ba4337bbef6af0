//! CRIU's checkpoint/restore statistics as typed values (times in µs, counts in pages).
//!
//! They come from two places: a restore with `printStats` returns them as JSON in podman's
//! report (`criu_statistics`); a checkpoint with `export` returns only the archive, so the dump
//! statistics are read from CRIU's own `stats-dump` file inside it. That file is a CRIU "service
//! image": two little-endian magics, a u32 length, then a protobuf `stats_entry`
//! (criu/images/stats.proto). It is decoded here by hand: the message is flat, and a protobuf
//! toolchain for six integers is not worth its build cost.

use std::time::Duration;

use mose_protocol::messages::CriuStats;
use serde::{Deserialize, Serialize};

/// `IMG_SERVICE_MAGIC`: CRIU images that are not per-process start with it.
const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// `STATS_MAGIC`.
const STATS_MAGIC: u32 = 0x5709_3306;

/// What CRIU measured while dumping (`dump_stats_entry`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuDumpStats {
    /// Time to freeze the process tree.
    pub freezing_time_us: u64,
    /// Time the processes were frozen (the part of the dump the service feels).
    pub frozen_time_us: u64,
    /// Time to collect the memory pages.
    pub memdump_time_us: u64,
    /// Time to write the pages to the image.
    pub memwrite_time_us: u64,
    /// Pages CRIU looked at.
    pub pages_scanned: u64,
    /// Pages not written because a previous (pre-)dump holds them unchanged.
    pub pages_skipped_parent: u64,
    /// Pages written to this image.
    pub pages_written: u64,
    /// Pages left for lazy (post-copy) transfer.
    pub pages_lazy: u64,
}

/// What CRIU measured while restoring (`restore_stats_entry`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CriuRestoreStats {
    /// Pages compared against the parent image.
    pub pages_compared: u64,
    /// Pages shared copy-on-write instead of restored.
    pub pages_skipped_cow: u64,
    /// Time to fork the process tree.
    pub forking_time_us: u64,
    /// Time of the whole CRIU restore.
    pub restore_time_us: u64,
    /// Pages restored.
    pub pages_restored: u64,
}

impl CriuDumpStats {
    /// How long the process tree stayed frozen.
    pub fn frozen_time(&self) -> Duration {
        Duration::from_micros(self.frozen_time_us)
    }
}

impl CriuRestoreStats {
    /// CRIU's whole restore time.
    pub fn restore_time(&self) -> Duration {
        Duration::from_micros(self.restore_time_us)
    }
}

impl From<&CriuDumpStats> for CriuStats {
    fn from(s: &CriuDumpStats) -> CriuStats {
        CriuStats {
            freezing_time_us: Some(s.freezing_time_us),
            frozen_time_us: Some(s.frozen_time_us),
            memdump_time_us: Some(s.memdump_time_us),
            memwrite_time_us: Some(s.memwrite_time_us),
            pages_written: Some(s.pages_written),
            restore_time_us: None,
        }
    }
}

impl From<&CriuRestoreStats> for CriuStats {
    fn from(s: &CriuRestoreStats) -> CriuStats {
        CriuStats {
            restore_time_us: Some(s.restore_time_us),
            ..CriuStats::default()
        }
    }
}

/// Podman's `criu_statistics` object (libpod `define.CRIUCheckpointRestoreStatistics`); every
/// field is `omitempty` there, so every field defaults to 0 here.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct PodmanCriuStatistics {
    pages_compared: u64,
    pages_skipped_cow: u64,
    forking_time: u64,
    restore_time: u64,
    pages_restored: u64,
}

impl From<PodmanCriuStatistics> for CriuRestoreStats {
    fn from(p: PodmanCriuStatistics) -> Self {
        CriuRestoreStats {
            pages_compared: p.pages_compared,
            pages_skipped_cow: p.pages_skipped_cow,
            forking_time_us: p.forking_time,
            restore_time_us: p.restore_time,
            pages_restored: p.pages_restored,
        }
    }
}

/// The first entry of a CRIU image: two little-endian magics (`magics`), a u32 length, the
/// protobuf message. `what` names the image in errors.
pub(super) fn first_entry<'a>(
    file: &'a [u8],
    magics: [u32; 2],
    what: &str,
) -> Result<&'a [u8], String> {
    let word = |at: usize| -> Result<u32, String> {
        file.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("{what} is {} bytes, too short for its header", file.len()))
    };
    if [word(0)?, word(4)?] != magics {
        return Err(format!(
            "not a CRIU {what} (magics {:#x} {:#x})",
            word(0)?,
            word(4)?
        ));
    }
    let len = word(8)? as usize;
    file.get(12..12 + len).ok_or_else(|| {
        format!(
            "{what} entry of {len} bytes runs past the {}-byte file",
            file.len()
        )
    })
}

/// Decode a `stats-dump` file. Errors say what is wrong; nothing here panics on bad input.
pub fn parse_stats_dump(file: &[u8]) -> Result<CriuDumpStats, String> {
    let payload = first_entry(file, [IMG_SERVICE_MAGIC, STATS_MAGIC], "stats image")?;
    // stats_entry { optional dump_stats_entry dump = 1; optional restore_stats_entry restore = 2; }
    let dump = fields(payload)?
        .into_iter()
        .find_map(|(n, v)| match (n, v) {
            (1, Value::Bytes(b)) => Some(b),
            _ => None,
        })
        .ok_or("stats image has no dump entry")?;
    let mut s = CriuDumpStats::default();
    for (n, v) in fields(dump)? {
        let Value::Varint(x) = v else { continue };
        match n {
            1 => s.freezing_time_us = x,
            2 => s.frozen_time_us = x,
            3 => s.memdump_time_us = x,
            4 => s.memwrite_time_us = x,
            5 => s.pages_scanned = x,
            6 => s.pages_skipped_parent = x,
            7 => s.pages_written = x,
            9 => s.pages_lazy = x,
            _ => {} // irmap_resolve, page pipes, shared-memory counters: unused
        }
    }
    Ok(s)
}

pub(super) enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// The top-level fields of a protobuf message (wire types 0, 1, 2 and 5).
pub(super) fn fields(mut msg: &[u8]) -> Result<Vec<(u64, Value<'_>)>, String> {
    let mut out = Vec::new();
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        let (number, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Value::Varint(varint(&mut msg)?),
            2 => {
                let len = usize::try_from(varint(&mut msg)?).map_err(|_| "length overflows")?;
                let b = msg
                    .get(..len)
                    .ok_or("length-delimited field runs past the message")?;
                msg = &msg[len..];
                Value::Bytes(b)
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let b = msg
                    .get(..n)
                    .ok_or("fixed-size field runs past the message")?;
                msg = &msg[n..];
                Value::Bytes(b)
            }
            w => {
                return Err(format!(
                    "unsupported protobuf wire type {w} (field {number})"
                ))
            }
        };
        out.push((number, value));
    }
    Ok(out)
}

fn varint(msg: &mut &[u8]) -> Result<u64, String> {
    let mut x = 0u64;
    for (i, &b) in msg.iter().enumerate().take(10) {
        x |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *msg = &msg[i + 1..];
            return Ok(x);
        }
    }
    Err("truncated or overlong varint".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stats-dump` of a busybox shell loop checkpointed by podman 4.3.1 + CRIU 4.2.1 here.
    const RECORDED: &[u8] = &[
        0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x24, 0x00, 0x00, 0x00, 0x0a, 0x22, 0x08,
        0x8b, 0xc2, 0x06, 0x10, 0xe0, 0xb9, 0x07, 0x18, 0xf4, 0x1b, 0x20, 0xa5, 0x01, 0x28, 0x30,
        0x30, 0x00, 0x38, 0x22, 0x40, 0x00, 0x48, 0x00, 0x50, 0x08, 0x58, 0x08, 0x60, 0x00, 0x68,
        0x00, 0x70, 0x00,
    ];

    #[test]
    fn recorded_stats_dump_decodes() {
        let s = parse_stats_dump(RECORDED).unwrap();
        assert_eq!(
            s,
            CriuDumpStats {
                freezing_time_us: 106_763,
                frozen_time_us: 122_080,
                memdump_time_us: 3572,
                memwrite_time_us: 165,
                pages_scanned: 48,
                pages_skipped_parent: 0,
                pages_written: 34,
                pages_lazy: 0,
            }
        );
        assert_eq!(s.frozen_time(), Duration::from_micros(122_080));
        let p = CriuStats::from(&s);
        assert_eq!(
            (p.frozen_time_us, p.pages_written, p.restore_time_us),
            (Some(122_080), Some(34), None)
        );
    }

    #[test]
    fn damaged_files_are_errors() {
        assert!(parse_stats_dump(&[]).unwrap_err().contains("too short"));
        assert!(parse_stats_dump(&RECORDED[..20])
            .unwrap_err()
            .contains("runs past"));
        let mut wrong_magic = RECORDED.to_vec();
        wrong_magic[4] = 0;
        assert!(parse_stats_dump(&wrong_magic)
            .unwrap_err()
            .contains("not a CRIU stats image"));
        let mut cut_varint = RECORDED[..12].to_vec();
        cut_varint[8] = 3;
        cut_varint.extend([0x08, 0xff, 0xff]);
        assert!(parse_stats_dump(&cut_varint)
            .unwrap_err()
            .contains("varint"));
        // A restore-only entry (field 2) has no dump statistics.
        let restore_only = [&RECORDED[..8], &[4, 0, 0, 0, 0x12, 0x02, 0x08, 0x01]].concat();
        assert!(parse_stats_dump(&restore_only)
            .unwrap_err()
            .contains("no dump entry"));
    }

    #[test]
    fn podman_restore_statistics_map_to_typed_values() {
        // podman 4.3.1's restore report, as recorded here.
        let json = r#"{"pages_compared":17,"pages_skipped_cow":16,"forking_time":396,"restore_time":234935,"pages_restored":18}"#;
        let p: PodmanCriuStatistics = serde_json::from_str(json).unwrap();
        let s = CriuRestoreStats::from(p);
        assert_eq!(s.restore_time(), Duration::from_micros(234_935));
        assert_eq!((s.pages_restored, s.forking_time_us), (18, 396));
        // omitempty: missing fields are zero, not an error.
        let s = CriuRestoreStats::from(serde_json::from_str::<PodmanCriuStatistics>("{}").unwrap());
        assert_eq!(s, CriuRestoreStats::default());
    }
}
