#!/usr/bin/env bash
# rivet-bench's own CPU per request, two builds of it against the same servers: each round
# runs `compare` (fresh rivet, then fresh etcd) with build A, then with build B, for put,
# linearizable and serializable range at 100 conns / 1000 clients (etcd's doc workloads),
# and prints one line per build, round, workload and server: rivet-bench µs per request
# and the server's QPS. Alternating the builds round by round lets a shared machine's
# drift fall on both.
#
#   bench/scripts/bench-client-ab.sh OLD_RIVET_BENCH NEW_RIVET_BENCH [ROUNDS] [compare flags…]
#
# Needs a release rivet (target/release/rivet, or pass --rivet PATH after ROUNDS), etcd on
# PATH and jq.
set -euo pipefail
a="$1"
b="$2"
rounds="${3:-3}"
put="put --key-size 8 --val-size 256 --sequential-keys"
workloads=(
  --workload "--target-leader --conns 100 --clients 1000 --total 100000 $put"
  --workload "--conns 100 --clients 1000 --total 100000 range foo --consistency l"
  --workload "--conns 100 --clients 1000 --total 100000 range foo --consistency s"
)
printf '%-6s %-5s %-50s %-6s %12s %10s\n' build round workload server "bench µs/op" QPS
for round in $(seq "$rounds"); do
  for build in "$a" "$b"; do
    name=A
    [ "$build" = "$b" ] && name=B
    "$build" compare "${workloads[@]}" "${@:4}" --json 2>/dev/null |
      jq -r --arg build "$name" --arg round "$round" '.workloads[] as $w
        | ["rivet", "etcd"][] as $s
        | [$build, $round, $w.label, $s, ($w[$s].bench_cpu_seconds_per_op * 1e6), $w[$s].qps]
        | @tsv' |
      while IFS=$'\t' read -r n r label server us qps; do
        printf '%-6s %-5s %-50s %-6s %12.1f %10.0f\n' "$n" "$r" "$label" "$server" "$us" "$qps"
      done
  done
done
