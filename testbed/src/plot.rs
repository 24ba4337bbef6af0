//! The latency plot (`target/testbed/latency.png`): the live client's request→reply latency over
//! time, with each migration's phases shaded behind it.
//!
//! Drawn with plotters' bitmap backend; every label is drawn with the 5×7 bitmap font in
//! [`font`], because plotters' text needs a font backend (`ttf` = font-kit + system
//! fontconfig/freetype, or `ab_glyph` + a shipped font file) and the hosts here have neither.
//! x is time since the client started, in s; y is latency in ms on a log scale, so the
//! sub-millisecond baseline and the stalls of hundreds of ms are both readable. Each request is
//! a dot at its send time and, when its reply took long enough to show, a line until the reply.

mod font;

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::client::{Timeline, REQUEST_INTERVAL};
use crate::error::{Result, TestbedError};

/// Image size in pixels.
pub const SIZE: (u32, u32) = (1200, 560);

/// A phase of a migration on the client's clock (ms since the client started).
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseSpan {
    /// Phase name as in the report (`prepare`, `checkpoint`, `transfer`, `netns`, `restore`,
    /// `flow_switch`, `cleanup`, `rollback`, `pre_copy`).
    pub phase: String,
    /// Start, ms on the client's timeline.
    pub start_ms: f64,
    /// End, ms on the client's timeline.
    pub end_ms: f64,
}

/// The order phases run in, which is also the legend's order.
const PHASE_ORDER: [&str; 9] = [
    "prepare",
    "pre_copy",
    "checkpoint",
    "transfer",
    "netns",
    "restore",
    "flow_switch",
    "cleanup",
    "rollback",
];

/// Shade per phase (the plot's legend names them).
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

const INK: RGBColor = RGBColor(30, 30, 30);
const GRID: RGBColor = RGBColor(205, 205, 205);
const MINOR_GRID: RGBColor = RGBColor(235, 235, 235);
const REQUEST: RGBColor = RGBColor(20, 60, 190);
const STOPPED: RGBColor = RGBColor(210, 0, 0);
/// Image pixels per font pixel: 10×14 capitals.
const SCALE: i32 = 2;
const CAP: i32 = font::CAP_HEIGHT * SCALE;
const LINE_HEIGHT: i32 = font::HEIGHT * SCALE;
const LEGEND_TOP: i32 = 38;
const LEGEND_ROW: i32 = 22;
const PLOT_LEFT: i32 = 84;
const PLOT_RIGHT: i32 = SIZE.0 as i32 - 24;
const PLOT_BOTTOM: i32 = SIZE.1 as i32 - 56;
/// A stall is labelled with its latency when it is at least this many times the median.
const PEAK_FACTOR: f64 = 10.0;
const MAX_PEAK_LABELS: usize = 8;

/// Draw `timeline` with `phases` shaded into a PNG at `path`. An empty timeline or a
/// non-finite/negative number is refused.
pub fn latency_png(timeline: &Timeline, phases: &[PhaseSpan], path: &Path) -> Result<()> {
    validate(timeline, phases)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| TestbedError::io(format!("create {}", dir.display()), e))?;
    }
    let plot_err =
        |e: &dyn std::fmt::Display| TestbedError::State(format!("draw {}: {e}", path.display()));
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw(&root, &layout(timeline, phases), timeline, phases).map_err(|e| plot_err(&e))?;
    root.present().map_err(|e| plot_err(&e))
}

fn validate(timeline: &Timeline, phases: &[PhaseSpan]) -> Result<()> {
    if timeline.samples.is_empty() {
        return Err(TestbedError::Invalid(
            "no client samples to plot (the client got no reply)".into(),
        ));
    }
    let usable = |v: f64| v.is_finite() && v >= 0.0;
    if let Some((i, s)) = timeline
        .samples
        .iter()
        .enumerate()
        .find(|(_, s)| !usable(s.sent_ms) || !usable(s.latency_ms))
    {
        return Err(TestbedError::Invalid(format!(
            "client sample {i} cannot be plotted: sent at {} ms, latency {} ms",
            s.sent_ms, s.latency_ms
        )));
    }
    // Phases may start before the client did (negative); they are clipped, not refused.
    if let Some(p) = phases
        .iter()
        .find(|p| !p.start_ms.is_finite() || !p.end_ms.is_finite())
    {
        return Err(TestbedError::Invalid(format!(
            "phase {} cannot be plotted: {} .. {} ms",
            p.phase, p.start_ms, p.end_ms
        )));
    }
    match &timeline.error {
        Some((at, _)) if !at.is_finite() => Err(TestbedError::Invalid(format!(
            "the client's stop time cannot be plotted: {at} ms"
        ))),
        _ => Ok(()),
    }
}

