//! `memload --mib M [--pages-per-sec R | --mib-per-sec R] [--report-ms 1000] [--seed S]`
//! (env: MEMLOAD_MIB, MEMLOAD_PAGES_PER_SEC, MEMLOAD_MIB_PER_SEC, MEMLOAD_REPORT_MS, MEMLOAD_SEED).
//! Allocates M MiB of random data, then dirties pages round-robin at R pages/s until killed,
//! printing one progress line per report interval.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use mose_workloads::args::Opts;
use mose_workloads::memload::{mib_per_s_to_pages, Pacer, PageCursor, Rng, PAGE};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memload: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let opts = Opts::parse(std::env::args().skip(1), std::env::vars())?;
    if let Some(k) = opts
        .unknown(&["mib", "pages-per-sec", "mib-per-sec", "report-ms", "seed"])
        .first()
    {
        return Err(format!("unknown option --{k}"));
    }
    let mib: usize = opts.num("mib", "MEMLOAD_MIB")?.unwrap_or(64);
    let pages_per_s: f64 = match (
        opts.num::<f64>("pages-per-sec", "MEMLOAD_PAGES_PER_SEC")?,
        opts.num::<f64>("mib-per-sec", "MEMLOAD_MIB_PER_SEC")?,
    ) {
        (Some(_), Some(_)) => {
            return Err("give either --pages-per-sec or --mib-per-sec, not both".into())
        }
        (Some(p), None) => p,
        (None, Some(m)) => mib_per_s_to_pages(m),
        (None, None) => 0.0,
    };
    if !pages_per_s.is_finite() || pages_per_s < 0.0 {
        return Err(format!(
            "dirty rate must be a finite number >= 0, got {pages_per_s}"
        ));
    }
    let report = Duration::from_millis(
        opts.num("report-ms", "MEMLOAD_REPORT_MS")?
            .unwrap_or(1000u64)
            .max(10),
    );
    let seed: u64 = opts.num("seed", "MEMLOAD_SEED")?.unwrap_or(0x6d6f7365);
    let bytes = mib
        .checked_mul(1024 * 1024)
        .ok_or_else(|| format!("--mib {mib} is too large"))?;

    let t0 = Instant::now();
    let mut rng = Rng::new(seed);
    let mut mem = vec![0u8; bytes];
    rng.fill(&mut mem); // touches every page: the state is resident and incompressible
    let pages = bytes / PAGE;
    println!(
        "memload: ready mib={mib} pages={pages} rate_pages_per_s={pages_per_s} fill_ms={}",
        t0.elapsed().as_millis()
    );

    let start = Instant::now();
    let mut pacer = Pacer::new(if pages == 0 { 0.0 } else { pages_per_s });
    let mut cursor = PageCursor::new(pages);
    let (mut last_report, mut last_done) = (start, 0u64);
    loop {
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        for _ in 0..pacer.due(now.duration_since(start).as_secs_f64()) {
            let off = cursor.next_page() * PAGE;
            // One word per page is enough to make the whole page dirty for the kernel.
            mem[off..off + 8].copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        if now.duration_since(last_report) >= report {
            let dt = now.duration_since(last_report).as_secs_f64();
            println!(
                "memload: t={:.1}s dirtied_pages={} rate_pages_per_s={:.0}",
                now.duration_since(start).as_secs_f64(),
                pacer.done,
                (pacer.done - last_done) as f64 / dt
            );
            last_report = now;
            last_done = pacer.done;
        }
    }
}
