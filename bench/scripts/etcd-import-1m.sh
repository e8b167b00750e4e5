#!/bin/bash
# 1 M keys (30 B keys, 178 B values) into etcd 3.4, then: rivetctl snapshot restore of its
# snapshot, and rivet started on the killed etcd member's data dir (release builds:
# cargo build --release -p rivet-net -p rivet-bench -p rivet-tools --bins). Fixed loopback
# ports 25791/25792/25802; leaves nothing behind.
set -u
root=$(cd "$(dirname "$0")/../.." && pwd); B=$root/target/release/rivet-bench; R=$root/target/release/rivet; C=$root/target/release/rivetctl
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; cd "$work"
export ETCDCTL_API=3
etcd --data-dir e1m --listen-client-urls http://127.0.0.1:25792 --advertise-client-urls http://127.0.0.1:25792 --listen-peer-urls http://127.0.0.1:25802 --initial-advertise-peer-urls http://127.0.0.1:25802 --initial-cluster default=http://127.0.0.1:25802 --quota-backend-bytes 8589934592 > e.log 2>&1 &
ep=$!
sleep 3
s=$(date +%s.%N)
$B --endpoints 127.0.0.1:25792 --conns 8 --clients 64 --total 1000000 --json put --key-size 30 --val-size 178 --key-space-size 1000000 --sequential-keys > put.json
echo "etcd load: $(python3 -c "print('%.1f s' % ($(date +%s.%N) - $s))")"
etcdctl --endpoints 127.0.0.1:25792 snapshot save e.db > /dev/null 2>&1
# a tail only in the WAL: a few thousand more puts, then kill -9
$B --endpoints 127.0.0.1:25792 --conns 1 --clients 8 --total 5000 --json put --key-size 30 --val-size 178 --key-space-size 5000 > /dev/null
kill -9 $ep; wait $ep 2>/dev/null
du -sh e1m/member/snap/db e1m/member/wal
/usr/bin/time -v $C snapshot restore e.db --data-dir restored.rivet > restore.log 2>&1
echo "rivetctl snapshot restore: $(grep 'Elapsed' restore.log | awk '{print $NF}') wall, peak RSS $(grep 'Maximum resident' restore.log | awk '{print $NF}') KB, exit $(grep 'Exit status' restore.log | awk '{print $NF}')"
/usr/bin/time -v etcdctl snapshot restore e.db --data-dir restored.etcd > etcd-restore.log 2>&1
echo "etcdctl snapshot restore (etcd's own, for comparison): $(grep 'Elapsed' etcd-restore.log | awk '{print $NF}') wall, peak RSS $(grep 'Maximum resident' etcd-restore.log | awk '{print $NF}') KB"
s=$(date +%s.%N)
$R --data-dir e1m --listen-client-urls http://127.0.0.1:25791 --advertise-client-urls http://127.0.0.1:25791 --listen-peer-urls http://127.0.0.1:25802 --initial-advertise-peer-urls http://127.0.0.1:25802 --initial-cluster default=http://127.0.0.1:25802 --quota-backend-bytes 8589934592 > r.log 2>&1 &
rp=$!
until grep -q "ready to serve client requests" r.log; do sleep 0.05; kill -0 $rp 2>/dev/null || { echo "rivet exited"; tail -5 r.log; exit 1; }; done
echo "rivet on etcd's data dir: ready after $(python3 -c "print('%.2f s' % ($(date +%s.%N) - $s))"), VmHWM $(grep VmHWM /proc/$rp/status | awk '{print $2}') KB"
grep "imported etcd's data dir" r.log | cut -c1-400
etcdctl --endpoints 127.0.0.1:25791 get "" --prefix --keys-only --limit 1 -w json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("served: count=%d revision=%d" % (d["count"], d["header"]["revision"]))'
kill $rp; wait $rp 2>/dev/null
