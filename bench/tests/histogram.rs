//! The summary's and the .hgrm output's math on synthetic latencies, and the plot's
//! overlay of runs.

use rivet_bench::report::{new_histogram, summarize, PERCENTILES};
use rivet_bench::{hgrm, plot};

/// Deterministic pseudo-random latencies (µs), log-uniform between 100 µs and 100 ms.
fn synthetic(n: usize) -> Vec<u64> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
            (100.0 * 1000f64.powf(unit)) as u64
        })
        .collect()
}

/// Nearest-rank percentile of sorted values.
fn exact_percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn close(a: f64, b: f64, relative: f64) -> bool {
    (a - b).abs() <= relative * b.abs().max(1e-12)
}

#[test]
fn percentiles_mean_and_stddev_of_synthetic_latencies() {
    let mut values = synthetic(20_000);
    let mut histogram = new_histogram();
    for v in &values {
        histogram.record(*v).expect("record");
    }
    values.sort_unstable();
    let n = values.len() as f64;
    let mean = values.iter().map(|v| *v as f64).sum::<f64>() / n;
    let stddev = (values
        .iter()
        .map(|v| (*v as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();

    let summary = summarize(&histogram, 3, 4.0);
    assert_eq!(summary.requests, 20_000);
    assert_eq!(summary.errors, 3);
    assert!(close(summary.requests_per_second, 5_000.0, 1e-12));
    // Three significant digits: within 0.1% (plus bucket rounding).
    assert!(
        close(summary.average_seconds, mean / 1e6, 2e-3),
        "{summary:?}"
    );
    assert!(
        close(summary.stddev_seconds, stddev / 1e6, 2e-3),
        "{summary:?}"
    );
    assert!(close(summary.fastest_seconds, values[0] as f64 / 1e6, 2e-3));
    assert!(close(
        summary.slowest_seconds,
        values[values.len() - 1] as f64 / 1e6,
        2e-3
    ));
    assert_eq!(summary.percentiles.len(), PERCENTILES.len());
    for p in &summary.percentiles {
        let exact = exact_percentile(&values, p.percentile) as f64 / 1e6;
        assert!(
            close(p.seconds, exact, 2e-3),
            "p{}: {} vs exact {exact}",
            p.percentile,
            p.seconds
        );
    }
}

#[test]
fn a_slow_tail_shows_in_the_high_percentiles() {
    let mut histogram = new_histogram();
    for i in 0..10_000u64 {
        histogram
            .record(if i % 100 == 0 { 100_000 } else { 1_000 })
            .expect("record");
    }
    let summary = summarize(&histogram, 0, 1.0);
    assert!(close(summary.at(50.0).expect("p50"), 0.001, 1e-3));
    assert!(close(summary.at(99.0).expect("p99"), 0.001, 1e-3));
    assert!(close(summary.at(99.9).expect("p99.9"), 0.1, 1e-3));
    assert!(close(summary.average_seconds, 0.00199, 1e-3));
    // Two values, 1 ms (99%) and 100 ms (1%): stddev = 99 ms × sqrt(0.99 × 0.01).
    assert!(close(
        summary.stddev_seconds,
        0.099 * (0.99f64 * 0.01).sqrt(),
        2e-3
    ));
}

#[test]
fn hgrm_output_parses_back() {
    let mut values = synthetic(5_000);
    let mut histogram = new_histogram();
    for v in &values {
        histogram.record(*v).expect("record");
    }
    values.sort_unstable();
    let text = hgrm::render(&histogram);
    assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
    let parsed = hgrm::parse(&text).expect("parses");
    assert_eq!(parsed.total_count, 5_000);
    assert!(parsed.rows.len() > 20, "{} rows", parsed.rows.len());
    let last = parsed.rows.last().expect("rows");
    assert_eq!(last.quantile, 1.0);
    assert_eq!(last.total_count, 5_000);
    for pair in parsed.rows.windows(2) {
        assert!(pair[0].quantile <= pair[1].quantile);
        assert!(pair[0].value <= pair[1].value);
        assert!(pair[0].total_count <= pair[1].total_count);
    }
    // Values are in milliseconds.
    let max_ms = values[values.len() - 1] as f64 / 1e3;
    assert!(
        close(parsed.max, max_ms, 2e-3),
        "{} vs {max_ms}",
        parsed.max
    );
    assert!(close(last.value, max_ms, 2e-3));
    assert!(close(parsed.mean, histogram.mean() / 1e3, 1e-3));
    assert!(close(parsed.stddev, histogram.stdev() / 1e3, 1e-3));
    // Each row holds the latency at its percentile (the file's 12 decimals may round
    // the iteration's quantile down past a rank), and the count up to it.
    for row in &parsed.rows {
        let exact = exact_percentile(&values, row.quantile * 100.0) as f64 / 1e3;
        let next = exact_percentile(&values, row.quantile * 100.0 + 1e-6) as f64 / 1e3;
        assert!(
            close(row.value, exact, 2e-3) || close(row.value, next, 2e-3),
            "at {}: {} vs {exact}",
            row.quantile,
            row.value
        );
        assert!(row.total_count as f64 >= (row.quantile * 5_000.0).floor());
    }
    for p in [0.5, 0.9] {
        assert!(parsed.rows.iter().any(|r| r.quantile == p), "no {p} row");
    }
    // Every line but the last has the 1/(1-Percentile) column.
    let data: Vec<&str> = text
        .lines()
        .skip(2)
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(data.len(), parsed.rows.len());
    assert!(data[..data.len() - 1]
        .iter()
        .all(|l| l.split_whitespace().count() == 4));
    assert_eq!(data[data.len() - 1].split_whitespace().count(), 3);

    let empty = hgrm::parse(&hgrm::render(&new_histogram())).expect("parses");
    assert_eq!(empty.total_count, 0);
    assert!(empty.rows.is_empty());
}

#[test]
fn plots_overlay_earlier_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latency.svg");
    let mut fast = new_histogram();
    let mut slow = new_histogram();
    for v in synthetic(2_000) {
        fast.record(v).expect("record");
        slow.record(v * 3).expect("record");
    }
    plot::update(&path, plot::Series::of("rivet put --x", &fast)).expect("first plot");
    plot::update(&path, plot::Series::of("etcd <put>", &slow)).expect("second plot");
    let svg = std::fs::read_to_string(&path).expect("svg");
    let series = plot::series_in(&svg).expect("data");
    let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["rivet put --x", "etcd <put>"]);
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains("rivet put --x (2000 requests)"));
    assert!(svg.contains("etcd &lt;put&gt;"));
    for label in ["0%", "90%", "99%", "99.9%", "99.99%"] {
        assert!(svg.contains(&format!(">{label}</text>")), "no {label} tick");
    }
    // Comments may not hold "--" but at their ends.
    let comment = &svg[svg.find("<!--").expect("comment") + 4..svg.rfind("-->").expect("end")];
    assert!(!comment.contains("--"));
    // The same label replaces its earlier run.
    plot::update(&path, plot::Series::of("etcd <put>", &fast)).expect("third plot");
    let series = plot::series_in(&std::fs::read_to_string(&path).expect("svg")).expect("data");
    assert_eq!(series.len(), 2);
    let expected = plot::Series::of("x", &fast).points;
    assert_eq!(series[1].points.len(), expected.len());
    for (got, want) in series[1].points.iter().zip(&expected) {
        assert!(close(got.0, want.0, 1e-12) && close(got.1, want.1, 1e-12));
    }
}
