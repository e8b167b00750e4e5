#!/usr/bin/env bash
# Client TLS cost, rivet against etcd 3.4 with the same certificates: put and
# linearizable range at 100 conns / 1000 clients, both servers serving https with
# --trusted-ca-file and --client-cert-auth, rivet-bench presenting a client certificate.
# Rounds alternate fresh rivet and etcd servers; the table gives each figure's median.
#
#   bench/scripts/tls-compare.sh [ROUNDS] [extra rivet-bench compare flags]
#
# The certificates (ECDSA P-256, as kubeadm makes them) are made here with openssl in a
# temporary directory. Needs target/release/{rivet,rivet-bench} (cargo build --release),
# etcd on PATH and openssl.
set -euo pipefail
rounds="${1:-3}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
bench="$root/target/release/rivet-bench"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cat > "$dir/ext.cnf" <<'CNF'
[ca]
basicConstraints=critical,CA:true
keyUsage=critical,keyCertSign,cRLSign
[server]
basicConstraints=CA:false
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
[client]
basicConstraints=CA:false
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
CNF
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/$1.key" 2>/dev/null; }
key ca
openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=bench CA" -days 2 \
  -config "$dir/ext.cnf" -extensions ca -out "$dir/ca.crt" 2>/dev/null
for leaf in server client; do
  key "$leaf"
  openssl req -new -key "$dir/$leaf.key" -subj "/CN=$leaf" -out "$dir/$leaf.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$leaf.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/ext.cnf" -extensions "$leaf" \
    -out "$dir/$leaf.crt" 2>/dev/null
done
put="put --key-size 8 --val-size 256 --sequential-keys"
set -x
"$bench" compare --rounds "$rounds" \
  --cacert "$dir/ca.crt" --cert "$dir/client.crt" --key "$dir/client.key" \
  --server-cert "$dir/server.crt" --server-key "$dir/server.key" \
  --workload "--target-leader --conns 100 --clients 1000 --total 100000 $put" \
  --workload "--conns 100 --clients 1000 --total 100000 range foo --consistency l" \
  "${@:2}"
