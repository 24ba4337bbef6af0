//! The latency plot (`target/testbed/latency.png`): the live client's request→reply latency over
//! time, with each migration's phases shaded behind it.
//!
//! Drawn with plotters' bitmap backend only and **no text**: every text path of plotters needs a
//! font backend (`ttf` = font-kit + system fontconfig/freetype, or `ab_glyph` + a font file we
//! would have to ship), and the machines here have neither. What the axes mean is fixed instead:
//! x is time since the client started (a light vertical line every second), y is latency on a
//! linear scale from 0 to the largest latency seen (a light horizontal line every 100 ms); the
//! KPI table and the report carry the numbers. Each request is a blue bar from when it was sent
//! to when its reply came, as tall as its latency.

use std::path::Path;

use plotters::prelude::*;

use crate::client::Timeline;
use crate::error::{Result, TestbedError};

/// Image size in pixels.
pub const SIZE: (u32, u32) = (1200, 500);

/// A phase of a migration on the client's clock (ms since the client started).
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSpan {
    /// Phase name as in the report (`prepare`, `checkpoint`, `transfer`, `netns`, `restore`,
    /// `flow_switch`, `cleanup`, `rollback`, `pre_copy`).
    pub phase: String,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// Shade per phase; the legend is in docs/testbed.md (the plot has no text).
pub fn phase_color(phase: &str) -> RGBColor {
    match phase {
        "prepare" => RGBColor(200, 200, 255),     // light blue
        "pre_copy" => RGBColor(200, 255, 255),    // light cyan
        "checkpoint" => RGBColor(255, 200, 200),  // light red
        "transfer" => RGBColor(255, 230, 180),    // light orange
        "netns" => RGBColor(230, 200, 255),       // light violet
        "restore" => RGBColor(200, 255, 200),     // light green
        "flow_switch" => RGBColor(255, 255, 160), // light yellow
        "cleanup" => RGBColor(220, 220, 220),     // light grey
        _ => RGBColor(255, 180, 255),             // rollback and anything else: pink
    }
}

/// Draw `timeline` with `phases` shaded into a PNG at `path`.
pub fn latency_png(timeline: &Timeline, phases: &[PhaseSpan], path: &Path) -> Result<()> {
    if timeline.samples.is_empty() {
        return Err(TestbedError::Invalid(
            "no client samples to plot (the client got no reply)".into(),
        ));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| TestbedError::io(format!("create {}", dir.display()), e))?;
    }
    let plot_err = |e: &dyn std::fmt::Display| {
        TestbedError::State(format!("draw the latency plot {}: {e}", path.display()))
    };
    let end_ms = timeline
        .samples
        .iter()
        .map(|s| s.reply_ms())
        .chain(phases.iter().map(|p| p.end_ms))
        .fold(0.0, f64::max);
    let max_latency = timeline
        .samples
        .iter()
        .map(|s| s.latency_ms)
        .fold(1.0, f64::max);
    let (x_max, y_max) = (end_ms / 1e3 * 1.02, max_latency * 1.1);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&e))?;
    // A plain margin instead of label areas: labels would need a font.
    let area = root.margin(20, 20, 20, 20);
    let mut chart = ChartBuilder::on(&area)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| plot_err(&e))?;
    chart
        .draw_series(phases.iter().map(|p| {
            Rectangle::new(
                [(p.start_ms / 1e3, 0.0), (p.end_ms / 1e3, y_max)],
                phase_color(&p.phase).filled(),
            )
        }))
        .map_err(|e| plot_err(&e))?;
    let grid = RGBColor(225, 225, 225);
    let seconds = (0..=x_max.floor() as u32).map(f64::from);
    chart
        .draw_series(seconds.map(|s| PathElement::new(vec![(s, 0.0), (s, y_max)], grid)))
        .map_err(|e| plot_err(&e))?;
    let hundreds = (0..=(y_max / 100.0).floor() as u32).map(|i| f64::from(i) * 100.0);
    chart
        .draw_series(hundreds.map(|y| PathElement::new(vec![(0.0, y), (x_max, y)], grid)))
        .map_err(|e| plot_err(&e))?;
    // Each request as a bar from when it was sent to when its reply came, as tall as its
    // latency: a stalled request shows as a block spanning the outage, steady traffic as a
    // flat line along the axis.
    chart
        .draw_series(timeline.samples.iter().map(|s| {
            Rectangle::new(
                [(s.sent_ms / 1e3, 0.0), (s.reply_ms() / 1e3, s.latency_ms)],
                BLUE.filled(),
            )
        }))
        .map_err(|e| plot_err(&e))?;
    // Frame: the axes.
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, y_max), (0.0, 0.0), (x_max, 0.0)],
            BLACK.stroke_width(2),
        )))
        .map_err(|e| plot_err(&e))?;
    root.present().map_err(|e| plot_err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Sample;

    #[test]
    fn a_png_is_drawn_from_a_synthetic_timeline() {
        let mut samples: Vec<Sample> = (0..300)
            .map(|i| Sample {
                sent_ms: i as f64 * 10.3,
                latency_ms: 0.3,
                count: i + 1,
            })
            .collect();
        samples[150].latency_ms = 640.0; // the migration's stall
        let tl = Timeline {
            samples,
            error: None,
            started_unix_us: 0,
        };
        let phases = vec![
            PhaseSpan {
                phase: "checkpoint".into(),
                start_ms: 1500.0,
                end_ms: 1900.0,
            },
            PhaseSpan {
                phase: "restore".into(),
                start_ms: 1900.0,
                end_ms: 2200.0,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.png");
        latency_png(&tl, &phases, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let (w, h) = (
            u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
            u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
        );
        assert_eq!((w, h), SIZE);
        assert!(bytes.len() > 2_000, "a near-empty image: {} B", bytes.len());
    }

    #[test]
    fn an_empty_timeline_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = latency_png(&Timeline::default(), &[], &dir.path().join("x.png")).unwrap_err();
        assert!(e.to_string().contains("no client samples"), "{e}");
    }
}
