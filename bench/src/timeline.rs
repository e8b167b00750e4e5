//! Latency and throughput over time: per interval of a run (`--timeline-interval`, 1 s by
//! default), the requests answered, errors, throughput and p50/p99/max latency of the
//! answers that completed in it.
//!
//! Recording is cheap: a [`Recorder`] keeps one small histogram (two significant digits,
//! 32-bit counts: about 10 KB) per interval, and each recording thread of the lean path
//! keeps one recorder (as it keeps one latency histogram); the threads' recorders are
//! merged at the end. A request is counted in the interval in which its answer arrived.
//!
//! `--timeline FILE.svg` draws the run as a time series (latency on a log axis above,
//! throughput below) and writes the same points to `FILE.csv`. As with `--plot`, the
//! series already drawn in FILE.svg are kept (their data sits in a comment inside the SVG),
//! so runs against different servers overlay; `compare` draws rivet and etcd, one line per
//! server and round, into one file per workload.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

// Colours, escaping and gridline steps are the percentile plot's.
use crate::plot::{escape, gridline_y, nice_step, COLORS};
use crate::report::LATENCY_MICROS_MAX;

/// The default interval of a timeline.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// Significant digits of the per-interval histograms: 1% resolution is plenty for a plot
/// and keeps each interval's histogram at about 10 KB.
const INTERVAL_DIGITS: u8 = 2;

fn interval_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, INTERVAL_DIGITS)
        .expect("valid histogram bounds")
}

/// One interval's answers.
#[derive(Clone)]
struct Slot {
    histogram: Histogram<u32>,
    errors: u64,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            histogram: interval_histogram(),
            errors: 0,
        }
    }
}

/// The intervals of one recording thread (or of a whole run, once merged).
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    interval_nanos: u64,
    slots: Vec<Slot>,
}

impl Recorder {
    /// Intervals of `interval` from `start` (the start of the measured run).
    pub fn new(start: Instant, interval: Duration) -> Recorder {
        Recorder {
            start,
            interval_nanos: u64::try_from(interval.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1),
            slots: Vec::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_nanos)
    }

    #[inline]
    fn slot(&mut self, at: Instant) -> &mut Slot {
        let since =
            u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX);
        let index = usize::try_from(since / self.interval_nanos).unwrap_or(usize::MAX);
        self.slot_at(index)
    }

    fn slot_at(&mut self, index: usize) -> &mut Slot {
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, Slot::new);
        }
        &mut self.slots[index]
    }

    /// An answer that arrived at `at` after `latency`.
    #[inline]
    pub fn record(&mut self, at: Instant, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.slot(at)
            .histogram
            .saturating_record(micros.clamp(1, LATENCY_MICROS_MAX));
    }

    /// A call that failed at `at`.
    #[inline]
    pub fn error(&mut self, at: Instant) {
        self.slot(at).errors += 1;
    }

    /// Adds `other`'s intervals (recorded from the same start) to these.
    pub fn merge(&mut self, other: &Recorder) -> anyhow::Result<()> {
        // Intervals of a recorder that started later are shifted by whole intervals.
        let offset = u64::try_from(other.start.saturating_duration_since(self.start).as_nanos())
            .unwrap_or(u64::MAX)
            / self.interval_nanos;
        for (i, slot) in other.slots.iter().enumerate() {
            let index = i + usize::try_from(offset).unwrap_or(usize::MAX - i);
            let into = self.slot_at(index);
            into.histogram
                .add(&slot.histogram)
                .context("merging interval histograms")?;
            into.errors += slot.errors;
        }
        Ok(())
    }

    /// The points of a run that lasted `seconds` from the start (the last interval may be
    /// shorter than the others; intervals after `seconds` are counted in the last one).
    pub fn timeline(&self, seconds: f64) -> Timeline {
        let interval = self.interval_nanos as f64 / 1e9;
        let mut slots = self.slots.clone();
        // Every interval up to the end of the run has a point, answered or not.
        let count = ((seconds / interval).ceil() as usize).max(1);
        if slots.len() > count {
            let mut last = slots[count - 1].clone();
            for late in &slots[count..] {
                let _ = last.histogram.add(&late.histogram);
                last.errors += late.errors;
            }
            slots.truncate(count - 1);
            slots.push(last);
        }
        while slots.len() < count {
            slots.push(Slot::new());
        }
        let points = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let begin = i as f64 * interval;
                let end = if i + 1 == count {
                    seconds.max(begin)
                } else {
                    (i + 1) as f64 * interval
                };
                let h = &slot.histogram;
                let at = |q: f64| {
                    if h.is_empty() {
                        0.0
                    } else {
                        h.value_at_quantile(q) as f64 / 1e6
                    }
                };
                let length = end - begin;
                Point {
                    end_seconds: end,
                    requests: h.len(),
                    errors: slot.errors,
                    requests_per_second: if length > 0.0 {
                        h.len() as f64 / length
                    } else {
                        0.0
                    },
                    p50_seconds: at(0.5),
                    p99_seconds: at(0.99),
                    max_seconds: if h.is_empty() {
                        0.0
                    } else {
                        h.max() as f64 / 1e6
                    },
                }
            })
            .collect();
        Timeline {
            interval_seconds: interval,
            points,
        }
    }
}

