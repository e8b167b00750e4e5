#!/usr/bin/env bash
# Starts the 3-member cluster of the Procfile in the foreground (Ctrl-C stops all three),
# each member's data in ./infraN.rivet and its log in ./infraN.log.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x target/release/rivet ] || cargo build --release --bin rivet
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
while IFS= read -r line; do
  case "$line" in
    rivet*:*) ;;
    *) continue ;;
  esac
  name="${line%%:*}"
  command="${line#*: }"
  echo "starting $name"
  eval "$command" >"${name/rivet/infra}.log" 2>&1 &
  pids+=("$!")
done < Procfile
echo "cluster running: ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 member list"
wait
