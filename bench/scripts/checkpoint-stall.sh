#!/usr/bin/env bash
# Three fresh members on loopback, 130,000 puts to the leader (100 conns / 1000 clients,
# 256-byte values): the run crosses the checkpoint at 100,000 entries. Prints the bench
# summary (slowest put, p99) and draws the latency per 0.1 s into DIR/stall.svg (.csv),
# one line per LABEL. Extra arguments go to every member.
#   bench/scripts/checkpoint-stall.sh LABEL DIR [rivet flags...]
#   e.g. ... default /tmp/stall; ... no-checkpoint /tmp/stall --snapshot-count 1000000
# RIVET and BENCH default to target/release/rivet and target/release/rivet-bench.
set -euo pipefail
label=$1 out=$2; shift 2
root="$(cd "$(dirname "$0")/../.." && pwd)"
rivet=${RIVET:-$root/target/release/rivet} bench=${BENCH:-$root/target/release/rivet-bench}
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
dir=$(mktemp -d /tmp/checkpoint-stall.XXXXXX); mkdir -p "$out"
pids=() cluster="" endpoints=""
for i in 0 1 2; do c[$i]=$(port); p[$i]=$(port); cluster+="${cluster:+,}m$i=http://127.0.0.1:${p[$i]}"; endpoints+="${endpoints:+,}127.0.0.1:${c[$i]}"; done
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
for i in 0 1 2; do
  "$rivet" --name "m$i" --data-dir "$dir/m$i" --listen-client-urls "http://127.0.0.1:${c[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${c[$i]}" --listen-peer-urls "http://127.0.0.1:${p[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${p[$i]}" --initial-cluster "$cluster" \
    --initial-cluster-token stall --pin-cores=false "$@" > "$dir/m$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 100); do etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
"$bench" --endpoints "$endpoints" --target-leader --conns 100 --clients 1000 --total 130000 \
  --timeline "$out/stall.svg" --plot-label "$label" --timeline-interval 0.1 \
  put --key-size 8 --val-size 256 --sequential-keys | grep -E "Requests/sec|99% in|Slowest"
grep -h "checkpoint recorded" "$dir"/m*.log | head -3 | cut -c1-120 || true
