//! `memload --mib M [--pages-per-sec R | --mib-per-sec R] [--report-ms 1000] [--seed S]`
//! (env: MEMLOAD_MIB, MEMLOAD_PAGES_PER_SEC, MEMLOAD_MIB_PER_SEC, MEMLOAD_REPORT_MS, MEMLOAD_SEED).
//! Allocates M MiB of random data, then dirties pages round-robin at R pages/s until killed,
//! printing one progress line per report interval.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use mose_workloads::args::Opts;
use mose_workloads::memload::{mib_per_s_to_pages, Ballast};

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

    let t0 = Instant::now();
    let ballast = Ballast::new(mib, seed)?;
    let pages = ballast.pages();
    println!(
        "memload: ready mib={mib} pages={pages} rate_pages_per_s={pages_per_s} fill_ms={}",
        t0.elapsed().as_millis()
    );
    let mut last = (0.0, 0u64);
    ballast.dirty_forever(pages_per_s, report, |t, done| {
        println!(
            "memload: t={t:.1}s dirtied_pages={done} rate_pages_per_s={:.0}",
            (done - last.1) as f64 / (t - last.0)
        );
        last = (t, done);
    })
}
