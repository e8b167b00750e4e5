//! A progress bar on stderr, drawn by hand every 100 ms from a shared counter; only when
//! stderr is a terminal and the output is not `--json`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Progress {
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    drawer: Option<JoinHandle<()>>,
}

const WIDTH: usize = 30;

/// Whether a progress bar may be drawn: stderr is a terminal and stdout is not JSON.
pub fn wanted(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// One line of the bar, e.g. `put [=========>          ] 3000/10000  30%  2561/s`.
pub fn line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    let fraction = if total == 0 {
        1.0
    } else {
        (done as f64 / total as f64).min(1.0)
    };
    let filled = (fraction * WIDTH as f64) as usize;
    let mut bar = "=".repeat(filled);
    if filled < WIDTH {
        bar.push('>');
        bar.push_str(&" ".repeat(WIDTH - filled - 1));
    }
    let rate = if elapsed.as_secs_f64() > 0.0 {
        done as f64 / elapsed.as_secs_f64()
    } else {
        0.0
    };
    format!(
        "{label} [{bar}] {done}/{total} {:>3.0}% {rate:>8.0}/s",
        fraction * 100.0
    )
}

impl Progress {
    /// Starts drawing if `enabled`; the counter is counted either way.
    pub fn start(label: &str, total: u64, enabled: bool) -> Progress {
        Progress::start_with(label, total, enabled, Arc::new(AtomicU64::new(0)))
    }

    /// Starts drawing if `enabled`, from a counter counted elsewhere.
    pub fn start_with(label: &str, total: u64, enabled: bool, done: Arc<AtomicU64>) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let drawer = enabled.then(|| {
            let done = Arc::clone(&done);
            let stop = Arc::clone(&stop);
            let label = label.to_string();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut stderr = std::io::stderr();
                loop {
                    let finished = stop.load(Ordering::Relaxed);
                    let text = line(
                        &label,
                        done.load(Ordering::Relaxed),
                        total,
                        started.elapsed(),
                    );
                    let _ = write!(stderr, "\r\x1b[2K{text}");
                    let _ = stderr.flush();
                    if finished {
                        let _ = write!(stderr, "\r\x1b[2K");
                        let _ = stderr.flush();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        });
        Progress { done, stop, drawer }
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.done)
    }

    pub fn add(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    /// Stops the drawer and clears its line.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(drawer) = self.drawer.take() {
            let _ = drawer.join();
        }
    }
}
