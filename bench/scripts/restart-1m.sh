#!/usr/bin/env bash
# Restart time with 1 M keys, rivet against etcd 3.4 on the same machine: both loaded
# through the API with the same keys (30 B keys, 178 B values, KEYS of them), then, for
# ROUNDS rounds alternating rivet, etcd, rivet, etcd, …: start the server, write 2,000
# more puts (so that the restart replays a WAL tail past the last checkpoint / snapshot),
# kill -9, start it again and time until `etcdctl get k --consistency=l` answers. Prints
# per restart: wall seconds, the process's CPU seconds when it first answered (user +
# system: what the start itself cost, which a shared machine does not inflate) and RSS.
#
# KEYS (default 1000000) and VAL_SIZE (default 178) set the data; ROUNDS the restarts.
# PROBE=1 also measures, on each loaded server, put and linearizable range latency at
# that scale (100 conns / 1000 clients, 200,000 requests each: puts overwrite random keys
# of the loaded key space, ranges read one loaded key), to compare p99 at 100 k keys
# (KEYS=100000) with p99 at 10 M keys.
#
# Usage: bench/scripts/restart-1m.sh [RIVET_BIN] [BENCH_BIN] [WORKDIR]
# (defaults: target/release/rivet, target/release/rivet-bench, a temp dir removed at the
# end). With a WORKDIR that already holds loaded data dirs (rivet.data, etcd.data), the
# load is skipped, so several builds can be timed on the same data.
set -euo pipefail
RIVET=${1:-target/release/rivet}
BENCH=${2:-target/release/rivet-bench}
WORK=${3:-}
KEYS=${KEYS:-1000000}
ROUNDS=${ROUNDS:-3}
VAL_SIZE=${VAL_SIZE:-178}
PROBE=${PROBE:-0}
export ETCDCTL_API=3
keep=1
if [ -z "$WORK" ]; then WORK=$(mktemp -d); keep=0; fi
pid=""
ep=""
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [ "$keep" = 0 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

start_server() { # kind -> sets pid and ep (each kind keeps its ports: the member ID comes from them)
  case $1 in rivet) set -- rivet 23792 23802 ;; etcd) set -- etcd 23793 23803 ;; esac
  ep=127.0.0.1:$2
  local kind=$1 client=$2 peer=$3
  local common="--quota-backend-bytes 8589934592 --listen-client-urls http://127.0.0.1:$client --advertise-client-urls http://127.0.0.1:$client --listen-peer-urls http://127.0.0.1:$peer --initial-advertise-peer-urls http://127.0.0.1:$peer --initial-cluster default=http://127.0.0.1:$peer"
  if [ "$kind" = rivet ]; then
    # shellcheck disable=SC2086
    "$RIVET" --name default --data-dir "$WORK/rivet.data" $common > "$WORK/rivet.log" 2>&1 &
  else
    # shellcheck disable=SC2086
    etcd --name default --data-dir "$WORK/etcd.data" $common > "$WORK/etcd.log" 2>&1 &
  fi
  pid=$!
}
wait_linearizable() {
  # First the listening port (a connection refused would put etcdctl's gRPC dial into
  # its one-second reconnect backoff and add up to a second to what is measured), then a
  # linearizable get.
  until python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "${ep##*:}" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "the server stopped" >&2; exit 1; }
    sleep 0.01
  done
  until etcdctl --endpoints "$ep" --command-timeout=2s get k --consistency=l > /dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { echo "the server stopped" >&2; exit 1; }
    sleep 0.02
  done
}
put() { # total
  "$BENCH" --endpoints "$ep" --conns 100 --clients 1000 --total "$1" --json \
    put --key-size 30 --val-size "$VAL_SIZE" --key-space-size "$KEYS" --sequential-keys > /dev/null
}

for kind in rivet etcd; do
  if [ ! -d "$WORK/$kind.data" ]; then
    start_server "$kind"; wait_linearizable
    t=$(date +%s.%N); put "$KEYS"
    echo "$kind: loaded $KEYS keys in $(python3 -c "import sys,time; print('%.0f s' % (time.time() - float(sys.argv[1])))" "$t")"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  fi
done

probe() { # kind
  local a
  a=$("$BENCH" --endpoints "$ep" --conns 100 --clients 1000 --total 200000 --json \
    put --key-size 30 --val-size "$VAL_SIZE" --key-space-size "$KEYS")
  echo "$1 put at $KEYS keys: $(summary "$a")"
  local key
  key=$(etcdctl --endpoints "$ep" get "" --from-key --keys-only --limit 1 | head -1)
  a=$("$BENCH" --endpoints "$ep" --conns 100 --clients 1000 --total 200000 --json \
    range "$key" --consistency l)
  echo "$1 range l at $KEYS keys: $(summary "$a")"
}
summary() { # JSON report -> "QPS, p50, p99"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); p={x["percentile"]: x["seconds"] for x in r["percentiles"]}; print("%.0f QPS, p50 %.2f ms, p99 %.2f ms, errors %d" % (r["requests_per_second"], p[50.0]*1e3, p[99.0]*1e3, r["errors"]))' "$1"
}
if [ "$PROBE" = 1 ]; then
  for kind in rivet etcd; do
    start_server "$kind"; wait_linearizable
    probe "$kind"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
fi

for round in $(seq 1 "$ROUNDS"); do
  for kind in rivet etcd; do
    start_server "$kind"; wait_linearizable
    put 2000
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    t=$(date +%s.%N)
    start_server "$kind"; wait_linearizable
    wall=$(python3 -c "import sys,time; print('%.2f' % (time.time() - float(sys.argv[1])))" "$t")
    cpu=$(awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$pid/stat")
    rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
    echo "round $round $kind: restart until a linearizable get answers ${wall} s, CPU ${cpu} s, RSS ${rss} MB"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done
