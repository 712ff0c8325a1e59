#!/usr/bin/env bash
# Runs every test: the workspace's unit and integration tests (real files, real crypto,
# real HTTP on 127.0.0.1), then the OpenAPI-driven fuzzing of the HTTP API.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked

if ! command -v schemathesis >/dev/null; then
  echo "installing schemathesis (PyPI) for the API fuzzing"
  python3 -m pip install --quiet "schemathesis==4.32.5"
fi
scripts/fuzz-api.sh 40
