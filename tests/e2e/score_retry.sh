#!/usr/bin/env bash
# --retry-errors (issue 11): a job whose pairs missed their deadline (a real
# broker, --deadline-ms 1: deadline_exceeded lines) is rescored in place:
# only the lines holding a retryable error, killed (kill -9) again and again
# during the retry pass and restarted with the same arguments; the output
# ends with every line once, in order, the scores of a clean run, and the
# lines that held a per-line error (bad language, bad columns) untouched.
# Usage: score_retry.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init score-retry "$1"
model="$top/models/tiny-clm-enfr"
score="$build/bin/xlm-score"

for i in $(seq 1 10); do
  cat "$model/examples/pairs.tsv"
  printf 'xx\tHello\tfr\tBonjour\n'
  printf 'en\tonly three\tfr\n'
done > "$run_dir/input.tsv"   # 2,020 lines, 20 of them per-line errors
lines=$(wc -l < "$run_dir/input.tsv")
# The clean run: status 1 for the 20 bad lines.
e2e_expect_status 1 "$score" --model "$model" --mode clm --quiet --input "$run_dir/input.tsv" \
  --output "$run_dir/clean.jsonl"

e2e_start --model "$model" --stages 2
out="$run_dir/service.jsonl"
e2e_expect_status 1 "$score" --endpoint "$endpoint" --mode clm --quiet --deadline-ms 1 \
  --input "$run_dir/input.tsv" --output "$out"
python3 - "$out" "$lines" <<'PY' || e2e_fail "the deadline run did not leave deadline_exceeded lines"
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == int(sys.argv[2])
codes = collections.Counter(r["error"]["code"] if "error" in r else "ok" for r in rows)
print("before the retry:", dict(codes))
assert codes["deadline_exceeded"] > 1000, codes
PY
grep '"bad_request"' "$out" > "$run_dir/per_line_before"

kills=0 seed=11 finished=0 mid_retry=0
for attempt in $(seq 1 6); do
  "$score" --endpoint "$endpoint" --mode clm --quiet --retry-errors --input "$run_dir/input.tsv" \
    --output "$out" &
  pid=$!
  e2e_background "$pid"
  seed=$(( (seed * 1103515245 + 12345) % 2147483648 ))
  sleep "0.$(( 30 + seed % 60 ))"   # 0.30 .. 0.89 s
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
    [ -s "$out.retry" ] && mid_retry=$((mid_retry + 1))
    # A kill leaves the output whole: every line once, in order.
    python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert [r["line"] for r in rows] == list(range(1, int(sys.argv[2]) + 1)), len(rows)' "$out" "$lines" ||
      e2e_fail "after kill $kills the output is not whole"
  else
    rc=0
    wait "$pid" || rc=$?
    [ $rc = 1 ] || e2e_fail "the retry run ended with status $rc, expected 1 (the 20 per-line errors)"
    finished=1
    break
  fi
done
if [ $finished = 0 ]; then  # six kills: now let it finish (status 1: the 20 per-line errors)
  e2e_expect_status 1 "$score" --endpoint "$endpoint" --mode clm --quiet --retry-errors \
    --input "$run_dir/input.tsv" --output "$out"
fi
[ $kills -ge 1 ] || e2e_fail "the retry pass was never killed: make the input longer"
[ ! -e "$out.retry" ] || e2e_fail "$out.retry left behind"
[ $mid_retry -ge 1 ] || e2e_fail "no kill landed in the retry pass (OUTPUT.retry with lines)"
echo "retry finished after $kills kills, $mid_retry of them with the retry pass half written"
grep '"bad_request"' "$out" > "$run_dir/per_line_after"
# Lines that held a per-line error were not sent again (the deadline hid
# some per-line errors: those are retried and get theirs now).
grep -vxFf "$run_dir/per_line_after" "$run_dir/per_line_before" && e2e_fail "per-line error lines changed"
python3 - "$out" "$run_dir/clean.jsonl" <<'PY' || e2e_fail "the retried output differs from a clean run"
import json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
clean = [json.loads(l) for l in open(sys.argv[2])]
assert [g["line"] for g in got] == list(range(1, len(clean) + 1)), len(got)
for g, c in zip(got, clean):
    if "error" in c:
        assert g.get("error", {}).get("code") == c["error"]["code"], (g, c)
    else:
        assert "score" in g, g
        assert abs(g["score"] - c["score"]) <= 1e-4 and g["n_target_tokens"] == c["n_target_tokens"], (g, c)
print("%d lines, each once, in order: retried lines equal to a clean run" % len(got))
PY
