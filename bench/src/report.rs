//! The end-of-run summary in the layout of etcd's `benchmark` tool, computed from an HDR
//! histogram of per-request latencies in microseconds.

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub total_seconds: f64,
    pub slowest_seconds: f64,
    pub fastest_seconds: f64,
    pub average_seconds: f64,
    pub stddev_seconds: f64,
    pub requests_per_second: f64,
    /// (percentile, seconds) for 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99.
    pub percentiles: Vec<(f64, f64)>,
}

pub const PERCENTILES: [f64; 9] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99];

fn seconds(micros: u64) -> f64 {
    micros as f64 / 1e6
}

pub fn summarize(histogram: &Histogram<u64>, errors: u64, total_seconds: f64) -> Summary {
    let requests = histogram.len();
    Summary {
        requests,
        errors,
        total_seconds,
        slowest_seconds: seconds(histogram.max()),
        fastest_seconds: seconds(histogram.min()),
        average_seconds: histogram.mean() / 1e6,
        stddev_seconds: histogram.stdev() / 1e6,
        requests_per_second: if total_seconds > 0.0 {
            requests as f64 / total_seconds
        } else {
            0.0
        },
        percentiles: PERCENTILES
            .iter()
            .map(|p| (*p, seconds(histogram.value_at_percentile(*p))))
            .collect(),
    }
}

/// etcd's text layout: summary, a 10-bucket histogram between fastest and slowest, the
/// latency distribution.
pub fn render(summary: &Summary, histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    out.push_str("\nSummary:\n");
    out.push_str(&format!("  Total:\t{:.4} secs.\n", summary.total_seconds));
    out.push_str(&format!(
        "  Slowest:\t{:.4} secs.\n",
        summary.slowest_seconds
    ));
    out.push_str(&format!(
        "  Fastest:\t{:.4} secs.\n",
        summary.fastest_seconds
    ));
    out.push_str(&format!(
        "  Average:\t{:.4} secs.\n",
        summary.average_seconds
    ));
    out.push_str(&format!("  Stddev:\t{:.4} secs.\n", summary.stddev_seconds));
    out.push_str(&format!(
        "  Requests/sec:\t{:.4}\n",
        summary.requests_per_second
    ));
    if summary.errors > 0 {
        out.push_str(&format!("  Errors:\t{}\n", summary.errors));
    }
    if summary.requests > 0 {
        out.push_str("\nResponse time histogram:\n");
        let low = histogram.min();
        let high = histogram.max().max(low + 1);
        let step = (high - low).div_ceil(10).max(1);
        let mut buckets = [0u64; 11];
        for value in histogram.iter_recorded() {
            let bucket = ((value.value_iterated_to().saturating_sub(low)) / step).min(10) as usize;
            buckets[bucket] += value.count_at_value();
        }
        let most = buckets.iter().copied().max().unwrap_or(1).max(1);
        for (i, count) in buckets.iter().enumerate() {
            let mark = seconds(low + step * i as u64);
            let bar = "∎".repeat((count * 40 / most) as usize);
            out.push_str(&format!("  {mark:.4} [{count}]\t|{bar}\n"));
        }
        out.push_str("\nLatency distribution:\n");
        for (p, s) in &summary.percentiles {
            out.push_str(&format!("  {p}% in {s:.4} secs.\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut histogram = Histogram::<u64>::new(3).expect("histogram");
        for micros in 1..=1000u64 {
            histogram.record(micros).expect("record");
        }
        let summary = summarize(&histogram, 0, 2.0);
        assert_eq!(summary.requests, 1000);
        assert!((summary.requests_per_second - 500.0).abs() < 1e-9);
        assert!((summary.average_seconds - 500.5e-6).abs() < 1e-7);
        let p50 = summary.percentiles[2].1;
        assert!((p50 - 500e-6).abs() < 1e-6, "p50 {p50}");
        let p99 = summary.percentiles[6].1;
        assert!((p99 - 990e-6).abs() < 1e-6, "p99 {p99}");
        assert_eq!(summary.fastest_seconds, 1e-6);
        assert_eq!(summary.slowest_seconds, 1000e-6);
        assert!(render(&summary, &histogram).contains("50% in 0.0005 secs."));
    }
}
