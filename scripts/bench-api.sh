#!/usr/bin/env bash
# HTTP API load benchmark with wrk (Debian package `wrk`): requests/s and p99 latency
# of a metadata GET and of a 1 MiB record GET, against a release-built node whose store
# is on tmpfs. wrk runs on the same 2-core machine as the node: both share the cores.
#
#   scripts/bench-api.sh [SECONDS]   (default 10 per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet -p medmesh
work=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export MEDMESH_PASSPHRASE="benchmark passphrase"
"$target/release/medmesh" --data-dir "$work/node" node --listen "127.0.0.1:$port" --rate-limit 10000000 >"$work/node.log" 2>&1 &
node_pid=$!
trap 'kill $node_pid 2>/dev/null; wait $node_pid 2>/dev/null; rm -rf "$work"' EXIT
token=""
for _ in $(seq 100); do
  token=$(cat "$work/node/admin.token" 2>/dev/null || true)
  [ -n "$token" ] && curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.2
done
[ -n "$token" ] || { cat "$work/node.log"; exit 1; }
base="http://127.0.0.1:$port"
head -c 1048576 /dev/urandom >"$work/one-mib.bin"
id=$(curl -sf -H "Authorization: Bearer $token" -H "Content-Type: application/octet-stream" \
  --data-binary @"$work/one-mib.bin" "$base/v1/records" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')

measure() { # name url
  local out
  out=$(wrk -t1 -c8 -d"${seconds}s" --latency -H "Authorization: Bearer $token" "$2")
  local rps p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
  printf '| %s | %s | %s |\n' "$1" "$rps" "$p99"
  [ -z "$errors" ] || echo "   ($errors)"
}
echo "wrk -t1 -c8 -d${seconds}s, node release build, store on $(df --output=fstype "$work" | tail -1)"
echo
echo "| request | requests/s | p99 latency |"
echo "|---|---|---|"
measure "GET /v1/records/{id} (metadata)" "$base/v1/records/$id"
measure "GET /v1/records/{id}/content (1 MiB)" "$base/v1/records/$id/content"
measure "GET /health" "$base/health"
