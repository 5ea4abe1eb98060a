#!/usr/bin/env bash
# xlm-score on the bundled model against its reference scores (HuggingFace's):
# pairs.tsv and shuffled.tsv, in process and through the service with 1 and 2
# stages. Every score within 1e-3, n_target_tokens equal, tokens equal, the
# ranking accuracy by mean 0.980 as the model's README says.
# Usage: score_reference.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init score-reference "$1"
model="$top/models/tiny-clm-enfr"

check() { # label output reference
  python3 - "$@" <<'PY'
import json, sys
label, got_path, ref_path = sys.argv[1:4]
got = [json.loads(l) for l in open(got_path)]
ref = [json.loads(l) for l in open(ref_path)]
assert len(got) == len(ref) == 200, (label, len(got))
worst = 0.0
for g, r in zip(got, ref):
    assert g["line"] == r["line"], (label, g)
    assert "error" not in g, (label, g)
    assert g["n_target_tokens"] == r["n_target_tokens"], (label, g, r["n_target_tokens"])
    assert g["tokens"] == r["tgt_tokens"] + ["</s>"], (label, g["line"])
    for a, b in zip(g["token_scores"], r["target_logprobs"]):
        assert abs(a - b) <= 1e-4 + 1e-4 * abs(b), (label, g["line"], a, b)
    d = abs(g["score"] - r["score"])
    worst = max(worst, d)
    assert d <= 1e-3, (label, g["line"], g["score"], r["score"])
    assert abs(g["mean"] - g["score"] / g["n_target_tokens"]) < 1e-9
print("%s: 200/200 scores within 1e-3 of the reference (worst %.2e)" % (label, worst))
PY
}

run_score() { # label args...
  local label=$1; shift
  for f in pairs shuffled; do
    rm -f "$run_dir/$f.jsonl"
    local report=/dev/null
    [ -n "$summary" ] && report="$run_dir/summary.txt"
    "$build/bin/xlm-score" "$@" --mode clm --token-scores --quiet \
      --input "$model/examples/$f.tsv" --output "$run_dir/$f.jsonl" \
      ${summary:+--summary "$model/examples/shuffled.tsv"} > "$report"
    summary=
    check "$label $f" "$run_dir/$f.jsonl" "$model/examples/${f}_scores.jsonl"
  done
}

summary=1 run_score "in process" --model "$model"
grep -q "ranking accuracy by mean: 0.980 (196 of 200" "$run_dir/summary.txt" ||
  { echo "unexpected summary: $(cat "$run_dir/summary.txt")"; exit 1; }
cat "$run_dir/summary.txt"
for stages in 1 2; do
  e2e_start --model "$model" --stages "$stages"
  summary=1 run_score "service stages=$stages" --endpoint "$endpoint"
  grep -q "ranking accuracy by mean: 0.980 (196 of 200" "$run_dir/summary.txt"
  e2e_stop
done
echo "score_reference: 1200 scores checked"
