//! A server process's CPU time (utime + stime from /proc/PID/stat) and peak resident set
//! size (VmHWM from /proc/PID/status).

use anyhow::Context;

/// Clock ticks per second of /proc's times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime in seconds, from the text of /proc/PID/stat.
pub fn parse_cpu_seconds(stat: &str) -> anyhow::Result<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from the
    // last ')'. utime and stime are fields 14 and 15, i.e. 12 and 13 after the name.
    let after = &stat[stat.rfind(')').context("no ')' in /proc/PID/stat")? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) as f64 / ticks_per_second())
}

pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_seconds(&stat)
}

/// VmHWM in bytes, from the text of /proc/PID/status.
pub fn parse_peak_rss(status: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/PID/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("no VmHWM value")?
        .parse()?;
    Ok(kib * 1024)
}

pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_peak_rss(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat =
            "1234 (etcd (x) y) S 1 1234 1234 0 -1 4194560 2048 0 0 0 250 50 0 0 20 0 12 0 100 0 0";
        let seconds = parse_cpu_seconds(stat).expect("stat");
        assert!((seconds - 300.0 / ticks_per_second()).abs() < 1e-9);
        let status = "Name:\tetcd\nVmPeak:\t  100 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_peak_rss(status).expect("status"), 2048 * 1024);
        assert!(cpu_seconds(std::process::id()).is_ok());
        assert!(peak_rss_bytes(std::process::id()).expect("own VmHWM") > 0);
    }
}
