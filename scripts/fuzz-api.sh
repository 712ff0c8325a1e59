#!/usr/bin/env bash
# Fuzzes the HTTP API from its own OpenAPI document with schemathesis: starts a node on a
# free local port with a fresh data dir and an admin token, sends generated requests to
# every operation (valid and invalid), and fails on any 5xx answer, crash or response
# that does not match the document. Needs `pip install schemathesis`.
#
#   scripts/fuzz-api.sh [MAX_EXAMPLES]    (default 60 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
max_examples="${1:-60}"
command -v schemathesis >/dev/null || { echo "schemathesis is missing: pip install schemathesis" >&2; exit 1; }

target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet -p medmesh
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export MEDMESH_PASSPHRASE="fuzzing passphrase"
"$target/debug/medmesh" --data-dir "$work/node" node --listen "127.0.0.1:$port" --rate-limit 100000 >"$work/node.log" 2>&1 &
node_pid=$!
trap 'kill $node_pid 2>/dev/null; wait $node_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  token=$(grep -o 'mm_[0-9a-f_]*' "$work/node.log" || true)
  [ -n "$token" ] && curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.2
done
[ -n "$token" ] || { cat "$work/node.log"; echo "node did not start" >&2; exit 1; }

# A record for the operations that take an id.
curl -sf -H "Authorization: Bearer $token" --data-binary @../shared/data/hl7v2/oru.hl7 \
  "http://127.0.0.1:$port/v1/records" >/dev/null

schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$max_examples" \
  --seed 42 \
  --generation-deterministic
kill -0 $node_pid 2>/dev/null || { echo "the node died during fuzzing" >&2; cat "$work/node.log"; exit 1; }
echo "fuzzing passed: no 5xx, no crash, answers match the OpenAPI document"
