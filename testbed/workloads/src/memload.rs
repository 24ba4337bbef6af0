//! The memory workload's arithmetic: how many pages to dirty per tick, which ones, and a small
//! PRNG to fill memory with incompressible data (so image size equals state size).

/// Page size assumed for rates given in MiB/s (x86-64).
pub const PAGE: usize = 4096;

/// xorshift64*: fast, deterministic per seed, good enough to defeat compression.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (never zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Fill `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        for b in chunks.into_remainder() {
            *b = self.next_u64().to_le_bytes()[0];
        }
    }
}

/// Rate-keeping without drift: the number of pages that should have been dirtied after
/// `elapsed_s` seconds at `pages_per_s`, minus what was already done, is what to dirty now.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Target rate.
    pub pages_per_s: f64,
    /// Pages dirtied so far.
    pub done: u64,
}

impl Pacer {
    /// A pacer at `pages_per_s`, nothing done yet.
    pub fn new(pages_per_s: f64) -> Pacer {
        Pacer {
            pages_per_s: pages_per_s.max(0.0),
            done: 0,
        }
    }
    /// Pages to dirty now so the total keeps up with the rate at `elapsed_s`.
    pub fn due(&mut self, elapsed_s: f64) -> u64 {
        // Non-negative and far below u64::MAX pages; `as` saturates anyway.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let target = (self.pages_per_s * elapsed_s).floor() as u64;
        let n = target.saturating_sub(self.done);
        self.done += n;
        n
    }
}

/// Convert a rate in MiB/s to pages/s.
pub fn mib_per_s_to_pages(mib_per_s: f64) -> f64 {
    mib_per_s * (1024.0 * 1024.0) / PAGE as f64
}

/// Walks the pages in order, wrapping around: over time every page gets dirtied evenly, which is
/// the worst case for pre-copy (a random walk would re-dirty some pages and skip others).
#[derive(Debug, Clone)]
pub struct PageCursor {
    pages: usize,
    next: usize,
}

impl PageCursor {
    /// A cursor over `pages` pages, starting at the first.
    pub fn new(pages: usize) -> PageCursor {
        PageCursor {
            pages: pages.max(1),
            next: 0,
        }
    }
    /// The next page to dirty, wrapping around.
    pub fn next_page(&mut self) -> usize {
        let p = self.next;
        self.next = (self.next + 1) % self.pages;
        p
    }
}

/// Resident, incompressible memory state that is dirtied at a steady rate: the memory
/// workload itself, and the optional state of the counter service (so a migration can carry a
/// chosen state size behind a live client).
pub struct Ballast {
    mem: Vec<u8>,
    rng: Rng,
}

impl Ballast {
    /// Allocate `mib` MiB and fill every page with random bytes (resident, incompressible).
    pub fn new(mib: usize, seed: u64) -> Result<Ballast, String> {
        let bytes = mib
            .checked_mul(1024 * 1024)
            .ok_or_else(|| format!("state of {mib} MiB is too large"))?;
        let mut rng = Rng::new(seed);
        let mut mem = vec![0u8; bytes];
        rng.fill(&mut mem);
        Ok(Ballast { mem, rng })
    }

    /// Pages held.
    pub fn pages(&self) -> usize {
        self.mem.len() / PAGE
    }

    /// Dirty pages round-robin at `pages_per_s` forever, calling `report(elapsed_s, done)`
    /// every `every`.
    pub fn dirty_forever(
        mut self,
        pages_per_s: f64,
        every: std::time::Duration,
        mut report: impl FnMut(f64, u64),
    ) -> ! {
        use std::time::{Duration, Instant};
        let pages = self.pages();
        let start = Instant::now();
        let mut pacer = Pacer::new(if pages == 0 { 0.0 } else { pages_per_s });
        let mut cursor = PageCursor::new(pages);
        let mut last_report = start;
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let now = Instant::now();
            for _ in 0..pacer.due(now.duration_since(start).as_secs_f64()) {
                let off = cursor.next_page() * PAGE;
                // One word per page is enough to make the whole page dirty for the kernel.
                self.mem[off..off + 8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
            }
            if now.duration_since(last_report) >= every {
                report(now.duration_since(start).as_secs_f64(), pacer.done);
                last_report = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_keeps_rate_without_drift() {
        let mut p = Pacer::new(1000.0);
        let total: u64 = (1..=100).map(|i| p.due(i as f64 * 0.01)).sum();
        assert_eq!(total, 1000);
        assert_eq!(p.due(1.0), 0, "nothing more due at the same time");
        assert_eq!(
            Pacer::new(-5.0).due(10.0),
            0,
            "negative rates clamp to zero"
        );
    }

    #[test]
    fn rates_and_cursor() {
        assert_eq!(mib_per_s_to_pages(1.0), 256.0);
        let mut c = PageCursor::new(3);
        let v: Vec<_> = (0..5).map(|_| c.next_page()).collect();
        assert_eq!(v, [0, 1, 2, 0, 1]);
    }

    #[test]
    fn rng_fills_differently_per_seed() {
        let (mut a, mut b) = (vec![0u8; 33], vec![0u8; 33]);
        Rng::new(1).fill(&mut a);
        Rng::new(2).fill(&mut b);
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != 0));
    }

    #[test]
    fn ballast_has_the_size_asked_for() {
        assert_eq!(Ballast::new(2, 7).unwrap().pages(), 512);
        assert!(Ballast::new(usize::MAX, 7).is_err());
    }
}
