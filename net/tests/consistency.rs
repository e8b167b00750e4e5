//! Reads see one revision across shards (ETCD_LESSONS 10): writers replace eight keys,
//! which hash to different shards, in single txns while readers read them with read-only
//! txns (linearizable and serializable) and ranges. Every read must see all eight keys
//! from the same write — never some keys from one txn and some from the next.

mod common;

use common::{runtime, Rivet};
use etcd_client::{Client, GetOptions, Txn, TxnOp, TxnOpResponse};

const KEYS: usize = 8;
const WRITERS: usize = 2;
const WRITES_PER_WRITER: usize = 300;
const READERS: usize = 3;

fn key(i: usize) -> String {
    format!("k{i}")
}

/// The values of one read, in key order; all must be equal.
fn check_one_write(values: &[String], what: &str) {
    assert_eq!(values.len(), KEYS, "{what}: {values:?}");
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "{what} mixes writes: {values:?}"
    );
}

#[test]
fn reads_never_mix_two_writes_across_shards() {
    let rivet = Rivet::start(&["--shards", "3"]);
    let shards: std::collections::BTreeSet<usize> = (0..KEYS)
        .map(|i| rivet_engine::keyspace::shard_of(key(i).as_bytes(), 3))
        .collect();
    assert_eq!(shards.len(), 3, "the keys must span every shard");
    runtime().block_on(async {
        let mut setup = Client::connect([rivet.url()], None).await.expect("connect");
        let first: Vec<TxnOp> = (0..KEYS)
            .map(|i| TxnOp::put(key(i), "start", None))
            .collect();
        setup
            .txn(Txn::new().and_then(first))
            .await
            .expect("first write");

        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let url = rivet.url();
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect([url], None).await.expect("connect");
                for n in 0..WRITES_PER_WRITER {
                    let value = format!("w{writer}-{n}");
                    let ops: Vec<TxnOp> = (0..KEYS)
                        .map(|i| TxnOp::put(key(i), value.clone(), None))
                        .collect();
                    c.txn(Txn::new().and_then(ops)).await.expect("write");
                }
                0usize
            }));
        }
        for reader in 0..READERS {
            let url = rivet.url();
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect([url], None).await.expect("connect");
                let mut reads = 0;
                let mut last_revision = 0;
                loop {
                    let serializable = reads % 2 == 1;
                    let get = |i: usize| {
                        let options = if serializable {
                            GetOptions::new().with_serializable()
                        } else {
                            GetOptions::new()
                        };
                        TxnOp::get(key(i), Some(options))
                    };
                    let ops: Vec<TxnOp> = (0..KEYS).map(get).collect();
                    let response = c.txn(Txn::new().and_then(ops)).await.expect("read txn");
                    let values: Vec<String> = response
                        .op_responses()
                        .iter()
                        .map(|op| match op {
                            TxnOpResponse::Get(get) => {
                                get.kvs()[0].value_str().expect("utf8").to_string()
                            }
                            other => panic!("unexpected {other:?}"),
                        })
                        .collect();
                    check_one_write(&values, &format!("reader {reader}'s read-only txn"));

                    let range = c
                        .get("k", Some(GetOptions::new().with_prefix()))
                        .await
                        .expect("range");
                    let revision = range.header().expect("header").revision();
                    assert!(revision >= last_revision, "revisions went back");
                    last_revision = revision;
                    let values: Vec<String> = range
                        .kvs()
                        .iter()
                        .map(|kv| kv.value_str().expect("utf8").to_string())
                        .collect();
                    check_one_write(&values, &format!("reader {reader}'s range"));
                    assert!(
                        range
                            .kvs()
                            .iter()
                            .all(|kv| kv.mod_revision() == range.kvs()[0].mod_revision()),
                        "one write, one mod revision"
                    );
                    reads += 1;
                    let done = values[0] == format!("w0-{}", WRITES_PER_WRITER - 1)
                        || values[0] == format!("w1-{}", WRITES_PER_WRITER - 1);
                    if done && reads > 10 {
                        return reads;
                    }
                }
            }));
        }
        let mut reads = 0;
        for task in tasks {
            reads += task.await.expect("task");
        }
        assert!(
            reads > READERS * 10,
            "the readers read while the writers wrote"
        );
        println!(
            "{reads} consistent reads during {} writes",
            WRITERS * WRITES_PER_WRITER
        );
    });
}
