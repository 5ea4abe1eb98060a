#!/usr/bin/env bash
# Service benchmarks, each a ratio against a reference measured in this run:
#   e2e:      xlm-score through broker + pipeline (2 stages x 1 thread) vs the
#             engine in process (2 threads), same model, same 2 cores  (target >= 0.9)
#   pipeline: 2 stages on 2 cores vs 1 stage on 1 core                  (target >= 1.8)
#   for the bundled tiny model and for the xlm-mlm-enfr-1024 shape (random weights).
# Usage: bench/service.sh [BUILD_DIR] [PAIRS_REPEAT]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
repeat=${2:-5}
run_dir=$(mktemp -d /tmp/xlm-bench-XXXXXX)
mapfile -t ports < <("$top/tests/tools/free_ports" 2)
cleanup() { "$top/deploy/local/stop" --run-dir "$run_dir/svc" >/dev/null 2>&1 || true; rm -rf "$run_dir"; }
trap cleanup EXIT

tiny="$top/models/tiny-clm-enfr"
big="$run_dir/enfr-1024"
mkdir -p "$big"
"$build/bin/bench-engine" --write "$big" --shape enfr-1024 --lm --causal
for f in vocab.json merges.txt tokenizer_config.json special_tokens_map.json; do cp "$tiny/$f" "$big/"; done

rate() { # output of xlm-score's summary -> lines/s and target tokens/s; every line scored
  grep -q ' 0 errors)' "$1" || { echo "bench: lines failed: $(cat "$1")" >&2; exit 1; }
  sed -n 's/.* in \([0-9.]*\) s: \([0-9.]*\) lines\/s, \([0-9]*\) target tokens\/s.*/\2 \3/p' "$1"
}
offline() { # model threads input -> "lines/s tokens/s"
  rm -f "$run_dir/out.jsonl"
  "$build/bin/xlm-score" --model "$1" --threads "$2" --mode clm --input "$3" \
    --output "$run_dir/out.jsonl" 2> "$run_dir/summary.txt"
  rate "$run_dir/summary.txt"
}
service() { # model stages threads pipelines input -> "lines/s tokens/s"
  "$top/deploy/local/start" --model "$1" --stages "$2" --threads "$3" --pipelines "$4" \
    --frontend-port "${ports[0]}" --backend-port "${ports[1]}" --run-dir "$run_dir/svc" \
    --build "$build" --timeout 120 >/dev/null
  rm -f "$run_dir/out.jsonl"
  "$build/bin/xlm-score" --endpoint "tcp://127.0.0.1:${ports[0]}" --mode clm --input "$5" \
    --output "$run_dir/out.jsonl" --window 512 2> "$run_dir/summary.txt"
  "$top/deploy/local/stop" --run-dir "$run_dir/svc" >/dev/null
  rate "$run_dir/summary.txt"
}

for model in tiny big; do
  dir=${!model}
  input="$run_dir/pairs-$model.tsv"
  n=$([ $model = tiny ] && echo $((repeat * 10)) || echo "$repeat")
  for _ in $(seq 1 "$n"); do cat "$tiny/examples/pairs.tsv"; done > "$input"
  read -r off_rate off_tok < <(offline "$dir" 2 "$input")
  read -r svc_rate svc_tok < <(service "$dir" 2 1 1 "$input")
  read -r one_rate one_tok < <(service "$dir" 1 1 1 "$input")
  read -r wide_rate wide_tok < <(service "$dir" 1 2 1 "$input")
  name=$([ $model = tiny ] && echo tiny-clm-enfr || echo enfr-1024)
  python3 - "$name" "$off_rate" "$off_tok" "$svc_rate" "$svc_tok" "$one_rate" "$wide_rate" <<'PY'
import sys
name, off, off_tok, svc, svc_tok, one, wide = sys.argv[1], *map(float, sys.argv[2:])
print("model=%s offline_pairs_per_s=%.1f offline_target_tokens_per_s=%.0f service_pairs_per_s=%.1f "
      "service_target_tokens_per_s=%.0f e2e_ratio=%.3f service_1stage_2threads_pairs_per_s=%.1f "
      "e2e_ratio_1stage=%.3f one_stage_one_core_pairs_per_s=%.1f pipeline_efficiency=%.3f"
      % (name, off, off_tok, svc, svc_tok, svc / off, wide, wide / off, one, svc / one))
PY
done
