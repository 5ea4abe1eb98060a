#!/usr/bin/env bash
# xlm-score killed (kill -9) again and again while it writes its output, and
# restarted with the same arguments: each kill lands once the output has
# grown by a few hundred lines (so it interrupts the output), each restart
# says where it resumes, and the final output holds every line once, in
# order, with the scores of an uninterrupted run. In process and through the
# service. At least one kill must have interrupted the output and been
# resumed from it.
# Usage: score_resume.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init score-resume "$1"
model="$top/models/tiny-clm-enfr"
total=3000 max_kills=8

for _ in $(seq 1 15); do cat "$model/examples/pairs.tsv"; done > "$run_dir/input.tsv"   # 3,000 lines
"$build/bin/xlm-score" --model "$model" --mode clm --quiet --input "$run_dir/input.tsv" \
  --output "$run_dir/clean.jsonl"

lines() { if [ -f "$1" ]; then wc -l < "$1"; else echo 0; fi; }
grown_or_ended() { [ "$(lines "$1")" -ge "$2" ] || e2e_gone "$3"; }

kill_and_resume() { # label output args...
  local label=$1 out=$2
  shift 2
  local kills=0 interrupted=0 resumed=0 first_cut=$total seed=7 attempt at pid from rc=0
  for attempt in $(seq 1 $((max_kills + 1))); do
    at=$(lines "$out")
    "$build/bin/xlm-score" "$@" --mode clm --input "$run_dir/input.tsv" --output "$out" \
      2> "$run_dir/score.err" &
    pid=$!
    e2e_background "$pid"
    local killed=0
    if [ "$attempt" -le "$max_kills" ]; then
      # Strike once 100 to 499 more lines are out, unless it ends first.
      seed=$(( (seed * 1103515245 + 12345) % 2147483648 ))
      local want=$((at + 100 + seed % 400))
      e2e_wait_until 120 "$label: output past line $want" grown_or_ended "$out" "$want" "$pid"
      kill -9 "$pid" 2>/dev/null && killed=1
    fi
    rc=0
    wait "$pid" 2>/dev/null || rc=$?
    [ $rc = 137 ] || killed=0 # it had ended on its own (the kill found a zombie)
    # A run that found an interrupted output says where it resumes (before
    # it writes anything, so before any kill).
    if [ "$at" -gt 0 ] && [ "$at" -lt "$total" ]; then
      from=$(sed -n 's/^xlm-score: resuming after line \([0-9]*\) of .*/\1/p' "$run_dir/score.err")
      [ "$from" = "$at" ] ||
        e2e_fail "$label: an output of $at lines, the restarted run resumed after line '${from}'"
      resumed=$((resumed + 1))
    fi
    if [ $killed = 1 ]; then
      kills=$((kills + 1))
      at=$(lines "$out")
      if [ "$at" -lt "$total" ]; then
        interrupted=$((interrupted + 1))
        [ "$at" -lt "$first_cut" ] && first_cut=$at
      fi
      continue
    fi
    [ $rc = 0 ] || e2e_fail "$label: xlm-score exited $rc: $(tail -n 3 "$run_dir/score.err")"
    echo "$label: finished after $kills kills, $interrupted of them interrupting the output, $resumed runs resuming one"
    e2e_assert_fault_landed "$label: kill -9 of xlm-score" "$first_cut" "$total" "$resumed" \
      "restarts resuming an interrupted output"
    return 0
  done
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
e2e_start --model "$model" --stages 2
kill_and_resume "service" "$run_dir/service.jsonl" --endpoint "$endpoint"
compare "service" "$run_dir/service.jsonl"
