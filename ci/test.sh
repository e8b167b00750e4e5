#!/usr/bin/env bash
# The whole rivet test suite, exactly as CI runs it (`.ci/run`). Works on a fresh Debian
# machine: installs what the tests need (real etcd 3.4 and etcdctl 3.4 for differential and
# client tests, protoc for the etcd-client crate's build script, curl for the README's
# JSON gateway examples), then runs every test.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# The JSON gateway's README examples are curl commands (net/tests/gateway.rs runs them).
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "ci/test.sh: installing ${need[*]}"
  # Keep Debian from starting a system etcd on port 2379 while installing it.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
fi

# glommio registers I/O memory with io_uring; raise the locked-memory limit when allowed.
ulimit -l unlimited 2>/dev/null || true

# Whatever happens, leave no rivet or etcd process of this run behind.
cleanup() {
  pkill -9 -f "$root/target/[a-z]*/rivet" 2>/dev/null || true
  pkill -9 -f "etcd --data-dir /tmp/\.tmp" 2>/dev/null || true
}
trap cleanup EXIT

# One full build from a clean clone gains nothing from incremental compilation, whose cache
# is as large as the build itself; CI's disk is not large (it once ran out).
export CARGO_INCREMENTAL=0

# Style and lints first: they fail in seconds, the tests take minutes.
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# The deterministic cluster simulation (engine/tests/simulation) runs its default seed
# count with the rest; RIVET_SIM_SEEDS=<n> runs more.
cargo test --workspace --locked
