#!/usr/bin/env bash
# Linearizable (or serializable) ranges under a concurrent put load, against two rivet
# binaries alternately (issue 17 item 2: do a shard's checkpoint fsyncs stall its reads?).
# usage: reads-under-puts.sh BENCH OLD NEW ROUNDS SNAPSHOT_COUNT CONSISTENCY OUTDIR
set -euo pipefail
BENCH=$1 OLD=$2 NEW=$3 ROUNDS=$4 SNAP=$5 CONS=$6 OUT=$7
mkdir -p "$OUT"
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
for round in $(seq 1 "$ROUNDS"); do
  for which in old new; do
    bin=$OLD; [ "$which" = new ] && bin=$NEW
    dir=$(mktemp -d /tmp/uringsync-reads.XXXXXX)
    cport=$(port); pport=$(port)
    "$bin" --name m1 --data-dir "$dir/data" \
      --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
      --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
      --initial-cluster "m1=http://127.0.0.1:$pport" --snapshot-count "$SNAP" > "$dir/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do etcdctl --endpoints "127.0.0.1:$cport" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
    ep=127.0.0.1:$cport
    "$BENCH" --endpoints "$ep" --conns 100 --clients 1000 --total 80000 --json put --val-size 256 > "$OUT/$which-$round-put.json" 2>/dev/null &
    putpid=$!
    sleep 1
    "$BENCH" --endpoints "$ep" --conns 100 --clients 1000 --total 40000 --json \
      --hdr-out "$OUT/$which-$round-range.hgrm" range --consistency "$CONS" key > "$OUT/$which-$round-range.json" 2>/dev/null
    wait $putpid
    cpu=$(awk '{print $14+$15}' /proc/$pid/stat)
    commit=$(curl -s "http://$ep/metrics" | grep -E '^etcd_disk_backend_commit_duration_seconds_(sum|count)' | awk '{printf "%s=%s ", $1, $2}')
    echo "$which round $round server_cpu_ticks=$cpu $commit" | tee -a "$OUT/summary.txt"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
