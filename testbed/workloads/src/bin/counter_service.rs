//! `counter-service [--port 7000] [--bind 0.0.0.0] [--state-mib M] [--dirty-mib-per-sec R]`
//! (env: PORT, BIND, STATE_MIB, DIRTY_MIB_PER_SEC).
//! Serves one TCP connection at a time; each line received gets the running count back.
//! With `--state-mib`, the service also holds M MiB of incompressible state that a thread
//! dirties at R MiB/s: a stateful service of chosen size, migrated behind a live client.

use std::io::{BufReader, BufWriter};
use std::net::TcpListener;
use std::process::ExitCode;

use mose_workloads::args::Opts;
use mose_workloads::counter::Counter;
use mose_workloads::memload::{mib_per_s_to_pages, Ballast};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("counter-service: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let opts = Opts::parse(std::env::args().skip(1), std::env::vars())?;
    let known = ["port", "bind", "state-mib", "dirty-mib-per-sec"];
    if let Some(k) = opts.unknown(&known).first() {
        return Err(format!(
            "unknown option --{k} (known: --{})",
            known.join(", --")
        ));
    }
    let state_mib: usize = opts.num("state-mib", "STATE_MIB")?.unwrap_or(0);
    let rate: f64 = opts
        .num("dirty-mib-per-sec", "DIRTY_MIB_PER_SEC")?
        .unwrap_or(0.0);
    if !rate.is_finite() || rate < 0.0 {
        return Err(format!(
            "--dirty-mib-per-sec must be a finite number >= 0, got {rate}"
        ));
    }
    if state_mib > 0 {
        let ballast = Ballast::new(state_mib, 0x636f756e)?;
        println!("counter-service: state {state_mib} MiB, dirtied at {rate} MiB/s");
        std::thread::spawn(move || {
            ballast.dirty_forever(
                mib_per_s_to_pages(rate),
                std::time::Duration::from_secs(3600),
                |_, _| {},
            )
        });
    }
    let port: u16 = opts.num("port", "PORT")?.unwrap_or(7000);
    let bind = opts.get("bind", "BIND").unwrap_or("0.0.0.0");
    let listener = TcpListener::bind((bind, port))
        .map_err(|e| format!("cannot listen on {bind}:{port}: {e}"))?;
    println!("counter-service: listening on {bind}:{port}");
    let mut counter = Counter::default();
    loop {
        let (stream, peer) = listener
            .accept()
            .map_err(|e| format!("accept failed: {e}"))?;
        // Replies are tiny and latency is what the client measures.
        let _ = stream.set_nodelay(true);
        println!(
            "counter-service: connection from {peer}, count={}",
            counter.count
        );
        let reader = match stream.try_clone() {
            Ok(s) => BufReader::new(s),
            Err(e) => {
                eprintln!("counter-service: cannot clone socket: {e}");
                continue;
            }
        };
        // A broken connection only ends that connection; the count stays.
        match counter.serve(reader, BufWriter::new(stream)) {
            Ok(n) => println!(
                "counter-service: {peer} closed after {n} lines, count={}",
                counter.count
            ),
            Err(e) => println!(
                "counter-service: {peer} dropped ({e}), count={}",
                counter.count
            ),
        }
    }
}
