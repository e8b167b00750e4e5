#!/usr/bin/env bash
# Reproduces the tables of etcd's performance documentation (op-guide/performance) with
# rivet and etcd 3.4 side by side: writes with 1 conn/1 client and 100 conns/1000 clients,
# to the leader and to all members; linearizable and serializable reads at 1/1 and
# 100/1000; 8-byte keys, 256-byte values; the same totals as etcd's doc.
#
#   bench/scripts/etcd-doc-tables.sh 1     # one member of each
#   bench/scripts/etcd-doc-tables.sh 3     # three members of each, on loopback
#
# Plots go to $PLOTS (default target/bench-plots/doc-tables-<members>m-<UTC time>/):
# latency.svg (latency by percentile, every run), and per workload
# timeline-<workload>.svg and .csv (p50/p99/max latency and throughput per second, rivet
# and etcd on one plot), for the report to link.
#
# Needs target/release/{rivet,rivet-bench} (cargo build --release) and etcd on PATH.
set -euo pipefail
members="${1:-1}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
bench="$root/target/release/rivet-bench"
plots="${PLOTS:-$root/target/bench-plots/doc-tables-${members}m-$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$plots"
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
"$bench" --plot "$plots/latency.svg" --timeline "$plots/timeline.svg" \
  compare --members "$members" "${workloads[@]}" "${@:2}"
set +x
echo "plots: $plots" >&2
ls "$plots" >&2
