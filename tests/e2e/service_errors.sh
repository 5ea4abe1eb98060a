#!/usr/bin/env bash
# Bad requests to the real service (broker + mpirun, 2 stages) each get their
# error reply and the service keeps serving: unknown model, a task the model
# does not serve, an id past the vocabulary, a row past the positions, an
# empty row, ragged rows, a language id past n_langs; the good lines around
# them are answered with the golden outputs.
# Usage: service_errors.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init service-errors "$1"
model="$top/tests/golden/clm-lm"
e2e_start --model "$model" --stages 2

good=$(head -n 1 "$model/cases.jsonl")
long=$(python3 -c 'print(",".join(["7"] * 65))')
{
  echo "$good"
  echo '{"name":"task","head":"qa","inputs":{"input_ids":[[0,7,8,1]]}}'
  echo '{"name":"vocab","head":"lm","inputs":{"input_ids":[[0,5000,1]]}}'
  echo "{\"name\":\"long\",\"head\":\"lm\",\"inputs\":{\"input_ids\":[[$long]]}}"
  echo '{"name":"empty","head":"lm","inputs":{"input_ids":[[]]}}'
  echo '{"name":"ragged","head":"lm","inputs":{"input_ids":[[0,7,1],[0,1]]}}'
  echo '{"name":"lang","head":"lm","inputs":{"input_ids":[[0,7,1]],"langs":[[0,9,0]]}}'
  echo 'not json at all'
  echo "$good"
} > "$run_dir/cases.jsonl"
e2e_expect_status 1 "$build/bin/xlm-client" infer --endpoint "$endpoint" < "$run_dir/cases.jsonl" > "$run_dir/out.jsonl"
python3 - "$run_dir/out.jsonl" "$model/cases.jsonl" <<'PY'
import json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
golden = json.loads(open(sys.argv[2]).readline())
assert len(got) == 9, len(got)
codes = [g.get("error", {}).get("code", "ok") for g in got]
print("service errors:", codes)
expected = ["ok", "unknown_task", "bad_request", "too_large", "bad_request", "bad_request", "bad_request", "bad_request", "ok"]
assert codes == expected, (codes, expected)
for g in (got[0], got[8]):
    exp = golden["outputs"]["logits"]
    out = g["outputs"]["logits"]
    worst = max(abs(a - b) for ra, rb in zip(out, exp) for sa, sb in zip(ra, rb) for a, b in zip(sa, sb))
    assert worst < 1e-4, worst
for g in got[1:8]:
    assert g["error"]["message"], g
print("service errors: each refused with its reason, the good lines before and after answered")
PY
# A model the service does not have: xlm-client refuses the job before its
# first line, naming the served ones (status 2, nothing written).
echo "$good" > "$run_dir/good.jsonl"
e2e_expect_status 2 "$build/bin/xlm-client" infer --endpoint "$endpoint" --model nope \
  < "$run_dir/good.jsonl" > "$run_dir/nope.jsonl" 2> "$run_dir/nope.log"
e2e_says "$run_dir/nope.log" "unknown model 'nope': the service at $endpoint serves clm-lm"
[ ! -s "$run_dir/nope.jsonl" ] || e2e_fail "the refused job wrote lines"
echo "service errors: unknown model named"
