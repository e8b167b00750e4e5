#!/usr/bin/env bash
# Storage lifecycle figures, rivet against etcd 3.4 on the same machine and the same
# operations: a ~100 MB keyspace (100,000 puts of 1 KiB values), then
#   snapshot save (duration, file size), delete everything, compact --physical,
#   defrag (duration), and dbSize / dbSizeInUse at each step (endpoint status);
# then reads during a defragment: the keyspace loaded again, half of it deleted and
# compacted, and a rate-limited linearizable range load (RATE/s, READS requests) run
# once without and once across a defragment: p50 / p99 / slowest of both runs.
# Usage: bench/scripts/storage-lifecycle.sh [RIVET_BIN] [BENCH_BIN]
# (defaults: target/release/rivet and target/release/rivet-bench). Prints one block per
# server. Leaves nothing behind (its temp dir and servers are removed on exit).
set -euo pipefail
RIVET=${1:-target/release/rivet}
BENCH=${2:-target/release/rivet-bench}
TOTAL=${TOTAL:-100000}
VALUE=${VALUE:-1024}
RATE=${RATE:-2000}
READS=${READS:-8000}
export ETCDCTL_API=3
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

status() { etcdctl --endpoints "$1" endpoint status -w json | python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; print("dbSize=%d dbSizeInUse=%d revision=%d" % (s["dbSize"], s.get("dbSizeInUse", 0), s["header"]["revision"]))'; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print('%.2f s' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$(now)"; }

run() {
  local name=$1 ep=$2
  echo "== $name"
  "$BENCH" put --endpoints "$ep" --conns 4 --clients 32 --total "$TOTAL" --key-space-size "$TOTAL" \
    --sequential-keys --key-size 16 --val-size "$VALUE" --json > "$work/$name.put.json"
  echo "after $TOTAL puts of $VALUE B: $(status "$ep")"
  local t; t=$(now)
  etcdctl --endpoints "$ep" snapshot save "$work/$name.db" > /dev/null 2>&1
  echo "snapshot save: $(since "$t"), $(stat -c %s "$work/$name.db") bytes"
  etcdctl --endpoints "$ep" snapshot status "$work/$name.db" -w table | sed -n 4p
  local rev
  rev=$(etcdctl --endpoints "$ep" del "" --from-key -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
  echo "after delete: $(status "$ep")"
  etcdctl --endpoints "$ep" compaction --physical "$rev" > /dev/null
  echo "after compact: $(status "$ep")"
  t=$(now)
  etcdctl --endpoints "$ep" defrag --command-timeout 120s > /dev/null
  echo "defrag: $(since "$t")"
  echo "after defrag: $(status "$ep")"
  reads_during_defrag "$name" "$ep"
}

latency() { python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); p={x["percentile"]: x["seconds"] for x in s["percentiles"]}; print("p50 %.2f ms, p99 %.2f ms, slowest %.2f ms, %d errors" % (p[50.0]*1e3, p[99.0]*1e3, s["slowest_seconds"]*1e3, s["errors"]))' "$1"; }

reads_during_defrag() {
  local name=$1 ep=$2
  "$BENCH" put --endpoints "$ep" --conns 4 --clients 32 --total "$TOTAL" --key-space-size "$TOTAL" \
    --sequential-keys --key-size 16 --val-size "$VALUE" --json > /dev/null
  local half rev
  half=$(printf '%016d' $((TOTAL / 2)))
  rev=$(etcdctl --endpoints "$ep" del 0000000000000000 "$half" -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
  etcdctl --endpoints "$ep" compaction --physical "$rev" > /dev/null
  echo "reads, half the keys deleted and compacted: $(status "$ep")"
  local key; key=$(printf '%016d' $((TOTAL - 1)))
  "$BENCH" range "$key" --endpoints "$ep" --conns 4 --clients 16 --rate "$RATE" --total "$READS" --json > "$work/$name.reads.json"
  echo "reads without defrag: $(latency "$work/$name.reads.json")"
  "$BENCH" range "$key" --endpoints "$ep" --conns 4 --clients 16 --rate "$RATE" --total "$READS" --json > "$work/$name.reads-defrag.json" &
  local reader=$! t
  sleep 1
  t=$(now)
  etcdctl --endpoints "$ep" defrag --command-timeout 120s > /dev/null
  echo "defrag during reads: $(since "$t"), $(status "$ep")"
  wait "$reader"
  echo "reads across the defrag: $(latency "$work/$name.reads-defrag.json")"
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rp=$(port); rpp=$(port)
"$RIVET" --data-dir "$work/rivet" --listen-client-urls "http://127.0.0.1:$rp" --advertise-client-urls "http://127.0.0.1:$rp" \
  --listen-peer-urls "http://127.0.0.1:$rpp" --initial-advertise-peer-urls "http://127.0.0.1:$rpp" \
  --initial-cluster "default=http://127.0.0.1:$rpp" > "$work/rivet.log" 2>&1 &
pids+=($!)
ep=$(port); epp=$(port)
etcd --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
  --listen-peer-urls "http://127.0.0.1:$epp" --initial-advertise-peer-urls "http://127.0.0.1:$epp" \
  --initial-cluster "default=http://127.0.0.1:$epp" > "$work/etcd.log" 2>&1 &
pids+=($!)
for e in "127.0.0.1:$rp" "127.0.0.1:$ep"; do
  for _ in $(seq 100); do etcdctl --endpoints "$e" endpoint health > /dev/null 2>&1 && break; sleep 0.2; done
done
run rivet "127.0.0.1:$rp"
run etcd "127.0.0.1:$ep"
