//! The end-of-run summary in the layout of etcd's `benchmark` tool, computed from an HDR
//! histogram of per-request latencies in microseconds, and the `--json` report.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, 1 µs to 60 s, three significant digits.
pub const LATENCY_MICROS_MAX: u64 = 60_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, 3).expect("valid histogram bounds")
}

/// Records one latency, clamped to the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, latency: std::time::Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.clamp(1, LATENCY_MICROS_MAX));
}

/// One measured part of a run: its latencies, errors and wall time.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: String,
    pub histogram: Histogram<u64>,
    pub errors: u64,
    pub seconds: f64,
}

impl Phase {
    pub fn new(name: &str) -> Phase {
        Phase {
            name: name.to_string(),
            histogram: new_histogram(),
            errors: 0,
            seconds: 0.0,
        }
    }

    pub fn summary(&self) -> Summary {
        summarize(&self.histogram, self.errors, self.seconds)
    }
}

/// The result of one workload: the measured phase its `requests` count, plus any others
/// (txn-mixed's reads and writes, watch's creation and puts).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// etcd benchmark's subcommand, e.g. `put`.
    pub command: String,
    /// The subcommand with its flags, connections, clients and total.
    pub workload: String,
    pub endpoints: Vec<String>,
    pub main: Phase,
    pub phases: Vec<Phase>,
    /// The first error seen, if any (for the reader; errors are counted in the phases).
    pub first_error: Option<String>,
    /// The main phase per interval (closed-loop workloads: put, range, txn-put, txn-mixed,
    /// lease-keepalive).
    pub timeline: Option<crate::timeline::Timeline>,
}

/// `--json`: the main phase's summary at the top level, the other phases under `phases`.
#[derive(Debug, Serialize, Deserialize)]
pub struct JsonReport {
    pub command: String,
    pub workload: String,
    pub endpoints: Vec<String>,
    #[serde(flatten)]
    pub summary: Summary,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<NamedSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<crate::timeline::Timeline>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct NamedSummary {
    pub name: String,
    #[serde(flatten)]
    pub summary: Summary,
}

impl Outcome {
    pub fn json(&self) -> JsonReport {
        JsonReport {
            command: self.command.clone(),
            workload: self.workload.clone(),
            endpoints: self.endpoints.clone(),
            summary: self.main.summary(),
            phases: self
                .phases
                .iter()
                .map(|p| NamedSummary {
                    name: p.name.clone(),
                    summary: p.summary(),
                })
                .collect(),
            first_error: self.first_error.clone(),
            timeline: self.timeline.clone(),
        }
    }

    /// etcd's text output; a workload with several phases prints each under a heading.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for phase in self.phases.iter().chain(std::iter::once(&self.main)) {
            if !self.phases.is_empty() {
                out.push_str(&format!(
                    "\n{} summary ({} ops):",
                    phase.name,
                    phase.histogram.len() + phase.errors
                ));
            }
            out.push_str(&render(&phase.summary(), &phase.histogram));
        }
        if let Some(e) = &self.first_error {
            out.push_str(&format!("\nFirst error: {e}\n"));
        }
        out
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub total_seconds: f64,
    pub slowest_seconds: f64,
    pub fastest_seconds: f64,
    pub average_seconds: f64,
    pub stddev_seconds: f64,
    pub requests_per_second: f64,
    /// 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99.
    pub percentiles: Vec<Percentile>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Percentile {
    pub percentile: f64,
    pub seconds: f64,
}

impl Summary {
    /// The latency at `percentile` (one of [`PERCENTILES`]).
    pub fn at(&self, percentile: f64) -> Option<f64> {
        self.percentiles
            .iter()
            .find(|p| p.percentile == percentile)
            .map(|p| p.seconds)
    }
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
            .map(|p| Percentile {
                percentile: *p,
                seconds: if requests == 0 {
                    0.0
                } else {
                    seconds(histogram.value_at_percentile(*p))
                },
            })
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
        for p in &summary.percentiles {
            out.push_str(&format!("  {}% in {:.4} secs.\n", p.percentile, p.seconds));
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
        let p50 = summary.at(50.0).expect("p50");
        assert!((p50 - 500e-6).abs() < 1e-6, "p50 {p50}");
        let p99 = summary.at(99.0).expect("p99");
        assert!((p99 - 990e-6).abs() < 1e-6, "p99 {p99}");
        assert_eq!(summary.fastest_seconds, 1e-6);
        assert_eq!(summary.slowest_seconds, 1000e-6);
        assert!(render(&summary, &histogram).contains("50% in 0.0005 secs."));
    }
}
