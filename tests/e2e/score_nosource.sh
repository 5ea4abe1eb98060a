#!/usr/bin/env bash
# xlm-score --no-source scores <s> tgt </s> alone: equal to the sum of
# xlm-infer's clm_score log-probabilities of that sequence (every token after
# <s>), in process and through the service; also reads pairs from stdin.
# Usage: score_nosource.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init score-nosource "$1"
model="$top/models/tiny-clm-enfr"

head -n 40 "$model/examples/pairs.tsv" > "$run_dir/pairs.tsv"
python3 - "$run_dir/pairs.tsv" > "$run_dir/tokenize.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    sl, s, tl, t = line.rstrip("\n").split("\t")
    print(json.dumps({"lang": tl, "text": t}))
PY
"$build/bin/xlm-tokenize" --model "$model" < "$run_dir/tokenize.jsonl" |
  python3 -c '
import json, sys
for n, line in enumerate(sys.stdin, 1):
    t = json.loads(line)
    print(json.dumps({"name": str(n), "head": "lm", "kind": "clm_score",
                      "inputs": {"input_ids": [t["input_ids"]], "langs": [t["langs"]],
                                 "attention_mask": [[1] * len(t["input_ids"])]}}))' > "$run_dir/cases.jsonl"
"$build/bin/xlm-infer" --model "$model" < "$run_dir/cases.jsonl" > "$run_dir/expected.jsonl"

check() { # label output
  python3 - "$1" "$2" "$run_dir/expected.jsonl" <<'PY'
import json, sys
label, got_path, exp_path = sys.argv[1:4]
got = [json.loads(l) for l in open(got_path)]
exp = [json.loads(l)["outputs"] for l in open(exp_path)]
assert len(got) == len(exp) == 40, (label, len(got))
for g, e in zip(got, exp):
    lp = e["token_logprobs"][0]
    assert g["n_target_tokens"] == len(lp), (label, g)
    assert abs(g["score"] - sum(lp)) < 1e-3, (label, g["line"], g["score"], sum(lp))
print("%s: 40 targets scored alone, equal to xlm-infer's clm_score" % label)
PY
}
"$build/bin/xlm-score" --model "$model" --mode clm --no-source --quiet --input - \
  --output "$run_dir/local.jsonl" < "$run_dir/pairs.tsv"
check "--no-source in process (stdin)" "$run_dir/local.jsonl"
e2e_start --model "$model" --stages 2
"$build/bin/xlm-score" --endpoint "$endpoint" --mode clm --no-source --quiet \
  --input "$run_dir/pairs.tsv" --output - > "$run_dir/service.jsonl"
check "--no-source through the service (stdout)" "$run_dir/service.jsonl"
