#!/usr/bin/env bash
# Reproduces the tables of etcd's performance documentation (op-guide/performance) with
# rivet and etcd 3.4 side by side: writes with 1 conn/1 client and 100 conns/1000 clients,
# to the leader and to all members; linearizable and serializable reads at 1/1 and
# 100/1000; 8-byte keys, 256-byte values; the same totals as etcd's doc.
#
#   bench/scripts/etcd-doc-tables.sh 1     # one member of each
#   bench/scripts/etcd-doc-tables.sh 3     # three members of each, on loopback
#
# Needs target/release/{rivet,rivet-bench} (cargo build --release) and etcd on PATH.
set -euo pipefail
members="${1:-1}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
bench="$root/target/release/rivet-bench"
put="put --key-size 8 --val-size 256 --sequential-keys"
workloads=(
  --workload "--target-leader --conns 1 --clients 1 --total 10000 $put"
  --workload "--target-leader --conns 100 --clients 1000 --total 100000 $put"
)
if [ "$members" -gt 1 ]; then
  workloads+=(
    --workload "--conns 1 --clients 1 --total 10000 $put"
    --workload "--conns 100 --clients 1000 --total 100000 $put"
  )
fi
for consistency in l s; do
  workloads+=(
    --workload "--conns 1 --clients 1 --total 10000 range foo --consistency $consistency"
    --workload "--conns 100 --clients 1000 --total 100000 range foo --consistency $consistency"
  )
done
set -x
"$bench" compare --members "$members" "${workloads[@]}" "${@:2}"
