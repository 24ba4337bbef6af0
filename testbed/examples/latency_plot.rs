//! Re-draw a latency plot from a saved client timeline, e.g. to look at an older run:
//!
//! ```text
//! cargo run -p mose-testbed --example latency_plot -- \
//!     target/testbed/client-timeline.json /tmp/latency.png checkpoint=552..809 restore=814..1007
//! ```
//!
//! `client-timeline.json` holds no phase times, so phases to shade are given as
//! `name=start_ms..end_ms` on the client's clock.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use mose_testbed::client::Timeline;
use mose_testbed::plot::{latency_png, PhaseSpan};

fn phase(arg: &str) -> anyhow::Result<PhaseSpan> {
    let parse = || -> Option<PhaseSpan> {
        let (name, range) = arg.split_once('=')?;
        let (start, end) = range.split_once("..")?;
        Some(PhaseSpan {
            phase: name.to_string(),
            start_ms: start.parse().ok()?,
            end_ms: end.parse().ok()?,
        })
    };
    parse().ok_or_else(|| anyhow!("{arg:?} is not name=start_ms..end_ms"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [timeline, out, phases @ ..] = args.as_slice() else {
        bail!("usage: latency_plot TIMELINE.json OUT.png [phase=start_ms..end_ms ...]");
    };
    let raw = std::fs::read_to_string(timeline).with_context(|| format!("read {timeline}"))?;
    let timeline: Timeline =
        serde_json::from_str(&raw).with_context(|| format!("parse {timeline}"))?;
    let phases = phases
        .iter()
        .map(|p| phase(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    latency_png(&timeline, &phases, Path::new(out))?;
    Ok(())
}
