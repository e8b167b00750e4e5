//! `rivet`: one member of a rivet cluster. Flags follow etcd 3.4 (`rivet --help`).

use std::process::ExitCode;

/// Turns transparent huge pages off for this process, as `mimalloc`'s `no_thp` feature does
/// for its own mappings: with THP set to `always`, every 2 MiB the heap touches would be
/// resident whole, and an idle member's memory would not follow its load. The first
/// allocations (before `main`) may already sit in huge pages; the kernel stops making new
/// ones from here on. An error (an old kernel) leaves THP as the system has it.
fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// mimalloc instead of glibc malloc: per-thread heaps without arena locks; glibc malloc
/// cost ~20% of the server's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use rivet_net::config::{help, Flags, Status, Stop, UNSET_ADVERTISE_CLIENT_URLS};
use rivet_net::logging;

/// etcd's "error verifying flags" line, in the logger's form when one is set up.
fn log_invalid(error: &str, logger_ready: bool) {
    if logger_ready && logging::is_zap() {
        tracing::warn!(target: "rivet", error, "failed to verify flags");
        if error == UNSET_ADVERTISE_CLIENT_URLS {
            tracing::warn!(target: "rivet", error, "advertise client URLs are not set");
        }
        return;
    }
    let mut text = logging::capnslog_line(
        'E',
        "etcdmain",
        &format!("error verifying flags, {error}. See 'rivet --help'."),
    );
    if error == UNSET_ADVERTISE_CLIENT_URLS {
        text.push_str(&logging::capnslog_line(
            'E',
            "etcdmain",
            "When listening on specific address(es), this etcd process must advertise accessible url(s) to each connected client.",
        ));
    }
    eprint!("{text}");
}

/// Logs once, at start, each flag that was given a value rivet does not act on.
fn log_not_implemented(flags: &Flags) {
    for (spec, value) in flags.not_implemented() {
        match spec.status {
            Status::Later(part) => tracing::warn!(
                target: "rivet",
                flag = spec.name,
                value,
                "--{} is accepted but not implemented yet in rivet (it comes with {part}); it has no effect",
                spec.name
            ),
            Status::NoEffect(reason) => tracing::warn!(
                target: "rivet",
                flag = spec.name,
                value,
                "--{} has no effect in rivet: {reason}",
                spec.name
            ),
            Status::Implemented => {}
        }
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let loaded = match Flags::load(&args, &env) {
        Ok(loaded) => loaded,
        Err((stop, early)) => {
            logging::write_early(&early);
            return match stop {
                Stop::Help => {
                    eprint!("{}", help::usage());
                    print!("{}", help::flags());
                    ExitCode::SUCCESS
                }
                Stop::Version => {
                    println!("rivet Version: {}", env!("CARGO_PKG_VERSION"));
                    println!("etcd API Version: {}", rivet_net::services::ETCD_VERSION);
                    ExitCode::SUCCESS
                }
                Stop::Usage(message) => {
                    eprintln!("{message}");
                    eprint!("{}", help::usage());
                    ExitCode::from(2)
                }
                Stop::Invalid(message) => {
                    log_invalid(&message, false);
                    ExitCode::FAILURE
                }
                Stop::Fatal(message) => {
                    eprint!("{}", logging::capnslog_line('C', "pkg/flags", &message));
                    ExitCode::FAILURE
                }
                Stop::Raw(message) => {
                    eprintln!("{message}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    logging::write_early(&loaded.early);
    let mut flags = loaded.flags;
    if let Err(e) = logging::init(&flags) {
        if flags.from_config_file {
            logging::write_early(&[rivet_net::config::config_file_line(&flags.config_file)]);
        }
        log_invalid(&e, false);
        return ExitCode::FAILURE;
    }
    // From here on a panic on any thread (a shard core, the raft core, a helper) logs
    // and ends the process non-zero, so a supervisor restarts the member.
    rivet_engine::crash::install_panic_hook();
    if flags.from_config_file {
        if logging::is_zap() {
            tracing::info!(
                target: "rivet",
                path = flags.config_file.as_str(),
                "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided"
            );
        } else {
            tracing::info!(
                target: "rivet",
                "Loading server configuration from {:?}. Other configuration command line flags and environment variables will be ignored if provided.",
                flags.config_file
            );
        }
    }
    if let Err(e) = flags.validate() {
        log_invalid(&e, true);
        return ExitCode::FAILURE;
    }
    flags.update_default_cluster_from_name();
    if flags.data_dir.is_empty() {
        let data_dir = flags.data_dir_or_default();
        if logging::is_zap() {
            tracing::warn!(target: "rivet", data_dir = data_dir.as_str(), "'data-dir' was empty; using default");
        } else {
            tracing::warn!(target: "rivet", "no data-dir provided, using default data-dir ./{data_dir}");
        }
    }
    log_not_implemented(&flags);
    match rivet_net::server::run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(target: "rivet", "{e:#}");
            ExitCode::FAILURE
        }
    }
}
