//! `counter-service [--port 7000] [--bind 0.0.0.0]` (env: PORT, BIND).
//! Serves one TCP connection at a time; each line received gets the running count back.

use std::io::{BufReader, BufWriter};
use std::net::TcpListener;
use std::process::ExitCode;

use mose_workloads::args::Opts;
use mose_workloads::counter::Counter;

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
    if let Some(k) = opts.unknown(&["port", "bind"]).first() {
        return Err(format!("unknown option --{k} (known: --port, --bind)"));
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
