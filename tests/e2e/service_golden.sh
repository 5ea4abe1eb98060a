#!/usr/bin/env bash
# End to end: every golden checkpoint served by a real broker and a real
# mpirun job on 127.0.0.1; every golden case sent with xlm-client must match
# HuggingFace's outputs within the golden tolerance.
# Usage: service_golden.sh BUILD_DIR STAGES PIPELINES
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=$1 stages=$2 pipelines=$3
run_dir=$(mktemp -d /tmp/xlm-e2e-XXXXXX)
mapfile -t ports < <("$top/tests/tools/free_ports" 2)
frontend=${ports[0]} backend=${ports[1]}
cleanup() { "$top/deploy/local/stop" --run-dir "$run_dir" >/dev/null 2>&1 || true; rm -rf "$run_dir"; }
trap cleanup EXIT

models=()
for d in "$top"/tests/golden/*-*/; do models+=(--model "${d%/}"); done
if ! "$top/deploy/local/start" "${models[@]}" --stages "$stages" --pipelines "$pipelines" \
      --frontend-port "$frontend" --backend-port "$backend" --run-dir "$run_dir" \
      --build "$build" --timeout 120; then
  tail -n 30 "$run_dir"/*.log
  exit 1
fi
rc=0 total=0
for d in "$top"/tests/golden/*-*/; do
  name=$(basename "$d")
  "$build/bin/xlm-client" infer --endpoint "tcp://127.0.0.1:$frontend" --model "$name" \
      < "$d/cases.jsonl" > "$run_dir/$name.out" || true
  python3 "$top/tests/tools/compare_golden.py" "$d/cases.jsonl" "$run_dir/$name.out" \
      "$name (stages=$stages pipelines=$pipelines)" || rc=1
  total=$((total + $(grep -c . "$d/cases.jsonl")))
done
echo "service_golden: $total cases through the service, stages=$stages pipelines=$pipelines"
[ $rc = 0 ] || tail -n 20 "$run_dir"/*.log
exit $rc
