//! Every rivet-bench workload, briefly, against a real etcd started by the test.

mod common;

use rivet_bench::servers::Kind;

#[test]
fn every_subcommand_against_etcd() {
    let etcd = common::start(Kind::Etcd);
    let scratch = tempfile::tempdir().expect("tempdir");
    common::every_subcommand(&etcd.endpoints()[0], scratch.path());
}
