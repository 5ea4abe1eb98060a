#!/usr/bin/env bash
# A pair's scores do not depend on its batch: the bundled pairs.tsv scored
# in process (the whole file), pairs 44, 92 and 181 each alone in its own
# process, and the file through a 2-stage service with small micro-batches,
# once in order and once reversed (every pair then shares its micro-batch
# with other pairs), give the same bits (scores and token scores as
# printed: %.9g round-trips a float) in fp32, bf16 and int8; the broker's
# stats (xlm-client stats) name each precision the service runs.
# Usage: score_batch_invariance.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init score-batch-invariance "$1"
model="$top/models/tiny-clm-enfr"
pairs="$model/examples/pairs.tsv"
tac "$pairs" > "$run_dir/reversed.tsv"

same() { # label expected got [reversed]
  python3 - "$@" <<'PY'
import json, sys
label, want_path, got_path = sys.argv[1:4]
reverse = len(sys.argv) > 4
want = {json.loads(l)["line"]: l for l in open(want_path)}
got = [json.loads(l) for l in open(got_path)]
n = len(want)
checked = 0
for g in got:
    line = n + 1 - g["line"] if reverse else g["line"]
    w = json.loads(want[line])
    for field in ("score", "n_target_tokens", "token_scores", "tokens"):
        if g.get(field) != w.get(field):
            sys.exit("%s: pair %d: %s %r, in process %r" % (label, line, field, g.get(field), w.get(field)))
    checked += 1
print("%s: %d pairs, the same bits as in process" % (label, checked))
PY
}

score() { # output input args...
  local output=$1 input=$2
  shift 2
  "$build/bin/xlm-score" "$@" --mode clm --token-scores --quiet --force-restart --input "$input" \
    --output "$output" > /dev/null || { grep "\"error\"" "$output" | head -n 3; e2e_fail "xlm-score $* failed"; }
}

for precision in fp32 bf16 int8; do
  score "$run_dir/whole-$precision.jsonl" "$pairs" --model "$model" --precision "$precision"
  for n in 44 92 181; do
    sed -n "${n}p" "$pairs" > "$run_dir/one.tsv"
    score "$run_dir/one.jsonl" "$run_dir/one.tsv" --model "$model" --precision "$precision"
    # The pair alone is line 1 of its own file: renumber to compare.
    python3 -c 'import json,sys; o=json.loads(open(sys.argv[1]).read()); o["line"]=int(sys.argv[2]); print(json.dumps(o))' \
      "$run_dir/one.jsonl" "$n" > "$run_dir/alone-$n.jsonl"
    same "$precision pair $n alone" "$run_dir/whole-$precision.jsonl" "$run_dir/alone-$n.jsonl"
  done
  e2e_start --model "$model" --stages 2 -- --precision "$precision" --max-batch-tokens 600
  # The broker's stats name the model's precision and its pipeline's.
  "$build/bin/xlm-client" stats --endpoint "$endpoint" > "$run_dir/stats.json"
  python3 - "$precision" "$run_dir/stats.json" <<'PY' || e2e_fail "stats do not say $precision"
import json, sys
want, stats = sys.argv[1], json.load(open(sys.argv[2]))
model = stats["models"][0]
got = (model.get("precision"), model["pipelines"][0].get("precision"))
if got != (want, want):
    sys.exit("stats: model and pipeline precision %r, expected %r" % (got, want))
print("stats: model and pipeline precision %s" % want)
PY
  score "$run_dir/service-$precision.jsonl" "$pairs" --endpoint "$endpoint"
  score "$run_dir/reversed-$precision.jsonl" "$run_dir/reversed.tsv" --endpoint "$endpoint"
  e2e_stop
  same "$precision service, 2 stages" "$run_dir/whole-$precision.jsonl" "$run_dir/service-$precision.jsonl"
  same "$precision service, 2 stages, reversed" "$run_dir/whole-$precision.jsonl" \
    "$run_dir/reversed-$precision.jsonl" reversed
done
echo "score_batch_invariance: 3 precisions, each pair alone, in process and through 2 stages: the same bits"
