//! Follows a checkpoint archive (an uncompressed tar, which is what podman's API exports) as it
//! streams through the agent, without buffering it.
//!
//! Why: the archive is tens to hundreds of MiB and goes straight from podman's response into a
//! file, a Zenoh transfer or another host's restore request. On the way we need three small
//! things from it: CRIU's `stats-dump` (the dump statistics are only inside the archive when it is
//! exported), `config.dump` (the container's ID and name, so a failed restore can be cleaned
//! up), and proof that the archive is complete (tar's end-of-archive marker), so a cut-off
//! archive is caught by us and never handed to podman. [`TarScanner`] keeps copies of the named
//! members only and otherwise just counts bytes.

/// Size of a tar block.
const BLOCK: usize = 512;

/// A member whose contents the scanner kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Member {
    pub name: String,
    pub data: Vec<u8>,
}

#[derive(Debug)]
enum State {
    /// Collecting a 512-byte header block.
    Header,
    /// Inside a member's data (plus padding to the block size).
    Data {
        /// Data bytes still to come.
        left: u64,
        /// Padding bytes after the data.
        pad: u64,
        /// What to do with the data.
        keep: Keep,
    },
    /// Two zero blocks seen: anything after is padding.
    End,
}

#[derive(Debug)]
enum Keep {
    Skip,
    /// A member we were asked for.
    Member(String, Vec<u8>),
    /// A GNU long name ('L') for the next member.
    LongName(Vec<u8>),
    /// A PAX extended header ('x') for the next member.
    Pax(Vec<u8>),
}

/// Metadata a GNU long-name or PAX header sets for the member that follows it.
#[derive(Debug, Default)]
struct Pending {
    name: Option<String>,
    size: Option<u64>,
}

/// Streaming tar reader that keeps only the members it is asked for.
#[derive(Debug)]
pub(crate) struct TarScanner {
    wanted: fn(&str) -> bool,
    /// Largest member we copy; a bigger one of a wanted name is skipped (and not returned).
    max_member: u64,
    state: State,
    header: Vec<u8>,
    zero_blocks: u8,
    pending: Pending,
    offset: u64,
}

/// Headers of GNU long names and PAX records are small; anything bigger is not a podman archive.
const MAX_META: u64 = 64 * 1024;

impl TarScanner {
    /// Keeps the regular files whose name (without a leading `./`) `wanted` accepts.
    pub(crate) fn new(wanted: fn(&str) -> bool, max_member: u64) -> Self {
        TarScanner {
            wanted,
            max_member,
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            zero_blocks: 0,
            pending: Pending::default(),
            offset: 0,
        }
    }

    /// Bytes consumed so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The end-of-archive marker has been seen.
    pub(crate) fn is_complete(&self) -> bool {
        matches!(self.state, State::End)
    }

    /// Consume the next piece of the stream; returns the wanted members completed by it.
    /// An error means the bytes are not a (plain) tar archive; the scanner stays in error.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<Vec<Member>, String> {
        let mut done = Vec::new();
        while !data.is_empty() {
            match &mut self.state {
                State::End => {
                    self.offset += data.len() as u64;
                    return Ok(done);
                }
                State::Header => {
                    let n = (BLOCK - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.offset += n as u64;
                    if self.header.len() == BLOCK {
                        let block = std::mem::replace(&mut self.header, Vec::with_capacity(BLOCK));
                        self.state = self.parse_header(&block)?;
                        if let State::Data {
                            left: 0,
                            pad: 0,
                            keep,
                        } = &mut self.state
                        {
                            let keep = std::mem::replace(keep, Keep::Skip);
                            self.state = State::Header;
                            self.finish_member(keep, &mut done)?;
                        }
                    }
                }
                State::Data { left, pad, keep } => {
                    if *left > 0 {
                        let n = usize::try_from(*left).map_or(data.len(), |l| l.min(data.len()));
                        match keep {
                            Keep::Skip => {}
                            Keep::Member(_, buf) | Keep::LongName(buf) | Keep::Pax(buf) => {
                                buf.extend_from_slice(&data[..n])
                            }
                        }
                        *left -= n as u64;
                        data = &data[n..];
                        self.offset += n as u64;
                    } else {
                        let n = usize::try_from(*pad).map_or(data.len(), |p| p.min(data.len()));
                        *pad -= n as u64;
                        data = &data[n..];
                        self.offset += n as u64;
                    }
                    if *left == 0 && *pad == 0 {
                        let keep = std::mem::replace(keep, Keep::Skip);
                        self.state = State::Header;
                        self.finish_member(keep, &mut done)?;
                    }
                }
            }
        }
        Ok(done)
    }

