//! Every rivet-bench workload, briefly, against a rivet started by the test (built first
//! if target/<profile>/rivet is missing).

mod common;

use rivet_bench::servers::Kind;

#[test]
fn every_subcommand_against_rivet() {
    let rivet = common::start(Kind::Rivet);
    let scratch = tempfile::tempdir().expect("tempdir");
    common::every_subcommand(&rivet.endpoints()[0], scratch.path());
}
