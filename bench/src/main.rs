//! `rivet-bench`: a load generator for any etcd v3 endpoint (rivet or etcd), with the
//! workloads and flag names of etcd's `benchmark` tool.
//!
//! `rivet-bench --endpoints 127.0.0.1:2379 --conns 100 --clients 1000 --total 100000 put --key-size 8 --val-size 256`

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use rivet_bench::cli::Args;
use rivet_bench::{hgrm, plot, workloads};

async fn run(args: Args) -> anyhow::Result<()> {
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
    if let Some(path) = &args.plot {
        let label = args
            .plot_label
            .clone()
            .unwrap_or_else(|| format!("{} {}", outcome.command, outcome.endpoints.join(",")));
        plot::update(path, plot::Series::of(&label, &outcome.main.histogram))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
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