    fn finish_member(&mut self, keep: Keep, done: &mut Vec<Member>) -> Result<(), String> {
        match keep {
            Keep::Skip => {}
            Keep::Member(name, data) => done.push(Member { name, data }),
            Keep::LongName(buf) => {
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                self.pending.name = Some(String::from_utf8_lossy(&buf[..end]).into_owned());
            }
            Keep::Pax(buf) => self.apply_pax(&buf)?,
        }
        Ok(())
    }

    /// PAX records are `"<len> <key>=<value>\n"`; only `path` and `size` matter to us.
    fn apply_pax(&mut self, buf: &[u8]) -> Result<(), String> {
        let mut rest = buf;
        while !rest.is_empty() {
            let sp = rest
                .iter()
                .position(|&b| b == b' ')
                .ok_or("PAX record without length")?;
            let len: usize = std::str::from_utf8(&rest[..sp])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("PAX record length is not a number")?;
            if len <= sp + 1 || len > rest.len() {
                return Err(format!("PAX record length {len} out of range"));
            }
            let record = &rest[sp + 1..len];
            let record = record.strip_suffix(b"\n").unwrap_or(record);
            if let Some(eq) = record.iter().position(|&b| b == b'=') {
                let (key, value) = (&record[..eq], &record[eq + 1..]);
                match key {
                    b"path" => {
                        self.pending.name = Some(String::from_utf8_lossy(value).into_owned())
                    }
                    b"size" => {
                        let size = std::str::from_utf8(value)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or("PAX size is not a number")?;
                        self.pending.size = Some(size);
                    }
                    _ => {}
                }
            }
            rest = &rest[len..];
        }
        Ok(())
    }

    fn parse_header(&mut self, h: &[u8]) -> Result<State, String> {
        let at = self.offset - BLOCK as u64;
        if h.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            return Ok(if self.zero_blocks == 2 {
                State::End
            } else {
                State::Header
            });
        }
        if self.zero_blocks > 0 {
            return Err(format!("a lone zero block before offset {at}"));
        }
        verify_checksum(h).map_err(|e| format!("tar header at offset {at}: {e}"))?;
        let pending = std::mem::take(&mut self.pending);
        let size = match pending.size {
            Some(s) => s,
            None => parse_number(&h[124..136])
                .map_err(|e| format!("tar header at offset {at}: size {e}"))?,
        };
        let kind = h[156];
        let keep = match kind {
            b'L' | b'x' if size > MAX_META => {
                return Err(format!(
                    "tar header at offset {at}: {size}-byte metadata member"
                ));
            }
            b'L' => Keep::LongName(Vec::with_capacity(capacity(size))),
            b'x' => Keep::Pax(Vec::with_capacity(capacity(size))),
            // Regular files ('0', or NUL in old archives) are the only ones with a name we want.
            b'0' | 0 => {
                let name = pending.name.unwrap_or_else(|| header_name(h));
                let name = name.strip_prefix("./").unwrap_or(&name).to_string();
                if (self.wanted)(&name) && size <= self.max_member {
                    Keep::Member(name, Vec::with_capacity(capacity(size)))
                } else {
                    Keep::Skip
                }
            }
            _ => Keep::Skip,
        };
        // Links, directories and devices carry a size field but no data blocks.
        let data = match kind {
            b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => 0,
            _ => size,
        };
        let pad = (BLOCK as u64 - data % BLOCK as u64) % BLOCK as u64;
        Ok(State::Data {
            left: data,
            pad,
            keep,
        })
    }
}