/// Where the data goes: the plot rectangle in pixels and the axis ranges.
struct Frame {
    left: i32,
    top: i32,
    right: i32,
    bottom: i32,
    x_max_s: f64,
    /// Powers of ten at the bottom and top of the latency axis.
    decades: (i32, i32),
}

impl Frame {
    fn x(&self, ms: f64) -> i32 {
        let f = (ms / 1e3 / self.x_max_s).clamp(0.0, 1.0);
        self.left + (f * f64::from(self.right - self.left)).round() as i32
    }

    /// Latencies below the axis (0 included) sit on it.
    fn y(&self, latency_ms: f64) -> i32 {
        let (lo, hi) = self.decades;
        let f = ((latency_ms.log10() - f64::from(lo)) / f64::from(hi - lo)).clamp(0.0, 1.0);
        self.bottom - (f * f64::from(self.bottom - self.top)).round() as i32
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Swatch {
    Request,
    Phase(RGBColor),
    Stopped,
}

struct LegendEntry {
    swatch: Swatch,
    label: String,
    at: (i32, i32),
}

struct Layout {
    title: String,
    legend: Vec<LegendEntry>,
    frame: Frame,
}

fn layout(timeline: &Timeline, phases: &[PhaseSpan]) -> Layout {
    let mut names: Vec<&str> = phases.iter().map(|p| p.phase.as_str()).collect();
    let rank = |n: &str| {
        PHASE_ORDER
            .iter()
            .position(|o| *o == n)
            .unwrap_or(usize::MAX)
    };
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    names.dedup();
    let mut items = vec![(
        Swatch::Request,
        "request (dot at send time, line until its reply)".to_string(),
    )];
    items.extend(
        names
            .iter()
            .map(|n| (Swatch::Phase(phase_color(n)), (*n).to_string())),
    );
    if let Some((_, why)) = &timeline.error {
        let why: String = why.chars().take(60).collect();
        items.push((Swatch::Stopped, format!("client stopped: {why}")));
    }
    let (mut x, mut y) = (PLOT_LEFT, LEGEND_TOP);
    let legend: Vec<LegendEntry> = items
        .into_iter()
        .map(|(swatch, label)| {
            let w = CAP + 6 + font::width(&label) * SCALE;
            if x > PLOT_LEFT && x + w > PLOT_RIGHT {
                (x, y) = (PLOT_LEFT, y + LEGEND_ROW);
            }
            let at = (x, y);
            x += w + 24;
            LegendEntry { swatch, label, at }
        })
        .collect();

    let end_ms = timeline
        .samples
        .iter()
        .map(|s| s.reply_ms())
        .chain(phases.iter().map(|p| p.end_ms))
        .chain(timeline.error.iter().map(|(at, _)| *at))
        .fold(0.0, f64::max);
    let positive = || {
        timeline
            .samples
            .iter()
            .map(|s| s.latency_ms)
            .filter(|l| *l > 0.0)
    };
    let least = positive().fold(f64::INFINITY, f64::min);
    // Below 1 µs the client's clock says nothing; such samples (and zeros) sit on the axis.
    let lo = if least.is_finite() {
        least.log10().floor().clamp(-3.0, 300.0) as i32
    } else {
        -1
    };
    let hi = positive()
        .fold(0.0, f64::max)
        .log10()
        .ceil()
        .clamp(f64::from(lo + 1), 400.0) as i32;
    Layout {
        title: format!(
            "client request latency (one TCP connection, a request every {} ms)",
            REQUEST_INTERVAL.as_millis()
        ),
        frame: Frame {
            left: PLOT_LEFT,
            top: y + LINE_HEIGHT + 18,
            right: PLOT_RIGHT,
            bottom: PLOT_BOTTOM,
            x_max_s: (end_ms / 1e3 * 1.02).max(0.1),
            decades: (lo, hi),
        },
        legend,
    }
}

/// A 1-2-5 step that puts at most `max_ticks` ticks on `span`.
fn nice_step(span: f64, max_ticks: f64) -> f64 {
    let raw = span / max_ticks;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// `0.5`, `2`, `0.05`: as many decimals as the step needs.
fn tick_label(value: f64, step: f64) -> String {
    let decimals = (-(step.log10() + 1e-9).floor()).max(0.0) as usize;
    format!("{value:.decimals$}")
}

/// 10^k in ms as people write it: `0.01`, `1`, `1000`, `1e6`.
fn decade_label(k: i32) -> String {
    match k {
        ..=-1 => format!("{:.*}", k.unsigned_abs() as usize, 10f64.powi(k)),
        0..=5 => 10u64.pow(k as u32).to_string(),
        _ => format!("1e{k}"),
    }
}

fn latency_label(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

type Drawn<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Fill `w`×`h` pixels from (`x`, `y`) (the bitmap backend fills rectangles half-open).
fn fill<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (x, y): (i32, i32),
    (w, h): (i32, i32),
    color: RGBColor,
) -> Drawn<DB> {
    area.draw(&Rectangle::new([(x, y), (x + w, y + h)], color.filled()))
}

/// `text` with its top-left corner at `at`; `upright: false` reads bottom to top with `at` as
/// its bottom-left corner (the y axis title).
fn text<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: &str,
    (x, y): (i32, i32),
    color: RGBColor,
    upright: bool,
) -> Drawn<DB> {
    for (col, row) in font::pixels(text) {
        let at = if upright {
            (x + col * SCALE, y + row * SCALE)
        } else {
            (x + row * SCALE, y - (col + 1) * SCALE)
        };
        fill(area, at, (SCALE, SCALE), color)?;
    }
    Ok(())
}

fn text_width(s: &str) -> i32 {
    font::width(s) * SCALE
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    layout: &Layout,
    timeline: &Timeline,
    phases: &[PhaseSpan],
) -> Drawn<DB> {
    let f = &layout.frame;
    let width = SIZE.0 as i32;
    root.fill(&WHITE)?;
    text(
        root,
        &layout.title,
        ((width - text_width(&layout.title)) / 2, 10),
        INK,
        true,
    )?;
    for e in &layout.legend {
        let (x, y) = e.at;
        match e.swatch {
            Swatch::Request => {
                fill(root, (x, y + 6), (CAP, 2), REQUEST)?;
                root.draw(&Circle::new((x + 3, y + 7), 3, REQUEST.filled()))?;
            }
            Swatch::Phase(c) => {
                fill(root, (x, y), (CAP, CAP), c)?;
                root.draw(&Rectangle::new([(x, y), (x + CAP, y + CAP)], GRID))?;
            }
            Swatch::Stopped => fill(root, (x + CAP / 2 - 1, y), (2, CAP), STOPPED)?,
        }
        text(root, &e.label, (x + CAP + 6, y), INK, true)?;
    }

    let plot_h = f.bottom - f.top;
    for p in phases {
        let (x0, x1) = (f.x(p.start_ms), f.x(p.end_ms));
        fill(
            root,
            (x0.min(x1), f.top),
            ((x1 - x0).abs(), plot_h),
            phase_color(&p.phase),
        )?;
    }

    // Latency axis: a line and a label per decade (every k-th when there are many), fainter
    // lines at 2× and 5× when there is room.
    let (lo, hi) = f.decades;
    let every = (hi - lo + 7) / 8;
    for k in lo..=hi {
        let y = f.y(10f64.powi(k));
        fill(root, (f.left, y), (f.right - f.left, 1), GRID)?;
        if (k - lo) % every == 0 {
            let label = decade_label(k);
            fill(root, (f.left - 5, y), (5, 1), INK)?;
            text(
                root,
                &label,
                (f.left - 8 - text_width(&label), y - CAP / 2),
                INK,
                true,
            )?;
        }
        if k < hi && hi - lo <= 6 {
            for m in [2.0, 5.0] {
                let y = f.y(m * 10f64.powi(k));
                fill(root, (f.left, y), (f.right - f.left, 1), MINOR_GRID)?;
            }
        }
    }
    let y_title = "latency (ms, log scale)";
    text(
        root,
        y_title,
        (12, f.top + (plot_h + text_width(y_title)) / 2),
        INK,
        false,
    )?;

    // Time axis.
    let step = nice_step(f.x_max_s, 12.0);
    for i in 0..=(f.x_max_s / step + 1e-9).floor() as u32 {
        let s = f64::from(i) * step;
        let x = f.x(s * 1e3);
        fill(root, (x, f.top), (1, plot_h), GRID)?;
        fill(root, (x, f.bottom), (1, 5), INK)?;
        let label = tick_label(s, step);
        text(
            root,
            &label,
            (x - text_width(&label) / 2, f.bottom + 10),
            INK,
            true,
        )?;
    }
    let x_title = "time since the client started (s)";
    text(
        root,
        x_title,
        (
            f.left + (f.right - f.left - text_width(x_title)) / 2,
            f.bottom + 32,
        ),
        INK,
        true,
    )?;

    for s in &timeline.samples {
        let (x0, x1, y) = (f.x(s.sent_ms), f.x(s.reply_ms()), f.y(s.latency_ms));
        if x1 > x0 + 2 {
            fill(root, (x0, y - 1), (x1 - x0, 2), REQUEST)?;
        }
    }
    for s in &timeline.samples {
        root.draw(&Circle::new(
            (f.x(s.sent_ms), f.y(s.latency_ms)),
            2,
            REQUEST.filled(),
        ))?;
    }
    if let Some((at, _)) = &timeline.error {
        fill(root, (f.x(*at) - 1, f.top), (2, plot_h), STOPPED)?;
    }
    peak_labels(root, f, timeline)?;

    root.draw(&Rectangle::new([(f.left, f.top), (f.right, f.bottom)], INK))?;
    Ok(())
}

/// The latency of the worst stalls written next to them, largest first, skipping any that
/// would overlap one already written.
fn peak_labels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    f: &Frame,
    timeline: &Timeline,
) -> Drawn<DB> {
    let mut latencies: Vec<f64> = timeline.samples.iter().map(|s| s.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let median = latencies[latencies.len() / 2];
    let mut peaks: Vec<_> = timeline
        .samples
        .iter()
        .filter(|s| s.latency_ms > 0.0 && s.latency_ms >= PEAK_FACTOR * median)
        .collect();
    peaks.sort_by(|a, b| b.latency_ms.total_cmp(&a.latency_ms));
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    for s in peaks {
        if placed.len() == MAX_PEAK_LABELS {
            break;
        }
        let label = latency_label(s.latency_ms);
        let w = text_width(&label);
        let (px, py) = (f.x(s.sent_ms), f.y(s.latency_ms));
        // Not clamp(): a label wider than the plot would make it panic.
        let x = (px - w / 2).min(f.right - w - 3).max(f.left + 3);
        // Above the dot, or below it when the dot is at the top of the plot.
        let y = if py - LINE_HEIGHT - 6 > f.top {
            py - LINE_HEIGHT - 6
        } else {
            py + 6
        };
        let rect = (x - 3, y - 2, x + w + 3, y + LINE_HEIGHT + 2);
        let overlaps =
            |r: &(i32, i32, i32, i32)| rect.0 < r.2 && r.0 < rect.2 && rect.1 < r.3 && r.1 < rect.3;
        if placed.iter().any(overlaps) {
            continue;
        }
        text(root, &label, (x, y), INK, true)?;
        placed.push(rect);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Sample;

    /// A steady client (0.3 ms every 10.3 ms) with one 640 ms stall at sample 150.
    fn stalled() -> Timeline {
        let mut samples: Vec<Sample> = (0..300)
            .map(|i| Sample {
                sent_ms: i as f64 * 10.3,
                latency_ms: 0.3,
                count: i + 1,
            })
            .collect();
        samples[150].latency_ms = 640.0;
        Timeline {
            samples,
            error: None,
            started_unix_us: 0,
        }
    }

    fn span(phase: &str, start_ms: f64, end_ms: f64) -> PhaseSpan {
        PhaseSpan {
            phase: phase.into(),
            start_ms,
            end_ms,
        }
    }

    struct Image {
        width: u32,
        height: u32,
        rgb: Vec<u8>,
    }

    impl Image {
        fn decode(path: &Path) -> Image {
            let file = std::fs::File::open(path).unwrap();
            let mut reader = png::Decoder::new(file).read_info().unwrap();
            let mut rgb = vec![0; reader.output_buffer_size()];
            let info = reader.next_frame(&mut rgb).unwrap();
            assert_eq!(info.color_type, png::ColorType::Rgb);
            rgb.truncate(info.buffer_size());
            Image {
                width: info.width,
                height: info.height,
                rgb,
            }
        }

        fn at(&self, x: i32, y: i32) -> RGBColor {
            let i = (y as usize * self.width as usize + x as usize) * 3;
            RGBColor(self.rgb[i], self.rgb[i + 1], self.rgb[i + 2])
        }

        fn count(&self, xs: std::ops::Range<i32>, ys: std::ops::Range<i32>, c: RGBColor) -> usize {
            ys.flat_map(|y| xs.clone().map(move |x| (x, y)))
                .filter(|&(x, y)| self.at(x, y) == c)
                .count()
        }
    }

    fn render(tl: &Timeline, phases: &[PhaseSpan]) -> (tempfile::TempDir, Image) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.png");
        latency_png(tl, phases, &path).unwrap();
        let image = Image::decode(&path);
        (dir, image)
    }

    #[test]
    fn the_plot_has_text_a_legend_and_the_stall_above_the_baseline() {
        let tl = stalled();
        let phases = [
            span("checkpoint", 1500.0, 1900.0),
            span("restore", 1900.0, 2200.0),
        ];
        let (_dir, img) = render(&tl, &phases);
        assert_eq!((img.width, img.height), SIZE);
        let layout = layout(&tl, &phases);
        let f = &layout.frame;
        let (w, h) = (SIZE.0 as i32, SIZE.1 as i32);
        assert!(img.count(0..w, 0..LEGEND_TOP - 4, INK) > 300, "no title");
        assert!(
            img.count(0..f.left - 6, f.top..f.bottom, INK) > 100,
            "no latency labels"
        );
        assert!(
            img.count(0..w, f.bottom + 6..h, INK) > 300,
            "no time labels"
        );
        for phase in ["checkpoint", "restore"] {
            let e = layout.legend.iter().find(|e| e.label == phase).unwrap();
            assert_eq!(
                img.at(e.at.0 + 7, e.at.1 + 7),
                phase_color(phase),
                "{phase} swatch"
            );
            assert!(img.count(e.at.0 + 20..e.at.0 + 120, e.at.1..e.at.1 + 14, INK) > 40);
        }

        let (stall, steady) = (&tl.samples[150], &tl.samples[20]);
        let (x_stall, y_stall) = (f.x(stall.sent_ms), f.y(stall.latency_ms));
        let y_base = f.y(steady.latency_ms);
        assert!(
            y_stall + 100 < y_base,
            "stall at y {y_stall}, baseline at y {y_base}"
        );
        assert_eq!(img.at(x_stall, y_stall), REQUEST, "the stall's dot");
        assert_eq!(
            img.at(f.x(steady.sent_ms), y_base),
            REQUEST,
            "a baseline dot"
        );
        // A dot and a line, not a bar: nothing of the request's colour below the stall's dot.
        assert_eq!(
            img.count(x_stall - 1..x_stall + 2, y_stall + 4..y_base - 4, REQUEST),
            0
        );
        // Its line runs until the reply, inside the checkpoint shade behind it.
        assert_eq!(img.at(f.x(stall.reply_ms()) - 2, y_stall), REQUEST);
        assert_eq!(img.at(f.x(1600.0), y_stall + 30), phase_color("checkpoint"));
    }

    #[test]
    fn unusable_input_is_refused_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        let e = latency_png(&Timeline::default(), &[], &path).unwrap_err();
        assert!(e.to_string().contains("no client samples"), "{e}");
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let mut tl = stalled();
            tl.samples[3].latency_ms = bad;
            let e = latency_png(&tl, &[], &path).unwrap_err();
            assert!(e.to_string().contains("client sample 3"), "{e}");
            let mut tl = stalled();
            tl.samples[4].sent_ms = bad;
            assert!(latency_png(&tl, &[], &path).is_err());
        }
        let e = latency_png(&stalled(), &[span("restore", 0.0, f64::NAN)], &path).unwrap_err();
        assert!(e.to_string().contains("phase restore"), "{e}");
        let mut tl = stalled();
        tl.error = Some((f64::NAN, "reset".into()));
        assert!(latency_png(&tl, &[], &path).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn degenerate_input_still_draws() {
        let one = Timeline {
            samples: vec![Sample {
                sent_ms: 0.0,
                latency_ms: 0.0,
                count: 1,
            }],
            error: Some((0.0, "connection reset by peer \u{1F4A5}".into())),
            started_unix_us: 0,
        };
        let phases = [span("rollback", -500.0, 20.0), span("restore", 30.0, 10.0)];
        let (_dir, img) = render(&one, &phases);
        assert_eq!((img.width, img.height), SIZE);
        let legend = layout(&one, &phases).legend;
        assert!(legend.iter().any(|e| e.swatch == Swatch::Stopped));

        // A stall too long for its label to fit in the plot.
        let huge = Timeline {
            samples: vec![
                Sample {
                    sent_ms: 0.0,
                    latency_ms: 0.3,
                    count: 1,
                },
                Sample {
                    sent_ms: 10.0,
                    latency_ms: 0.3,
                    count: 2,
                },
                Sample {
                    sent_ms: 1e300,
                    latency_ms: f64::MAX,
                    count: 3,
                },
            ],
            ..Timeline::default()
        };
        render(&huge, &[]);
    }

    #[test]
    fn the_legend_lists_each_phase_once_in_running_order_and_fits() {
        let phases: Vec<PhaseSpan> = ["zz_custom", "cleanup", "restore", "prepare", "restore"]
            .iter()
            .chain(PHASE_ORDER.iter())
            .map(|p| span(p, 0.0, 1.0))
            .collect();
        let legend = layout(&stalled(), &phases).legend;
        let labels: Vec<&str> = legend.iter().skip(1).map(|e| e.label.as_str()).collect();
        let mut expected = PHASE_ORDER.to_vec();
        expected.push("zz_custom");
        assert_eq!(labels, expected);
        assert_eq!(legend[0].swatch, Swatch::Request);
        for e in &legend {
            assert!(
                e.at.0 + CAP + 6 + text_width(&e.label) <= PLOT_RIGHT,
                "{}",
                e.label
            );
        }
        assert!(
            legend.iter().any(|e| e.at.1 > LEGEND_TOP),
            "this many entries wrap"
        );
    }

    #[test]
    fn axis_labels_read_as_numbers() {
        assert_eq!(nice_step(2.86, 12.0), 0.5);
        assert_eq!(nice_step(40.0, 12.0), 5.0);
        assert!((nice_step(0.1, 12.0) - 0.01).abs() < 1e-12);
        assert_eq!(tick_label(1.5, 0.5), "1.5");
        assert_eq!(tick_label(10.0, 5.0), "10");
        assert_eq!(tick_label(0.3, 0.1), "0.3");
        assert_eq!(tick_label(0.05, 0.05), "0.05");
        assert_eq!(decade_label(-2), "0.01");
        assert_eq!(decade_label(0), "1");
        assert_eq!(decade_label(3), "1000");
        assert_eq!(decade_label(7), "1e7");
        assert_eq!(latency_label(371.3), "371 ms");
        assert_eq!(latency_label(1.24), "1.2 ms");
    }
}
