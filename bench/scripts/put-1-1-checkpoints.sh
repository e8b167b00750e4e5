#!/usr/bin/env bash
# put 1 conn / 1 client against one fresh member; prints the put summary and the checkpoint metric.
set -euo pipefail
bin=$1 BENCH=$2
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
dir=$(mktemp -d /tmp/uringsync-p11.XXXXXX); cport=$(port); pport=$(port)
"$bin" --name m1 --data-dir "$dir/data" --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
  --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
  --initial-cluster "m1=http://127.0.0.1:$pport" --snapshot-count 1000 > "$dir/log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do etcdctl --endpoints "127.0.0.1:$cport" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
"$BENCH" --endpoints "127.0.0.1:$cport" --conns 1 --clients 1 --total 5000 --json put --val-size 256 > "$dir/put.json"
python3 -c "
import json;d=json.load(open('$dir/put.json'));p={x['percentile']:x['seconds'] for x in d['percentiles']}
print('qps %.0f p50 %.3f p99 %.3f max %.3f ms' % (d['requests_per_second'],p[50]*1e3,p[99]*1e3,d['slowest_seconds']*1e3))"
curl -s "http://127.0.0.1:$cport/metrics" | grep -E '^etcd_disk_backend_commit_duration_seconds_(sum|count)' | tr '\n' ' '; echo
kill $pid; wait $pid 2>/dev/null || true; rm -rf "$dir"