/// The member name of a ustar (prefix + name) or old-style header.
fn header_name(h: &[u8]) -> String {
    let field = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    let name = field(&h[0..100]);
    if &h[257..262] == b"ustar" {
        let prefix = field(&h[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

/// Tar numbers: NUL/space-terminated octal, or big-endian base-256 when the top bit is set.
fn parse_number(f: &[u8]) -> Result<u64, String> {
    if f[0] & 0x80 != 0 {
        // Base-256: the remaining 7 bits of the first byte, then the other bytes, big-endian.
        let mut v = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            if v >> 56 != 0 {
                return Err("in base-256 does not fit 64 bits".into());
            }
            v = (v << 8) | u64::from(b);
        }
        return Ok(v);
    }
    let s: Vec<u8> = f.iter().copied().filter(|&b| b != 0 && b != b' ').collect();
    if s.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&s).map_err(|_| "is not text".to_string())?;
    u64::from_str_radix(s, 8).map_err(|_| format!("`{s}` is not octal"))
}

/// The header checksum: the sum of all bytes with the checksum field read as spaces.
fn verify_checksum(h: &[u8]) -> Result<(), String> {
    const NOT_TAR: &str = "not a tar archive (compressed, or corrupt)";
    let stored = parse_number(&h[148..156]).map_err(|e| format!("checksum {e}: {NOT_TAR}"))?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    if stored == sum {
        Ok(())
    } else {
        Err(format!("checksum {stored} != {sum}: {NOT_TAR}"))
    }
}

/// A buffer's initial capacity for a member of `size` bytes (bounded by the caller's limits);
/// a size beyond the address space starts empty and grows.
fn capacity(size: u64) -> usize {
    usize::try_from(size).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar header for a regular file (or `kind`) of `size` bytes.
    fn header(name: &str, size: u64, kind: u8) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn member(out: &mut Vec<u8>, name: &str, data: &[u8], kind: u8) {
        out.extend(header(name, data.len() as u64, kind));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }

    fn archive() -> Vec<u8> {
        let mut a = Vec::new();
        member(&mut a, "artifacts/", b"", b'5');
        member(&mut a, "config.dump", br#"{"id":"abc","name":"svc"}"#, b'0');
        member(&mut a, "checkpoint/pages-1.img", &vec![7u8; 3000], b'0');
        member(&mut a, "stats-dump", b"\x01\x02\x03", b'0');
        a.extend(vec![0u8; 2 * BLOCK]);
        a
    }

    fn scan_in_pieces(data: &[u8], piece: usize) -> (TarScanner, Vec<Member>) {
        let mut s = TarScanner::new(|n| matches!(n, "config.dump" | "stats-dump"), 1024);
        let mut got = Vec::new();
        for c in data.chunks(piece) {
            got.extend(s.feed(c).unwrap());
        }
        (s, got)
    }

    #[test]
    fn keeps_wanted_members_whatever_the_chunking() {
        let a = archive();
        for piece in [1, 7, 511, 512, 513, 4096, a.len()] {
            let (s, got) = scan_in_pieces(&a, piece);
            assert!(s.is_complete(), "piece {piece}");
            assert_eq!(s.offset(), a.len() as u64);
            let names: Vec<_> = got.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, ["config.dump", "stats-dump"], "piece {piece}");
            assert_eq!(got[1].data, b"\x01\x02\x03");
        }
    }

    #[test]
    fn a_cut_archive_is_not_complete() {
        let a = archive();
        for cut in [0, 100, 512, 1024, 2000, a.len() - 2 * BLOCK, a.len() - 1] {
            let (s, _) = scan_in_pieces(&a[..cut], 100);
            assert!(!s.is_complete(), "cut at {cut}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut s = TarScanner::new(|n| n == "stats-dump", 1024);
        let e = s.feed(&[0x28, 0xb5, 0x2f, 0xfd].repeat(200)).unwrap_err();
        assert!(e.contains("not a tar archive"), "{e}");
        let mut bad = archive();
        bad[512 + 130] ^= 0x01; // flip a bit in the second header's size field
        let mut s = TarScanner::new(|n| n == "stats-dump", 1024);
        assert!(s.feed(&bad).is_err());
    }

    #[test]
    fn oversized_wanted_members_are_skipped() {
        let mut a = Vec::new();
        member(&mut a, "config.dump", &vec![b'x'; 2000], b'0');
        a.extend(vec![0u8; 2 * BLOCK]);
        let (s, got) = scan_in_pieces(&a, 300);
        assert!(s.is_complete());
        assert!(got.is_empty());
    }

    #[test]
    fn long_names_and_pax_headers_are_followed() {
        let mut a = Vec::new();
        let long = format!("{}/x", "d".repeat(120));
        member(
            &mut a,
            "././@LongLink",
            format!("{long}\0").as_bytes(),
            b'L',
        );
        member(&mut a, "truncated-name", b"abc", b'0');
        member(
            &mut a,
            "PaxHeaders/stats",
            b"19 path=stats-dump\n10 size=2\n",
            b'x',
        );
        // The ustar size field says 5, the PAX record says 2: PAX wins.
        a.extend(header("whatever", 5, b'0'));
        a.extend_from_slice(b"hi");
        a.resize(a.len().div_ceil(BLOCK) * BLOCK, 0);
        a.extend(vec![0u8; 2 * BLOCK]);
        let mut s = TarScanner::new(|n| n == "stats-dump", 1024);
        let got = s.feed(&a).unwrap();
        assert!(s.is_complete());
        assert_eq!(
            got,
            [Member {
                name: "stats-dump".into(),
                data: b"hi".to_vec()
            }]
        );
    }

    #[test]
    fn numbers_parse_in_both_encodings() {
        assert_eq!(parse_number(b"00000001750\0"), Ok(0o1750));
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[4..].copy_from_slice(&(9u64 << 33).to_be_bytes());
        assert_eq!(parse_number(&b256), Ok(9u64 << 33));
        assert!(parse_number(b"0000000z750\0").is_err());
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 1, 2]), Ok(258)); // short fields too
        assert!(parse_number(&[0xff; 12]).is_err());
    }
}
