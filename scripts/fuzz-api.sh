#!/usr/bin/env bash
# Fuzzes the HTTP API from its own OpenAPI document with schemathesis: starts anvil with
# the contracts deployed and a node on free local ports (fresh data dir, admin token,
# key release enabled), sends generated requests to every operation (valid and
# invalid), and fails on any 5xx answer, crash or response that does not match the
# document. Needs `pip install schemathesis` and `npm install` in contracts/ (for anvil).
# The node runs its network alone on a free port, with a 300 ms DHT wait (a fetch of
# a random CID waits that long for a provider before answering 404).
#
#   scripts/fuzz-api.sh [MAX_EXAMPLES]    (default 60 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
max_examples="${1:-60}"
command -v schemathesis >/dev/null || { echo "schemathesis is missing: pip install schemathesis" >&2; exit 1; }

target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet -p medmesh
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Two consecutive free ports for the embedded MQTT broker (3.1.1, then 5).
free_pair() { python3 -c '
import socket
while True:
    a = socket.socket(); a.bind(("127.0.0.1", 0)); p = a.getsockname()[1]
    b = socket.socket()
    try:
        b.bind(("127.0.0.1", p + 1)); print(p); break
    except OSError:
        pass
'; }
port=$(free_port)
chain_port=$(free_port)
mqtt_port=$(free_pair)
anvil="${MEDMESH_ANVIL:-contracts/node_modules/.bin/anvil}"
[ -x "$anvil" ] || { echo "anvil is missing: run \`npm install\` in contracts/" >&2; exit 1; }
"$anvil" --port "$chain_port" >"$work/anvil.log" 2>&1 &
anvil_pid=$!
trap 'kill $anvil_pid $node_pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do
  curl -sf -X POST -H 'Content-Type: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' \
    "http://127.0.0.1:$chain_port" >/dev/null && break
  sleep 0.2
done
# anvil's first dev account deploys the contracts.
echo 0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80 >"$work/deployer.key"
# and the last one is the node's account, which pays for relayed grants.
echo 0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6 >"$work/node-account.key"
chmod 600 "$work/deployer.key" "$work/node-account.key" # key files must be private
"$target/debug/medmesh" chain deploy --chain-rpc "http://127.0.0.1:$chain_port" \
  --key-file "$work/deployer.key" --output "$work/deployment.json" >/dev/null
export MEDMESH_PASSPHRASE="fuzzing passphrase"
"$target/debug/medmesh" --data-dir "$work/node" init --institution "Fuzzing Hospital" >/dev/null
sed -i 's/^find_timeout_ms = .*/find_timeout_ms = 300/' "$work/node/medmesh.toml"
"$target/debug/medmesh" --data-dir "$work/node" node --listen "127.0.0.1:$port" --rate-limit 100000 \
  --p2p-listen /ip4/127.0.0.1/tcp/0 --mqtt-listen "127.0.0.1:$mqtt_port" \
  --chain-rpc "http://127.0.0.1:$chain_port" --chain-deployment "$work/deployment.json" \
  --chain-key-file "$work/node-account.key" >"$work/node.log" 2>&1 &
node_pid=$!
for _ in $(seq 100); do
  token=$(cat "$work/node/admin.token" 2>/dev/null || true)
  [ -n "$token" ] && curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 0.2
done
[ -n "$token" ] || { cat "$work/node.log"; echo "node did not start" >&2; exit 1; }

# A record for the operations that take an id.
curl -sf -H "Authorization: Bearer $token" --data-binary @../shared/data/hl7v2/oru.hl7 \
  "http://127.0.0.1:$port/v1/records" >/dev/null

# /v1/events is an endless Server-Sent Events stream (tested in crates/api/tests/events.rs).
schemathesis run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $token" \
  --exclude-path /v1/events \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$max_examples" \
  --seed 42 \
  --generation-deterministic
kill -0 "$node_pid" 2>/dev/null || { echo "the node died during fuzzing" >&2; cat "$work/node.log"; exit 1; }
echo "fuzzing passed: no 5xx, no crash, answers match the OpenAPI document"
