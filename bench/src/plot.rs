//! `--plot FILE.svg`: latency by percentile, drawn by hand as SVG, with the x axis
//! log-scaled in 1/(1-percentile) like HdrHistogram's plots (0%, 90%, 99%, 99.9%, …). The
//! plotted runs are kept in a comment inside the SVG, so each new run is overlaid on the
//! ones before it, with a legend.

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::hgrm;

/// One plotted run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub label: String,
    pub requests: u64,
    /// (quantile 0..=1, latency in milliseconds).
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn of(label: &str, histogram: &Histogram<u64>) -> Series {
        Series {
            label: label.to_string(),
            requests: histogram.len(),
            points: hgrm::rows(histogram)
                .into_iter()
                .map(|row| (row.quantile, row.value))
                .collect(),
        }
    }
}

const MARKER: &str = "<!-- rivet-bench-plot-data ";

/// The runs plotted in `svg` (none if it holds no rivet-bench data).
pub fn series_in(svg: &str) -> anyhow::Result<Vec<Series>> {
    embedded(svg, MARKER, "plot")
}

/// The series a plot keeps after `marker` in a trailing XML comment, so that the next run
/// can overlay on them (the percentile plot and the timeline both do); none if there is
/// no such comment.
pub(crate) fn embedded<T: serde::de::DeserializeOwned>(
    svg: &str,
    marker: &str,
    what: &str,
) -> anyhow::Result<Vec<T>> {
    #[derive(Deserialize)]
    struct Data<T> {
        series: Vec<T>,
    }
    let Some(start) = svg.find(marker) else {
        return Ok(Vec::new());
    };
    let rest = &svg[start + marker.len()..];
    let end = rest
        .find("-->")
        .with_context(|| format!("unterminated {what} data comment"))?;
    let data: Data<T> = serde_json::from_str(rest[..end].trim())
        .with_context(|| format!("reading the {what} data comment"))?;
    Ok(data.series)
}

/// Ends `svg` with `series` in the comment [`embedded`] reads, and the closing tag.
pub(crate) fn embed<T: Serialize>(svg: &mut String, marker: &str, series: &[T]) {
    #[derive(Serialize)]
    struct Data<'a, T> {
        series: &'a [T],
    }
    // "--" may not appear in an XML comment.
    let data = serde_json::to_string(&Data { series })
        .expect("plot data serializes")
        .replace("--", "-\\u002d");
    svg.push_str(&format!("{marker}{data} -->\n</svg>\n"));
}

/// Adds `series` to the plot at `path` (replacing a run of the same label) and redraws it.
pub fn update(path: &Path, series: Series) -> anyhow::Result<()> {
    let mut all = match std::fs::read_to_string(path) {
        Ok(svg) => series_in(&svg).with_context(|| format!("{}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    all.retain(|s| s.label != series.label);
    all.push(series);
    std::fs::write(path, render(&all)).with_context(|| format!("writing {}", path.display()))
}

pub(crate) const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// log10(1/(1-q)): 0 at 0%, 1 at 90%, 2 at 99%, ….
fn decades_of(quantile: f64, max_decades: f64) -> f64 {
    (1.0 / (1.0 - quantile)).log10().clamp(0.0, max_decades)
}

fn percent_label(decade: u32) -> String {
    match decade {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        // 1 - 10^-decade as a percentage: 99%, 99.9%, 99.99%, …
        _ => format!(
            "99{}{}%",
            if decade > 2 { "." } else { "" },
            "9".repeat(decade as usize - 2)
        ),
    }
}

/// A horizontal gridline at `y` across a plot area `width` wide that starts at `left`,
/// with `label` to its left (both plots draw their value axes so).
pub(crate) fn gridline_y(svg: &mut String, left: f64, width: f64, y: f64, label: &str) {
    svg.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#dddddd\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>\n",
        left + width,
        left - 6.0,
        y + 4.0,
    ));
}

/// A round step for about `parts` gridlines up to `max`.
pub(crate) fn nice_step(max: f64, parts: f64) -> f64 {
    let raw = (max / parts).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn number_label(value: f64, step: f64) -> String {
    let decimals = (0..6)
        .find(|d| {
            let scaled = step * 10f64.powi(*d);
            (scaled - scaled.round()).abs() < 1e-9 * scaled.max(1.0)
        })
        .unwrap_or(6) as usize;
    format!("{value:.decimals$}")
}

/// The SVG of `series`, with their data in a trailing comment.
pub fn render(series: &[Series]) -> String {
    let finite_max = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, _)| (1.0 / (1.0 - q)).log10())
        .fold(0.0f64, f64::max);
    let decades = finite_max.ceil().clamp(4.0, 6.0);
    let max_ms = series
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|(_, v)| *v)
        .fold(0.0f64, f64::max);
    let step = nice_step(if max_ms > 0.0 { max_ms } else { 1.0 }, 6.0);
    let y_max = (max_ms / step).ceil().max(1.0) * step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |d: f64| LEFT + d / decades * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_max * plot_h;

    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n"
    );
    svg.push_str(&format!(
        "<rect width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"white\"/>\n<text x=\"{}\" y=\"28\" text-anchor=\"middle\" font-size=\"16\">Latency by Percentile Distribution</text>\n",
        WIDTH / 2.0
    ));
    // Grid and axes.
    for decade in 0..=(decades as u32) {
        let gx = x(f64::from(decade));
        svg.push_str(&format!(
            "<line x1=\"{gx:.1}\" y1=\"{TOP}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#dddddd\"/>\n<text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            TOP + plot_h,
            TOP + plot_h + 18.0,
            percent_label(decade)
        ));
    }
    let mut tick = 0.0;
    while tick <= y_max + step / 2.0 {
        let gy = y(tick);
        gridline_y(&mut svg, LEFT, plot_w, gy, &number_label(tick, step));
        tick += step;
    }
    svg.push_str(&format!(
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#333333\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">Percentile</text>\n<text x=\"20\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 20 {:.1})\">Latency (milliseconds)</text>\n",
        LEFT + plot_w / 2.0,
        HEIGHT - 22.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    ));
    // Lines; 100% has no place on the axis (as in HdrHistogram's plots), and the last
    // step before it already holds the maximum.
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|(q, _)| *q < 1.0)
            .map(|(q, v)| format!("{:.1},{:.1}", x(decades_of(*q, decades)), y(*v)))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            points.join(" ")
        ));
    }
    // Legend, top left inside the plot.
    if !series.is_empty() {
        let longest = series
            .iter()
            .map(|s| s.label.chars().count() + 16)
            .max()
            .unwrap_or(10) as f64;
        let legend_w = (longest * 7.0 + 40.0).min(plot_w - 20.0);
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{legend_w:.1}\" height=\"{:.1}\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#999999\"/>\n",
            LEFT + 10.0,
            TOP + 10.0,
            series.len() as f64 * 18.0 + 10.0
        ));
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let ly = TOP + 25.0 + i as f64 * 18.0;
            svg.push_str(&format!(
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{} ({} requests)</text>\n",
                LEFT + 18.0,
                ly - 4.0,
                LEFT + 40.0,
                ly - 4.0,
                LEFT + 46.0,
                ly,
                escape(&s.label),
                s.requests
            ));
        }
    }
    // The data, for the next run to overlay on.
    embed(&mut svg, MARKER, series);
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_labels() {
        let labels: Vec<String> = (0..=5).map(percent_label).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(0.9, 6.0), 0.2);
        assert_eq!(nice_step(130.0, 6.0), 25.0);
    }
}
