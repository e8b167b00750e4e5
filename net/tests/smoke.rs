//! The first things a newcomer does: start a member, put and get with etcdctl and with
//! the `etcd-client` crate, check /health, /version and /metrics.

mod common;

use common::{etcdctl_ok, http_get, runtime, Rivet};

#[test]
fn etcdctl_put_get_and_http_endpoints() {
    let rivet = Rivet::start(&[]);
    let endpoint = rivet.endpoint();
    assert_eq!(etcdctl_ok(&endpoint, &["put", "foo", "bar"]), "OK\n");
    assert_eq!(etcdctl_ok(&endpoint, &["get", "foo"]), "foo\nbar\n");
    let health = http_get(&endpoint, "/health").expect("GET /health");
    assert!(health.ends_with("{\"health\":\"true\"}"), "{health}");
    let version = http_get(&endpoint, "/version").expect("GET /version");
    assert!(
        version.ends_with("{\"etcdserver\":\"3.4.23\",\"etcdcluster\":\"3.4.0\"}"),
        "{version}"
    );
}

#[test]
fn etcd_client_crate_round_trip() {
    let rivet = Rivet::start(&[]);
    runtime().block_on(async {
        let mut client = etcd_client::Client::connect([rivet.url()], None)
            .await
            .expect("connect");
        let put = client.put("k", "v", None).await.expect("put");
        assert_eq!(put.header().expect("header").revision(), 2);
        let get = client.get("k", None).await.expect("get");
        assert_eq!(get.kvs()[0].value(), b"v");
        assert_eq!(get.kvs()[0].create_revision(), 2);
        let counted = client
            .get(
                "",
                Some(
                    etcd_client::GetOptions::new()
                        .with_all_keys()
                        .with_count_only(),
                ),
            )
            .await
            .expect("count");
        assert_eq!(counted.count(), 1);
        assert!(counted.kvs().is_empty());
    });
}
