#!/usr/bin/env bash
# Runs a medmesh node on its embedded defaults in a throwaway data dir: creates the node
# (institution keys, node identity, store), stores a FHIR bundle, an HL7 v2 message and a
# DICOM image encrypted, lists them, reads one back and checks it is identical, then
# verifies the store and the audit log.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p medmesh
medmesh() { "${CARGO_TARGET_DIR:-target}/debug/medmesh" --data-dir "$DATA_DIR" "$@"; }

DATA_DIR="${MEDMESH_DATA_DIR:-$(mktemp -d)/medmesh}"
export MEDMESH_PASSPHRASE="${MEDMESH_PASSPHRASE:-quickstart passphrase}"
data=../shared/data
[ -d "$data" ] || { echo "sample data $data not found: put your own files in place of it" >&2; exit 1; }

medmesh init --institution "Quickstart Hospital"
fhir=$(medmesh put "$data/fhir/synthea-bundle-a.json" --patient MRN-0001)
medmesh put "$data/hl7v2/oru.hl7" --patient MRN-0001 >/dev/null
medmesh put "$data/dicom/CT_small.dcm" --patient MRN-0002 >/dev/null
echo; echo "records:"; medmesh ls
out="$(dirname "$DATA_DIR")/bundle.json"
medmesh get "$fhir" -o "$out"
cmp "$out" "$data/fhir/synthea-bundle-a.json" && echo "read back $fhir: identical"
medmesh check
medmesh audit verify
echo; echo "data dir: $DATA_DIR (try: medmesh --data-dir $DATA_DIR info $fhir)"
