//! HdrHistogram's percentile distribution text (`.hgrm`, as Java's
//! `outputPercentileDistribution` writes it and HdrHistogram's plotter reads it), from a
//! histogram of microseconds, with values in milliseconds.

use hdrhistogram::Histogram;

/// Microseconds per output unit (milliseconds).
pub const MICROS_PER_MS: f64 = 1000.0;

/// Percentile steps per half distance to 100%, as HdrHistogram's default.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// One line of the distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Latency in milliseconds.
    pub value: f64,
    /// 0.0 to 1.0.
    pub quantile: f64,
    pub total_count: u64,
}

/// The distribution's rows: latency (ms) at each percentile step.
pub fn rows(histogram: &Histogram<u64>) -> Vec<Row> {
    if histogram.is_empty() {
        return Vec::new();
    }
    let mut total = 0u64;
    histogram
        .iter_quantiles(TICKS_PER_HALF_DISTANCE)
        .map(|step| {
            total += step.count_since_last_iteration();
            Row {
                value: step.value_iterated_to() as f64 / MICROS_PER_MS,
                quantile: step.quantile_iterated_to(),
                total_count: total,
            }
        })
        .collect()
}

/// The `.hgrm` text.
pub fn render(histogram: &Histogram<u64>) -> String {
    let digits = usize::from(histogram.sigfig());
    let mut out = format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for row in rows(histogram) {
        if row.quantile < 1.0 {
            out.push_str(&format!(
                "{:>12.digits$} {:>2.12} {:>10} {:>14.2}\n",
                row.value,
                row.quantile,
                row.total_count,
                1.0 / (1.0 - row.quantile)
            ));
        } else {
            out.push_str(&format!(
                "{:>12.digits$} {:>2.12} {:>10}\n",
                row.value, row.quantile, row.total_count
            ));
        }
    }
    let (mean, stddev, max) = if histogram.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            histogram.mean() / MICROS_PER_MS,
            histogram.stdev() / MICROS_PER_MS,
            histogram.max() as f64 / MICROS_PER_MS,
        )
    };
    out.push_str(&format!(
        "#[Mean    = {mean:>12.digits$}, StdDeviation   = {stddev:>12.digits$}]\n"
    ));
    out.push_str(&format!(
        "#[Max     = {max:>12.digits$}, Total count    = {:>12}]\n",
        histogram.len()
    ));
    out.push_str(&format!(
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]\n",
        histogram.buckets(),
        sub_buckets(histogram.sigfig())
    ));
    out
}

/// HdrHistogram's sub-bucket count: the power of two covering 2 × 10^sigfig.
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// The parsed `.hgrm` text: its rows and the footer's mean, standard deviation, maximum and
/// total count (all in the file's unit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub rows: Vec<Row>,
    pub mean: f64,
    pub stddev: f64,
    pub max: f64,
    pub total_count: u64,
}

/// Parses `.hgrm` text as written by [`render`] or by HdrHistogram.
pub fn parse(text: &str) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    let number = |s: &str| -> Result<f64, String> {
        s.trim()
            .parse::<f64>()
            .map_err(|e| format!("bad number {s:?}: {e}"))
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("Value") {
            continue;
        }
        if let Some(footer) = line.strip_prefix("#[").and_then(|l| l.strip_suffix(']')) {
            for field in footer.split(',') {
                let (name, value) = field
                    .split_once('=')
                    .ok_or_else(|| format!("bad footer field {field:?}"))?;
                match name.trim() {
                    "Mean" => parsed.mean = number(value)?,
                    "StdDeviation" => parsed.stddev = number(value)?,
                    "Max" => parsed.max = number(value)?,
                    "Total count" => parsed.total_count = number(value)? as u64,
                    _ => {}
                }
            }
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 {
            return Err(format!("bad line {line:?}"));
        }
        parsed.rows.push(Row {
            value: number(fields[0])?,
            quantile: number(fields[1])?,
            total_count: number(fields[2])? as u64,
        });
    }
    Ok(parsed)
}
