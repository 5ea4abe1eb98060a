#!/usr/bin/env bash
# Greedy generation through a 2-stage service (broker + one mpirun job of 2
# ranks x 1 thread), with the stages' key/value caches against the
# full-prefix path of --no-kv-cache measured in this run: GENERATIONS
# generations of 32 new tokens after prompts of PROMPT tokens, one at a
# time (xlm-client --window 1: a step's cost, not the pipeline's overlap),
# for the bundled tiny model and the xlm-mlm-enfr-1024 shape (random
# weights, causal). Prints the ratio (target >= 5).
# Usage: bench/generate.sh [BUILD_DIR] [GENERATIONS] [PROMPT]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
generations=${2:-8}
prompt=${3:-16}
steps=32
run_dir=$(mktemp -d /tmp/xlm-bench-gen-XXXXXX)
mapfile -t ports < <("$top/tests/tools/free_ports" 2)
cleanup() { "$top/deploy/local/stop" --run-dir "$run_dir/svc" >/dev/null 2>&1 || true; rm -rf "$run_dir"; }
trap cleanup EXIT

tiny="$top/models/tiny-clm-enfr"
big="$run_dir/enfr-1024"
mkdir -p "$big"
"$build/bin/bench-engine" --write "$big" --shape enfr-1024 --lm --causal > /dev/null

# Prompts of ids 5.. (no special or pad id), a different one per generation.
python3 - "$generations" "$prompt" "$steps" > "$run_dir/cases.jsonl" <<'PY'
import json, sys
n, length, steps = map(int, sys.argv[1:])
for g in range(n):
    ids = [0] + [5 + (g * 37 + i * 11) % 400 for i in range(length - 1)]
    print(json.dumps({"name": f"gen{g}", "head": "lm", "kind": "greedy",
                      "inputs": {"input_ids": [ids], "steps": steps}}))
PY

# Seconds for every case through a 2-stage service started with OPTIONS;
# the tokens go to OUT.
service() { # model out [xlm-worker options]
  local model=$1 out=$2
  shift 2
  "$top/deploy/local/start" --model "$model" --stages 2 --threads 1 \
    --frontend-port "${ports[0]}" --backend-port "${ports[1]}" --run-dir "$run_dir/svc" \
    --build "$build" --timeout 120 -- "$@" > /dev/null
  local t0 t1
  t0=$(date +%s.%N)
  "$build/bin/xlm-client" infer --endpoint "tcp://127.0.0.1:${ports[0]}" \
    --model "$(basename "$model")" --window 1 < "$run_dir/cases.jsonl" > "$out"
  t1=$(date +%s.%N)
  "$top/deploy/local/stop" --run-dir "$run_dir/svc" > /dev/null
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

for model in tiny big; do
  dir=${!model}
  cached_s=$(service "$dir" "$run_dir/cached.jsonl")
  full_s=$(service "$dir" "$run_dir/full.jsonl" --no-kv-cache)
  name=$([ $model = tiny ] && echo tiny-clm-enfr || echo enfr-1024)
  python3 - "$name" "$generations" "$prompt" "$steps" "$cached_s" "$full_s" \
    "$run_dir/cached.jsonl" "$run_dir/full.jsonl" <<'PY'
import json, sys
name, n, prompt, steps = sys.argv[1], *map(int, sys.argv[2:5])
cached, full = map(float, sys.argv[5:7])
ids = [[json.loads(l)["outputs"]["generated_ids"] for l in open(p)] for p in sys.argv[7:9]]
if ids[0] != ids[1] or len(ids[0]) != n:
    sys.exit(f"bench: {name}: the cached and full-prefix tokens differ")
tokens = n * steps
print("model=%s stages=2 generations=%d prompt=%d new_tokens=%d cached_tokens_per_s=%.1f "
      "full_prefix_tokens_per_s=%.1f ratio=%.2f identical=yes"
      % (name, n, prompt, steps, tokens / cached, tokens / full, full / cached))
PY
done
