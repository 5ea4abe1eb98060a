#!/usr/bin/env bash
# xlm-score --mode mlm-pll against an independent computation on the golden
# masked-LM checkpoint: the pair tokenised by xlm-tokenize, each target token
# masked in its own copy, the copy run through xlm-infer's full LM logits,
# log_softmax at the masked position. In process and through the service (2 stages).
# Usage: score_pll.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init score-pll "$1"
model="$top/tests/golden/mlm_multi-lm"

# 30 pairs of the bundled en-fr set, in both directions, plus a de/ro pair.
head -n 30 "$top/models/tiny-clm-enfr/examples/pairs.tsv" > "$run_dir/pairs.tsv"
printf 'de\tDas ist ein kleiner Test.\tro\tAcesta este un test mic, ştiţi.\n' >> "$run_dir/pairs.tsv"

python3 - "$run_dir/pairs.tsv" > "$run_dir/tokenize.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    sl, s, tl, t = line.rstrip("\n").split("\t")
    print(json.dumps({"lang": sl, "text": s, "lang_pair": tl, "text_pair": t}))
PY
"$build/bin/xlm-tokenize" --model "$model" < "$run_dir/tokenize.jsonl" > "$run_dir/tokens.jsonl"

# The masked copies as xlm-infer cases (pairs longer than the model are left out).
python3 - "$run_dir/tokens.jsonl" "$model/config.json" > "$run_dir/copies.jsonl" <<'PY'
import json, sys
mask = json.load(open(sys.argv[2]))["mask_index"]
for n, line in enumerate(open(sys.argv[1]), 1):
    t = json.loads(line)
    ids, langs = t["input_ids"], t["langs"]
    if len(ids) > 64:
        continue
    first = len(t["tokens"]) + 2
    for pos in range(first, first + len(t["tokens_pair"])):
        copy = list(ids)
        copy[pos] = mask
        print(json.dumps({"name": "%d:%d:%d" % (n, pos, ids[pos]), "head": "lm",
                          "inputs": {"input_ids": [copy], "langs": [langs]}}))
PY
"$build/bin/xlm-infer" --model "$model" --threads 1 < "$run_dir/copies.jsonl" > "$run_dir/logits.jsonl"
python3 - "$run_dir/logits.jsonl" > "$run_dir/expected.json" <<'PY'
import json, math, sys
expected = {}
for line in open(sys.argv[1]):
    o = json.loads(line)
    n, pos, target = map(int, o["name"].split(":"))
    row = o["outputs"]["logits"][0][pos]
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    expected.setdefault(n, []).append(row[target] - lse)
print(json.dumps(expected))
PY

check() { # label output
  python3 - "$1" "$2" "$run_dir/expected.json" "$run_dir/pairs.tsv" <<'PY'
import json, sys
label, got_path, exp_path, pairs = sys.argv[1:5]
expected = {int(k): v for k, v in json.load(open(exp_path)).items()}
got = [json.loads(l) for l in open(got_path)]
assert len(got) == sum(1 for _ in open(pairs)), label
checked = 0
for g in got:
    if g["line"] not in expected:
        assert g["error"]["code"] == "too_large", (label, g)
        continue
    e = expected[g["line"]]
    assert g["n_target_tokens"] == len(e), (label, g["line"])
    for a, b in zip(g["token_scores"], e):
        assert abs(a - b) <= 1e-4 + 1e-4 * abs(b), (label, g["line"], a, b)
    assert abs(g["score"] - sum(e)) <= 1e-3, (label, g["line"], g["score"], sum(e))
    checked += 1
assert checked >= 25, (label, checked)
print("%s: %d pairs, every token's PLL equal to the logits computation" % (label, checked))
PY
}

# Some pairs are too long for the model: their lines fail, so the job exits 1.
e2e_expect_status 1 "$build/bin/xlm-score" --model "$model" --mode mlm-pll --token-scores --quiet \
  --input "$run_dir/pairs.tsv" --output "$run_dir/local.jsonl"
check "mlm-pll in process" "$run_dir/local.jsonl"
e2e_start --model "$model" --stages 2
e2e_expect_status 1 "$build/bin/xlm-score" --endpoint "$endpoint" --mode mlm-pll --token-scores \
  --quiet --input "$run_dir/pairs.tsv" --output "$run_dir/service.jsonl"
check "mlm-pll through the service" "$run_dir/service.jsonl"
