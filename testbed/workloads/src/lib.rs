//! Workloads for the MOSE-RS testbed, run as the only binary inside tiny container images.
//!
//! * `counter-service`: a stateful TCP service. It serves one connection at a time and answers
//!   every line it receives with a running count that survives across lines and connections, so a
//!   client can tell a migrated service (count continues) from a restarted one (count resets).
//! * `memload`: allocates M MiB of random data and dirties pages at a set rate, the synthetic
//!   workload for PAM calibration (state size M, dirty rate R).
//!
//! The pure parts (argument parsing, the counter protocol, the dirtying schedule) live here so
//! they are unit-tested; the binaries are thin loops around them.

pub mod args;
pub mod counter;
pub mod memload;
