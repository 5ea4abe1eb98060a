#!/usr/bin/env bash
# The throughput model's input for the two big shapes: for each of
# xlm-mlm-enfr-1024 and xlm-mlm-en-2048 (random causal LM checkpoints from
# bench-engine --write, the bundled tokenizer), a 2-stage pipeline (1
# thread a stage) scores the bundled en-fr pairs through the service; the
# broker's stats (per-stage compute and packet bytes per micro-batch) go
# to bench/pipeline_model.py, which prints the table for 2-8 stages on
# 1, 10, 100 Gbit/s links with 0.05-1 ms latency, and where the link
# would become the limit. Also measured: the pairs/s of the run itself
# and the model's prediction for it (a one-host run: an unbounded link).
# Usage: bench/pipeline_model.sh [BUILD_DIR] [PAIRS] [SHAPES]   (default build, 200, "enfr-1024 en-2048")
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
pairs=${2:-200}
shapes=${3:-enfr-1024 en-2048}
run_dir=$(mktemp -d /tmp/xlm-model-XXXXXX)
mapfile -t ports < <("$top/tests/tools/free_ports" 2)
cleanup() { "$top/deploy/local/stop" --run-dir "$run_dir/svc" >/dev/null 2>&1 || true; rm -rf "$run_dir"; }
trap cleanup EXIT
tiny="$top/models/tiny-clm-enfr"
: > "$run_dir/pairs.tsv"
while [ "$(wc -l < "$run_dir/pairs.tsv")" -lt "$pairs" ]; do
  cat "$tiny/examples/pairs.tsv" >> "$run_dir/pairs.tsv"
done
head -n "$pairs" "$run_dir/pairs.tsv" > "$run_dir/input.tsv"

for shape in $shapes; do
  dir="$run_dir/$shape"
  mkdir -p "$dir"
  "$build/bin/bench-engine" --write "$dir" --shape "$shape" --lm --causal
  for f in vocab.json merges.txt tokenizer_config.json special_tokens_map.json; do cp "$tiny/$f" "$dir/"; done
  "$top/deploy/local/start" --model "$dir" --stages 2 --threads 1 --pipelines 1 \
    --frontend-port "${ports[0]}" --backend-port "${ports[1]}" --run-dir "$run_dir/svc" \
    --build "$build" --timeout 300 > /dev/null
  start=${EPOCHREALTIME//[^0-9]/}
  "$build/bin/xlm-score" --endpoint "tcp://127.0.0.1:${ports[0]}" --mode clm --quiet \
    --input "$run_dir/input.tsv" --output "$run_dir/out.jsonl" --force-restart
  elapsed_us=$(( ${EPOCHREALTIME//[^0-9]/} - start ))
  "$build/bin/xlm-client" stats --endpoint "tcp://127.0.0.1:${ports[0]}" > "$run_dir/stats.json"
  "$top/deploy/local/stop" --run-dir "$run_dir/svc" > /dev/null
  rate=$(python3 -c "print('%.2f' % ($pairs * 1e6 / $elapsed_us))")
  echo "shape=$shape measured_pairs_per_s=$rate ($pairs pairs, 2 stages x 1 thread on one host)"
  echo "stats=$(tr -d '\n' < "$run_dir/stats.json")"   # the model's input, to rerun it on
  python3 "$top/bench/pipeline_model.py" "$run_dir/stats.json" --gbit 0 | sed 's/^/  /'
  python3 "$top/bench/pipeline_model.py" "$run_dir/stats.json" --table
  rm -rf "$dir"
done
