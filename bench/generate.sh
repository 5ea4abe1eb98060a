#!/usr/bin/env bash
# Greedy generation through a 2-stage service (broker + one mpirun job of 2
# ranks x 1 thread), with the stages' key/value caches against the
# full-prefix path of --no-kv-cache measured in this run: GENERATIONS
# generations of 32 new tokens after prompts of PROMPT tokens, one at a
# time (xlm-client --window 1: a step's cost, not the pipeline's overlap),
# for the bundled tiny model and the xlm-mlm-enfr-1024 shape (random
# weights, causal). Prints the ratio (target >= 5).
# With BASE_TREE and BASE_BUILD (a checkout of an older commit and its
# build, e.g. a git worktree), the older code's full-prefix path runs in the
# same run too and vs_base is the cached path's speed over it: "today's"
# generation of the issue measured, not remembered.
# Usage: bench/generate.sh [BUILD_DIR] [GENERATIONS] [PROMPT] [BASE_TREE BASE_BUILD]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
generations=${2:-8}
prompt=${3:-16}
base_tree=${4:-}
base_build=${5:-}
if [ -n "$base_tree" ] && [ ! -x "$base_build/bin/xlm-worker" ]; then
  echo "bench/generate.sh: $base_build/bin/xlm-worker: no such program (BASE_BUILD)" >&2
  exit 2
fi
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

# Seconds for every case through a 2-stage service of TREE's scripts and
# BUILD's programs started with OPTIONS; the tokens go to OUT.
service_of() { # tree build model out [xlm-worker options]
  local tree=$1 bld=$2 model=$3 out=$4
  shift 4
  "$tree/deploy/local/start" --model "$model" --stages 2 --threads 1 \
    --frontend-port "${ports[0]}" --backend-port "${ports[1]}" --run-dir "$run_dir/svc" \
    --build "$bld" --timeout 120 -- "$@" > /dev/null
  local t0 t1
  t0=$(date +%s.%N)
  "$bld/bin/xlm-client" infer --endpoint "tcp://127.0.0.1:${ports[0]}" \
    --model "$(basename "$model")" --window 1 < "$run_dir/cases.jsonl" > "$out"
  t1=$(date +%s.%N)
  "$tree/deploy/local/stop" --run-dir "$run_dir/svc" > /dev/null
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}
service() { service_of "$top" "$build" "$@"; }

for model in tiny big; do
  dir=${!model}
  cached_s=$(service "$dir" "$run_dir/cached.jsonl")
  full_s=$(service "$dir" "$run_dir/full.jsonl" --no-kv-cache)
  base_s=0
  cp "$run_dir/full.jsonl" "$run_dir/base.jsonl"
  if [ -n "$base_tree" ]; then
    base_s=$(service_of "$base_tree" "$base_build" "$dir" "$run_dir/base.jsonl" --no-kv-cache)
  fi
  name=$([ $model = tiny ] && echo tiny-clm-enfr || echo enfr-1024)
  python3 - "$name" "$generations" "$prompt" "$steps" "$cached_s" "$full_s" "$base_s" \
    "$run_dir/cached.jsonl" "$run_dir/full.jsonl" "$run_dir/base.jsonl" <<'PY'
import json, sys
name, n, prompt, steps = sys.argv[1], *map(int, sys.argv[2:5])
cached, full, base = map(float, sys.argv[5:8])
ids = [[json.loads(l)["outputs"]["generated_ids"] for l in open(p)] for p in sys.argv[8:11]]
if ids[0] != ids[1] or len(ids[0]) != n:
    sys.exit(f"bench: {name}: the cached and full-prefix tokens differ")
if ids[2] != ids[0]:
    sys.exit(f"bench: {name}: the base code's tokens differ from these")
tokens = n * steps
line = ("model=%s stages=2 generations=%d prompt=%d new_tokens=%d cached_tokens_per_s=%.1f "
        "full_prefix_tokens_per_s=%.1f ratio=%.2f"
        % (name, n, prompt, steps, tokens / cached, tokens / full, full / cached))
if base > 0:
    line += " base_full_prefix_tokens_per_s=%.1f vs_base=%.2f" % (tokens / base, base / cached)
print(line + " identical=yes")
PY
done
