#!/usr/bin/env bash
# Exit statuses and failing fast (issue 11): 0 every line scored, 1 some
# lines failed (counted by code in the closing line), 2 could not run
# (nothing written, no empty output left), 3 stopped by --max-errors. A
# broker that is not there, an unknown model and --mode mlm-pll on a causal
# model are refused once, at once, through the service as in process; the
# same exit statuses from xlm-infer and xlm-client infer.
# Usage: score_exit.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init score-exit "$1"
model="$top/models/tiny-clm-enfr"
score="$build/bin/xlm-score"

# expect STATUS LABEL command...: runs it (stderr to err.log, shown if the
# test fails), checks the status.
expect() {
  local want=$1 label=$2
  shift 2
  e2e_expect_status "$want" "$@" 2> "$run_dir/err.log"
  echo "$label: exit status $want"
}
said() { e2e_says "$run_dir/err.log" "$1"; }

head -n 20 "$model/examples/pairs.tsv" > "$run_dir/good.tsv"
{ cat "$run_dir/good.tsv"; printf 'xx\tHello\tfr\tBonjour\n'; printf 'en\tonly three\tfr\n'
  printf 'en\tHello\tfr\tBonjour\n'; } > "$run_dir/bad.tsv"

# In process.
expect 0 "in process, every line scored" "$score" --model "$model" --mode clm --quiet \
  --input "$run_dir/good.tsv" --output "$run_dir/good.jsonl"
expect 1 "in process, two lines failed" "$score" --model "$model" --mode clm \
  --input "$run_dir/bad.tsv" --output "$run_dir/bad.jsonl"
said "errors: bad_request 2"
[ "$(wc -l < "$run_dir/bad.jsonl")" = 23 ] || e2e_fail "bad.jsonl does not hold 23 lines"
expect 3 "in process, --max-errors 0" "$score" --model "$model" --mode clm --quiet \
  --max-errors 0 --input "$run_dir/bad.tsv" --output "$run_dir/max.jsonl"
said "more than --max-errors 0"
[ "$(wc -l < "$run_dir/max.jsonl")" = 21 ] || e2e_fail "--max-errors 0 did not stop after the first failed line"
expect 2 "in process, a model folder that is not there" "$score" --model "$run_dir/nomodel" \
  --mode clm --quiet --input "$run_dir/good.tsv" --output "$run_dir/nomodel.jsonl"
e2e_absent "$run_dir/nomodel.jsonl"
expect 2 "in process, an input that is not there" "$score" --model "$model" --mode clm --quiet \
  --input "$run_dir/none.tsv" --output "$run_dir/noinput.jsonl"
e2e_absent "$run_dir/noinput.jsonl"
expect 2 "in process, mlm-pll on a causal model" "$score" --model "$model" --mode mlm-pll \
  --quiet --input "$run_dir/good.tsv" --output "$run_dir/pll.jsonl"
said "is a causal LM: score it with --mode clm"
e2e_absent "$run_dir/pll.jsonl"

# Nothing listening: refused within seconds, nothing written.
nobody="tcp://127.0.0.1:$(e2e_free_port)"
start=$(date +%s)
expect 2 "service, nothing listening" "$score" --endpoint "$nobody" \
  --connect-timeout-ms 2000 --mode clm --quiet --input "$run_dir/good.tsv" \
  --output "$run_dir/nobroker.jsonl"
said "cannot reach the broker at $nobody (no reply to a stats request within 2 s)"
[ $(( $(date +%s) - start )) -le 10 ] || e2e_fail "took more than 10 s to give up"
e2e_absent "$run_dir/nobroker.jsonl"

e2e_start --model "$model" --stages 2
expect 0 "service, every line scored" "$score" --endpoint "$endpoint" --mode clm --quiet \
  --input "$run_dir/good.tsv" --output "$run_dir/s-good.jsonl"
expect 1 "service, two lines failed" "$score" --endpoint "$endpoint" --mode clm \
  --input "$run_dir/bad.tsv" --output "$run_dir/s-bad.jsonl"
said "errors: bad_request 2"
expect 2 "service, unknown model" "$score" --endpoint "$endpoint" --model nosuch --mode clm \
  --quiet --input "$run_dir/bad.tsv" --output "$run_dir/s-model.jsonl"
said "unknown model 'nosuch': the service at $endpoint serves tiny-clm-enfr"
[ "$(grep -c "nosuch" "$run_dir/err.log")" = 1 ] || e2e_fail "the unknown model was reported more than once"
e2e_absent "$run_dir/s-model.jsonl"
expect 2 "service, mlm-pll on a causal model" "$score" --endpoint "$endpoint" --mode mlm-pll \
  --quiet --input "$run_dir/bad.tsv" --output "$run_dir/s-pll.jsonl"
said "task mlm_pll is not served by model 'tiny-clm-enfr'"
said "a causal LM is scored with --mode clm"
e2e_absent "$run_dir/s-pll.jsonl"

# xlm-infer and xlm-client infer: the same statuses.
ok='{"name":"ok","head":"lm","inputs":{"input_ids":[[0,5,6,1]]}}'
bad='{"name":"bad","head":"lm","inputs":{"input_ids":[[0,999999,1]]}}'
echo "$ok" > "$run_dir/ok.jsonl"
printf '%s\n%s\n' "$ok" "$bad" > "$run_dir/mixed.jsonl"
expect 0 "xlm-infer, every line ran" "$build/bin/xlm-infer" --model "$model" \
  < "$run_dir/ok.jsonl" > /dev/null
expect 1 "xlm-infer, a line failed" "$build/bin/xlm-infer" --model "$model" \
  < "$run_dir/mixed.jsonl" > /dev/null
said "1 with an error"
expect 2 "xlm-infer, no model" "$build/bin/xlm-infer" --model "$run_dir/nomodel" \
  < "$run_dir/ok.jsonl" > /dev/null
expect 0 "xlm-client infer, every line ran" "$build/bin/xlm-client" infer --endpoint "$endpoint" \
  < "$run_dir/ok.jsonl" > /dev/null
expect 1 "xlm-client infer, a line failed" "$build/bin/xlm-client" infer --endpoint "$endpoint" \
  < "$run_dir/mixed.jsonl" > /dev/null
said "1 with an error"
expect 3 "xlm-client infer, --max-errors 0" "$build/bin/xlm-client" infer --endpoint "$endpoint" \
  --max-errors 0 < "$run_dir/mixed.jsonl" > /dev/null
echo "score_exit: all statuses as documented"
