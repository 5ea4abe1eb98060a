#!/usr/bin/env bash
# CLM scoring per precision (fp32, bf16, int8), each rate also as a ratio
# over fp32's in this run, for the bundled tiny-clm-enfr and for the
# xlm-mlm-enfr-1024 shape (random weights, the tiny model's tokenizer):
#   bench-score: the engine in process, one pair per call (pairs/s, target tokens/s);
#   xlm-score --model: in process, batched as a user runs it;
#   xlm-score --endpoint: through a broker and a 2-stage pipeline (1 thread a
#     stage) on free loopback ports, the workers started with --precision P.
# Usage: bench/score.sh [BUILD_DIR] [PAIRS_REPEAT]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
repeat=${2:-2}
run_dir=$(mktemp -d /tmp/xlm-bench-score-XXXXXX)
mapfile -t ports < <("$top/tests/tools/free_ports" 2)
cleanup() { "$top/deploy/local/stop" --run-dir "$run_dir/svc" >/dev/null 2>&1 || true; rm -rf "$run_dir"; }
trap cleanup EXIT

tiny="$top/models/tiny-clm-enfr"
big="$run_dir/enfr-1024"
mkdir -p "$big"
"$build/bin/bench-engine" --write "$big" --shape enfr-1024 --lm --causal
for f in vocab.json merges.txt tokenizer_config.json special_tokens_map.json; do cp "$tiny/$f" "$big/"; done

rate() { # xlm-score's summary -> "lines/s target_tokens/s"; every line must be scored
  grep -q ' 0 errors)' "$1" || { echo "bench: lines failed: $(cat "$1")" >&2; exit 1; }
  sed -n 's/.* in \([0-9.]*\) s: \([0-9.]*\) lines\/s, \([0-9]*\) target tokens\/s.*/\2 \3/p' "$1"
}
offline() { # model precision input -> "lines/s tokens/s"
  rm -f "$run_dir/out.jsonl"
  "$build/bin/xlm-score" --model "$1" --threads 2 --precision "$2" --mode clm --input "$3" \
    --output "$run_dir/out.jsonl" 2> "$run_dir/summary.txt" || true # rate says what failed
  rate "$run_dir/summary.txt"
}
service() { # model precision input -> "lines/s tokens/s"
  "$top/deploy/local/start" --model "$1" --stages 2 --threads 1 --pipelines 1 \
    --frontend-port "${ports[0]}" --backend-port "${ports[1]}" --run-dir "$run_dir/svc" \
    --build "$build" --timeout 180 -- --precision "$2" >/dev/null
  rm -f "$run_dir/out.jsonl"
  "$build/bin/xlm-score" --endpoint "tcp://127.0.0.1:${ports[0]}" --mode clm --input "$3" \
    --output "$run_dir/out.jsonl" --window 512 2> "$run_dir/summary.txt" || true # rate says what failed
  "$top/deploy/local/stop" --run-dir "$run_dir/svc" >/dev/null
  rate "$run_dir/summary.txt"
}
line() { # model where precision pairs/s tokens/s fp32_pairs/s
  python3 -c 'import sys; m, w, p, r, t, f = sys.argv[1:]
print("model=%s where=%s precision=%s pairs_per_s=%.1f target_tokens_per_s=%.0f vs_fp32=%.3f"
      % (m, w, p, float(r), float(t), float(r) / float(f)))' "$@"
}

for model in tiny big; do
  dir=${!model}
  name=$([ $model = tiny ] && echo tiny-clm-enfr || echo enfr-1024)
  input="$run_dir/pairs-$model.tsv"
  n=$([ $model = tiny ] && echo $((repeat * 10)) || echo "$repeat")
  for _ in $(seq 1 "$n"); do cat "$tiny/examples/pairs.tsv"; done > "$input"
  "$build/bin/bench-score" --model "$dir" --pairs "$tiny/examples/pairs.tsv" --threads 2 |
    sed "s/^/model=$name where=bench-score /"
  for where in offline service; do
    fp32=
    for precision in fp32 bf16 int8; do
      read -r r t < <($where "$dir" "$precision" "$input") ||
        { echo "bench: $name $where $precision: no rate (the line above says why)" >&2; exit 1; }
      fp32=${fp32:-$r}
      line "$name" "$([ $where = offline ] && echo in_process || echo service_2stages)" \
        "$precision" "$r" "$t" "$fp32"
    done
  done
done
