//! `rivet-bench`: a load generator for any etcd v3 endpoint (rivet or etcd), with the
//! workloads and flag names of etcd's `benchmark` tool.
//!
//! `rivet-bench --endpoints 127.0.0.1:2379 --conns 100 --clients 1000 --total 100000 put --key-size 8 --val-size 256`

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rivet_bench::cli::{Args, Command};
use rivet_bench::{compare, hgrm, memory, plot, timeline, workloads};

async fn run(args: Args) -> anyhow::Result<()> {
    if let Command::Compare(compare_args) = &args.command {
        let table = tokio::select! {
            table = compare::run(&args, compare_args) => table?,
            signal = interrupted() => anyhow::bail!("interrupted by {signal}; servers stopped"),
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&table)?);
        } else {
            print!("{}", table.text());
        }
        return Ok(());
    }
    if let Command::Memory(memory_args) = &args.command {
        let report = tokio::select! {
            report = memory::run(memory_args) => report?,
            signal = interrupted() => anyhow::bail!("interrupted by {signal}; servers stopped"),
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", report.text());
        }
        return Ok(());
    }
    if args.timeline.is_some()
        && matches!(args.command, Command::Watch(_) | Command::WatchLatency(_))
    {
        anyhow::bail!(
            "--timeline: {} has no timeline (the closed-loop workloads do)",
            args.command.name()
        );
    }
    let outcome = workloads::run(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.json())?);
    } else {
        print!("{}", outcome.text());
    }
    if let Some(path) = &args.hdr_out {
        std::fs::write(path, hgrm::render(&outcome.main.histogram))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let label = args
        .plot_label
        .clone()
        .unwrap_or_else(|| format!("{} {}", outcome.command, outcome.endpoints.join(",")));
    if let Some(path) = &args.plot {
        plot::update(path, plot::Series::of(&label, &outcome.main.histogram))?;
    }
    if let Some(path) = &args.timeline {
        let Some(points) = &outcome.timeline else {
            anyhow::bail!(
                "--timeline: {} has no timeline (the closed-loop workloads do)",
                outcome.command
            );
        };
        timeline::update(
            path,
            timeline::Series {
                label,
                timeline: points.clone(),
            },
        )?;
    }
    Ok(())
}

/// SIGINT or SIGTERM: returning drops the compare future, whose guards kill the servers.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = rivet_bench::workloads::set_user(&args) {
        eprintln!("rivet-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = rivet_bench::workloads::set_client_tls(&args) {
        eprintln!("rivet-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rivet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