/// A run's figures per interval (`timeline` in `--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub interval_seconds: f64,
    pub points: Vec<Point>,
}

/// One interval: the answers that arrived in it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Seconds from the start of the run to the end of the interval.
    pub end_seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_second: f64,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}

/// One drawn run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub label: String,
    pub timeline: Timeline,
}

const MARKER: &str = "<!-- rivet-bench-timeline-data ";

/// The runs drawn in `svg` (none if it holds no timeline data).
pub fn series_in(svg: &str) -> anyhow::Result<Vec<Series>> {
    crate::plot::embedded(svg, MARKER, "timeline")
}

/// The CSV next to `svg`: same path with the extension `csv`.
pub fn csv_path(svg: &Path) -> PathBuf {
    svg.with_extension("csv")
}

/// `FILE.svg` for workload `label` of a compare run: `FILE-<label as a file name>.svg`.
pub fn path_for(base: &Path, label: &str) -> PathBuf {
    let mut slug = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "timeline".into());
    base.with_file_name(format!("{stem}-{slug}.svg"))
}

/// Adds `series` to the time series at `path` (replacing a run of the same label), redraws
/// it and rewrites the CSV next to it with every series.
pub fn update(path: &Path, series: Series) -> anyhow::Result<()> {
    let mut all = match std::fs::read_to_string(path) {
        Ok(svg) => series_in(&svg).with_context(|| format!("{}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    all.retain(|s| s.label != series.label);
    all.push(series);
    std::fs::write(path, render(&all)).with_context(|| format!("writing {}", path.display()))?;
    let csv = csv_path(path);
    std::fs::write(&csv, render_csv(&all)).with_context(|| format!("writing {}", csv.display()))
}

/// One line per series and interval.
pub fn render_csv(series: &[Series]) -> String {
    let mut out = String::from(
        "label,end_seconds,requests,errors,requests_per_second,p50_ms,p99_ms,max_ms\n",
    );
    for s in series {
        let label = if s.label.contains([',', '"', '\n']) {
            format!("\"{}\"", s.label.replace('"', "\"\""))
        } else {
            s.label.clone()
        };
        for p in &s.timeline.points {
            out.push_str(&format!(
                "{label},{:.3},{},{},{:.1},{:.3},{:.3},{:.3}\n",
                p.end_seconds,
                p.requests,
                p.errors,
                p.requests_per_second,
                p.p50_seconds * 1e3,
                p.p99_seconds * 1e3,
                p.max_seconds * 1e3
            ));
        }
    }
    out
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 760.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
/// The latency panel.
const TOP: f64 = 50.0;
const LATENCY_H: f64 = 400.0;
/// The throughput panel.
const GAP: f64 = 50.0;
const THROUGHPUT_H: f64 = 180.0;

fn number_label(value: f64) -> String {
    if value >= 100.0 || value == value.round() {
        format!("{value:.0}")
    } else {
        let s = format!("{value:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The SVG of `series`: latency (p50 dashed, p99 solid, max dotted; milliseconds on a log
/// axis) over time above, throughput below, with their data in a trailing comment.
pub fn render(series: &[Series]) -> String {
    let points = || series.iter().flat_map(|s| s.timeline.points.iter());
    let t_max = points()
        .map(|p| p.end_seconds)
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let t_step = nice_step(t_max, 10.0);
    let t_end = (t_max / t_step).ceil().max(1.0) * t_step;
    // Latency axis: whole decades of milliseconds around every plotted value.
    let latencies_ms = || {
        points()
            .flat_map(|p| [p.p50_seconds, p.p99_seconds, p.max_seconds])
            .filter(|v| *v > 0.0)
            .map(|v| v * 1e3)
    };
    let low = latencies_ms().fold(f64::INFINITY, f64::min).log10().floor();
    let high = latencies_ms()
        .fold(f64::NEG_INFINITY, f64::max)
        .log10()
        .ceil();
    let (low, high) = if low.is_finite() && high.is_finite() {
        (low, high.max(low + 1.0))
    } else {
        (-1.0, 2.0)
    };
    let qps_max = points()
        .map(|p| p.requests_per_second)
        .fold(0.0f64, f64::max);
    let q_step = nice_step(if qps_max > 0.0 { qps_max } else { 1.0 }, 4.0);
    let q_end = (qps_max / q_step).ceil().max(1.0) * q_step;

    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + t / t_end * plot_w;
    let y_latency = |ms: f64| {
        let d = ms.max(10f64.powf(low)).log10();
        TOP + LATENCY_H - (d - low) / (high - low) * LATENCY_H
    };
    let q_top = TOP + LATENCY_H + GAP;
    let y_qps = |q: f64| q_top + THROUGHPUT_H - q / q_end * THROUGHPUT_H;

    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n"
    );
    svg.push_str(&format!(
        "<rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>\n<text x=\"{}\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">Latency and Throughput over Time</text>\n",
        WIDTH / 2.0
    ));
    // Time grid, through both panels.
    let mut t = 0.0;
    while t <= t_end + t_step / 2.0 {
        let gx = x(t);
        for (top, h) in [(TOP, LATENCY_H), (q_top, THROUGHPUT_H)] {
            svg.push_str(&format!(
                "<line x1=\"{gx:.1}\" y1=\"{top:.1}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#dddddd\"/>\n",
                top + h
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            q_top + THROUGHPUT_H + 18.0,
            number_label(t)
        ));
        t += t_step;
    }
    // Latency decades.
    for d in (low as i32)..=(high as i32) {
        let ms = 10f64.powi(d);
        let gy = y_latency(ms);
        gridline_y(&mut svg, LEFT, plot_w, gy, &number_label(ms));
    }
    // Throughput steps.
    let mut q = 0.0;
    while q <= q_end + q_step / 2.0 {
        let gy = y_qps(q);
        gridline_y(&mut svg, LEFT, plot_w, gy, &number_label(q));
        q += q_step;
    }
    for (top, h, title) in [
        (TOP, LATENCY_H, "Latency (ms, log)"),
        (q_top, THROUGHPUT_H, "Requests/s"),
    ] {
        svg.push_str(&format!(
            "<rect x=\"{LEFT}\" y=\"{top:.1}\" width=\"{plot_w}\" height=\"{h:.1}\" fill=\"none\" stroke=\"#333333\"/>\n<text x=\"20\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 20 {:.1})\">{title}</text>\n",
            top + h / 2.0,
            top + h / 2.0
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">Time (seconds; each point is the interval ending there)</text>\n",
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0
    ));
    // Lines: each series one color; p99 solid, p50 dashed, max dotted.
    let polyline = |coords: Vec<String>, color: &str, width: f64, dash: &str| {
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\"{dash} points=\"{}\"/>\n",
            coords.join(" ")
        )
    };
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let answered: Vec<&Point> = s
            .timeline
            .points
            .iter()
            .filter(|p| p.requests > 0)
            .collect();
        for (field, width, dash) in [
            (
                (|p: &Point| p.max_seconds) as fn(&Point) -> f64,
                1.0,
                " stroke-dasharray=\"1,3\"",
            ),
            (|p: &Point| p.p50_seconds, 1.5, " stroke-dasharray=\"6,4\""),
            (|p: &Point| p.p99_seconds, 2.0, ""),
        ] {
            let coords = answered
                .iter()
                .map(|p| format!("{:.1},{:.1}", x(p.end_seconds), y_latency(field(p) * 1e3)))
                .collect();
            svg.push_str(&polyline(coords, color, width, dash));
        }
        let coords = s
            .timeline
            .points
            .iter()
            .map(|p| {
                format!(
                    "{:.1},{:.1}",
                    x(p.end_seconds),
                    y_qps(p.requests_per_second)
                )
            })
            .collect();
        svg.push_str(&polyline(coords, color, 2.0, ""));
    }
    // Legend: series, then the line styles.
    let longest = series
        .iter()
        .map(|s| s.label.chars().count())
        .max()
        .unwrap_or(10)
        .max(24) as f64;
    let rows = series.len() + 1;
    let legend_w = (longest * 7.0 + 60.0).min(plot_w - 20.0);
    svg.push_str(&format!(
        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{legend_w:.1}\" height=\"{:.1}\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#999999\"/>\n",
        LEFT + 10.0,
        TOP + 10.0,
        rows as f64 * 18.0 + 10.0
    ));
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let ly = TOP + 25.0 + i as f64 * 18.0;
        let requests: u64 = s.timeline.points.iter().map(|p| p.requests).sum();
        svg.push_str(&format!(
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{} ({requests} requests)</text>\n",
            LEFT + 18.0,
            ly - 4.0,
            LEFT + 40.0,
            ly - 4.0,
            LEFT + 46.0,
            ly,
            escape(&s.label)
        ));
    }
    let ly = TOP + 25.0 + series.len() as f64 * 18.0;
    svg.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{ly:.1}\">p99 solid, p50 dashed, max dotted</text>\n",
        LEFT + 18.0
    ));
    // The data, for the next run to overlay on.
    crate::plot::embed(&mut svg, MARKER, series);
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_hold_the_answers_that_arrived_in_them() {
        let start = Instant::now();
        let interval = Duration::from_millis(100);
        let mut a = Recorder::new(start, interval);
        let mut b = Recorder::new(start, interval);
        for i in 0..10u64 {
            a.record(
                start + Duration::from_millis(10 + i),
                Duration::from_micros(1000),
            );
        }
        b.record(
            start + Duration::from_millis(150),
            Duration::from_micros(5000),
        );
        b.error(start + Duration::from_millis(160));
        // Late: after the end of the run, counted in the last interval.
        b.record(
            start + Duration::from_millis(420),
            Duration::from_micros(100),
        );
        a.merge(&b).expect("merge");
        let timeline = a.timeline(0.25);
        assert_eq!(timeline.points.len(), 3);
        let [first, second, third] = [timeline.points[0], timeline.points[1], timeline.points[2]];
        assert_eq!(first.requests, 10);
        assert!((first.requests_per_second - 100.0).abs() < 1e-6);
        assert!((first.p99_seconds - 0.001).abs() < 0.00002, "{first:?}");
        assert_eq!((second.requests, second.errors), (1, 1));
        assert!((second.max_seconds - 0.005).abs() < 0.0001, "{second:?}");
        assert_eq!(third.requests, 1);
        assert!((third.end_seconds - 0.25).abs() < 1e-9);
        assert!((third.requests_per_second - 20.0).abs() < 1e-6, "{third:?}");
    }

    #[test]
    fn drawn_series_are_kept_in_the_svg() {
        let start = Instant::now();
        let mut r = Recorder::new(start, Duration::from_secs(1));
        r.record(start, Duration::from_micros(300));
        let series = vec![
            Series {
                label: "rivet -- round 1".into(),
                timeline: r.timeline(0.5),
            },
            Series {
                label: "etcd <&>".into(),
                timeline: r.timeline(2.5),
            },
        ];
        let svg = render(&series);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("etcd &lt;&amp;&gt;"));
        assert_eq!(series_in(&svg).expect("data"), series);
        let csv = render_csv(&series);
        assert_eq!(csv.lines().count(), 1 + 1 + 3, "{csv}");
    }

    #[test]
    fn compare_file_names() {
        assert_eq!(
            path_for(Path::new("/x/t.svg"), "put conns=100 clients=1000"),
            Path::new("/x/t-put-conns-100-clients-1000.svg")
        );
        assert_eq!(csv_path(Path::new("/x/t.svg")), Path::new("/x/t.csv"));
    }
}
