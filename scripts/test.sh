#!/usr/bin/env bash
# Runs every test: the workspace's unit and integration tests (real files, real crypto,
# real HTTP and libp2p on 127.0.0.1, Helia for IPFS interop), then the OpenAPI-driven fuzzing of the HTTP API. Ends with
# one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."

# Contracts: the pinned solc-js and anvil (npm; exact versions in package.json; `npm ci`
# refuses the lockfile because anvil lists per-platform optional packages without
# versions). The committed artifacts must match the Solidity sources.
if [ ! -x contracts/node_modules/.bin/anvil ] || [ ! -d contracts/node_modules/solc ]; then
  (cd contracts && npm install --no-audit --no-fund --loglevel=error)
fi
(cd contracts && node scripts/build.mjs --check)
# Helia (IPFS in JavaScript) for the bitswap interop test, pinned in its package-lock.
if [ ! -d interop/helia/node_modules/helia ]; then
  (cd interop/helia && npm install --no-audit --no-fund --loglevel=error)
fi

# The SDK must not compile the server: no HTTP server, index, libp2p or EVM in its tree.
sdk_tree=$(cargo tree -p medmesh-sdk -e normal --prefix none --locked)
heavy=$(printf '%s\n' "$sdk_tree" | grep -E '^(axum|redb|libp2p|revm)( |-)' | sort -u || true)
if [ -n "$heavy" ]; then
  echo "medmesh-sdk depends on server crates:" >&2
  echo "$heavy" >&2
  exit 1
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
passed=$(awk '/^test result:/ {for (i = 1; i <= NF; i++) if ($i == "passed;") s += $(i-1)} END {print s + 0}' "$log")

if ! command -v schemathesis >/dev/null; then
  echo "installing schemathesis (PyPI) for the API fuzzing"
  python3 -m pip install --quiet "schemathesis==4.32.5"
fi
scripts/fuzz-api.sh 40

echo "tests: $((passed + 1)) passed, 0 failed"
