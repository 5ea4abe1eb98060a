#!/usr/bin/env bash
# xlm-score killed (kill -9) again and again and restarted with the same
# arguments: the final output holds every line once, in order, with the
# scores of an uninterrupted run. In process and through the service.
# Usage: score_resume.sh BUILD_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=$1
model="$top/models/tiny-clm-enfr"
run_dir=$(mktemp -d /tmp/xlm-score-resume-XXXXXX)
mapfile -t ports < <("$top/tests/tools/free_ports" 2)
cleanup() { "$top/deploy/local/stop" --run-dir "$run_dir" >/dev/null 2>&1 || true; rm -rf "$run_dir"; }
trap cleanup EXIT

for i in $(seq 1 15); do cat "$model/examples/pairs.tsv"; done > "$run_dir/input.tsv"   # 3,000 lines
"$build/bin/xlm-score" --model "$model" --mode clm --quiet --input "$run_dir/input.tsv" \
  --output "$run_dir/clean.jsonl"

kill_and_resume() { # label output args...
  local label=$1 out=$2; shift 2
  local kills=0 seed=7
  for attempt in $(seq 1 200); do
    "$build/bin/xlm-score" "$@" --mode clm --quiet --input "$run_dir/input.tsv" --output "$out" &
    local pid=$!
    seed=$(( (seed * 1103515245 + 12345) % 2147483648 ))
    sleep "0.$(( 5 + seed % 45 ))"   # 0.05 .. 0.49 s
    if kill -9 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null || true
      kills=$((kills + 1))
    else
      wait "$pid"
      echo "$label: finished after $kills kills"
      return 0
    fi
  done
  echo "$label: did not finish"; return 1
}

compare() { # label output
  python3 - "$1" "$2" "$run_dir/clean.jsonl" <<'PY'
import json, sys
label, got_path, clean_path = sys.argv[1:4]
got = [json.loads(l) for l in open(got_path)]
clean = [json.loads(l) for l in open(clean_path)]
assert [g["line"] for g in got] == list(range(1, 3001)), (label, len(got))
for g, c in zip(got, clean):
    if "error" in c:
        assert g.get("error", {}).get("code") == c["error"]["code"], (label, g)
    else:
        assert abs(g["score"] - c["score"]) <= 1e-4 and g["n_target_tokens"] == c["n_target_tokens"], (label, g, c)
print("%s: 3000 lines, each once, in order, scores equal to the uninterrupted run" % label)
PY
}

kill_and_resume "in process" "$run_dir/local.jsonl" --model "$model"
compare "in process" "$run_dir/local.jsonl"
"$top/deploy/local/start" --model "$model" --stages 2 --frontend-port "${ports[0]}" \
  --backend-port "${ports[1]}" --run-dir "$run_dir" --build "$build" >/dev/null
kill_and_resume "service" "$run_dir/service.jsonl" --endpoint "tcp://127.0.0.1:${ports[0]}"
compare "service" "$run_dir/service.jsonl"
