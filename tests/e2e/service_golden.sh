#!/usr/bin/env bash
# End to end: every golden checkpoint served by a real broker and a real
# mpirun job on 127.0.0.1; every golden case sent with xlm-client must match
# HuggingFace's outputs within the golden tolerance.
# Usage: service_golden.sh BUILD_DIR STAGES PIPELINES
set -euo pipefail
. "$(dirname "$0")/lib.sh"
stages=$2 pipelines=$3
e2e_init "golden-s$stages-p$pipelines" "$1"

models=()
for d in "$top"/tests/golden/*-*/; do models+=(--model "${d%/}"); done
e2e_start "${models[@]}" --stages "$stages" --pipelines "$pipelines" --timeout 120
rc=0 total=0
for d in "$top"/tests/golden/*-*/; do
  name=$(basename "$d")
  "$build/bin/xlm-client" infer --endpoint "$endpoint" --model "$name" \
      < "$d/cases.jsonl" > "$run_dir/$name.out" || true
  e2e_compare "$d/cases.jsonl" "$run_dir/$name.out" "$name (stages=$stages pipelines=$pipelines)" || rc=1
  total=$((total + $(grep -c . "$d/cases.jsonl")))
done
echo "service_golden: $total cases through the service, stages=$stages pipelines=$pipelines"
[ $rc = 0 ] || e2e_fail "some cases differ from the golden outputs"
