//! `rivet`: one member of a rivet cluster. Flags follow etcd 3.4 (`rivet --help`).

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: per-thread heaps without arena locks; glibc malloc
/// cost ~20% of the server's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use rivet_net::config::{normalize_args, Flags};

/// The `ETCD_*` variables rivet reads; any other one is reported, as etcd does.
const KNOWN_ENV: &[&str] = &[
    "ETCD_NAME",
    "ETCD_DATA_DIR",
    "ETCD_WAL_DIR",
    "ETCD_LISTEN_CLIENT_URLS",
    "ETCD_ADVERTISE_CLIENT_URLS",
    "ETCD_MAX_REQUEST_BYTES",
    "ETCD_MAX_TXN_OPS",
    "ETCD_QUOTA_BACKEND_BYTES",
    "ETCD_SNAPSHOT_COUNT",
    "ETCD_LOG_LEVEL",
    "ETCD_AUTO_COMPACTION_RETENTION",
    "ETCD_AUTO_COMPACTION_MODE",
    "ETCD_MAX_SNAPSHOTS",
    "ETCD_MAX_WALS",
];

fn log_filter(level: &str) -> Option<&'static str> {
    match level {
        "debug" => Some("debug"),
        "info" => Some("info"),
        "warn" => Some("warn"),
        "error" | "panic" | "fatal" => Some("error"),
        _ => None,
    }
}

fn main() -> ExitCode {
    let flags = match Flags::try_parse_from(normalize_args(std::env::args())) {
        Ok(flags) => flags,
        Err(e) => e.exit(),
    };
    if flags.version {
        println!("rivet Version: {}", env!("CARGO_PKG_VERSION"));
        println!("etcd API Version: {}", rivet_net::services::ETCD_VERSION);
        return ExitCode::SUCCESS;
    }
    let Some(filter) = log_filter(&flags.log_level) else {
        eprintln!(
            "rivet: invalid --log-level {:?}: only debug, info, warn, error, panic, or fatal",
            flags.log_level
        );
        return ExitCode::FAILURE;
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RIVET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for (name, value) in std::env::vars() {
        if name.starts_with("ETCD_") && !KNOWN_ENV.contains(&name.as_str()) {
            tracing::warn!("unrecognized environment variable {name}={value}");
        }
    }
    match rivet_net::server::run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rivet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
