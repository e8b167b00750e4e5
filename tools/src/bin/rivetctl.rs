//! rivetctl: rivet's command-line tool, with etcdctl 3.4's commands, flag names and
//! output. For now the offline snapshot commands:
//!
//! ```text
//! rivetctl snapshot status FILE [-w simple|table|json|fields]
//! rivetctl snapshot restore FILE [--data-dir D] [--wal-dir W] [--name N]
//!     [--initial-cluster C] [--initial-cluster-token T]
//!     [--initial-advertise-peer-urls U] [--skip-hash-check]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rivet_engine::etcd_backend::snapshot_file::file_status;
use rivet_tools::snapshot::{restore_data_dir, status_output, RestoreOptions, WriteOut};

/// etcdctl's exit codes.
const EXIT_ERROR: u8 = 1;
const EXIT_BAD_FEATURE: u8 = 4;
const EXIT_BAD_ARGS: u8 = 128;

#[derive(Parser, Debug)]
#[command(
    name = "rivetctl",
    about = "A simple command line client for rivet (etcdctl's commands and flags).",
    version
)]
struct Cli {
    /// Set the output format (fields, json, protobuf, simple, table).
    #[arg(
        short = 'w',
        long = "write-out",
        env = "ETCDCTL_WRITE_OUT",
        default_value = "simple",
        global = true
    )]
    write_out: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manages etcd node snapshots.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Gets backend snapshot status of a given file.
    Status {
        /// The snapshot file.
        files: Vec<PathBuf>,
    },
    /// Restores an etcd member snapshot to a rivet data directory.
    Restore {
        /// The snapshot file.
        files: Vec<PathBuf>,
        /// Path to the data directory.
        #[arg(long = "data-dir")]
        data_dir: Option<PathBuf>,
        /// Path to the WAL directory (use --data-dir if none given).
        #[arg(long = "wal-dir")]
        wal_dir: Option<PathBuf>,
        /// Human-readable name for this member.
        #[arg(long, default_value = "default")]
        name: String,
        /// Initial cluster configuration for restore bootstrap.
        #[arg(
            long = "initial-cluster",
            default_value = "default=http://localhost:2380"
        )]
        initial_cluster: String,
        /// Initial cluster token for the etcd cluster during restore bootstrap.
        #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// List of this member's peer URLs to advertise to the rest of the cluster.
        #[arg(
            long = "initial-advertise-peer-urls",
            default_value = "http://localhost:2380"
        )]
        initial_advertise_peer_urls: String,
        /// Ignore snapshot integrity hash value (required if copied from data directory).
        #[arg(long = "skip-hash-check")]
        skip_hash_check: bool,
        /// rivet's own: shard cores the data dir is partitioned for (default: cores - 1,
        /// at least 1, as rivet's --shards; rivet started on the dir takes this count).
        #[arg(long)]
        shards: Option<usize>,
    },
}

/// etcdctl prints "Error: …" on stderr and exits with a code saying what went wrong.
fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("Error: {message}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Snapshot {
            command: SnapshotCommand::Status { files },
        } => {
            let [file] = files.as_slice() else {
                return fail(
                    EXIT_BAD_ARGS,
                    "snapshot status requires exactly one argument",
                );
            };
            let format = match WriteOut::parse(&cli.write_out) {
                Ok(format) => format,
                Err(e) => return fail(EXIT_BAD_FEATURE, e),
            };
            match file_status(file) {
                Ok(status) => {
                    print!("{}", status_output(&status, format));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_ERROR, e),
            }
        }
        Command::Snapshot {
            command:
                SnapshotCommand::Restore {
                    files,
                    data_dir,
                    wal_dir,
                    name,
                    initial_cluster,
                    initial_cluster_token,
                    initial_advertise_peer_urls,
                    skip_hash_check,
                    shards,
                },
        } => {
            let [file] = files.as_slice() else {
                return fail(
                    EXIT_BAD_ARGS,
                    "snapshot restore requires exactly one argument",
                );
            };
            let options = RestoreOptions {
                snapshot: file.clone(),
                data_dir,
                wal_dir,
                name,
                initial_cluster,
                initial_cluster_token,
                initial_advertise_peer_urls,
                skip_hash_check,
            };
            let shards = shards.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .saturating_sub(1)
                    .max(1)
            });
            match restore_data_dir(&options, shards) {
                Ok(summary) => {
                    eprintln!(
                        "restored snapshot {} into {} (wal {}): revision {}, {} puts, {} tombstones, {} leases, {} members, {} shards",
                        file.display(),
                        summary.data_dir.display(),
                        summary.wal_dir.display(),
                        summary.revision,
                        summary.puts,
                        summary.tombstones,
                        summary.state.leases.len(),
                        summary.initial_cluster.len(),
                        shards
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_ERROR, e),
            }
        }
    }
}
