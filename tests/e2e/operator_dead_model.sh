#!/usr/bin/env bash
# A model whose last pipeline died (issue 11): while it is down, requests that
# name no model go to the model that is still served (the dead one does not
# make the choice ambiguous); after --model-grace-ms without a pipeline the
# broker unregisters it: what was queued for it is answered UNAVAILABLE "no
# live pipeline since T", later requests hear the same (stats list it under
# models_gone, the clients say it before streaming).
# Usage: operator_dead_model.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init op-dead-model "$1"
model="$top/models/tiny-clm-enfr"

e2e_broker --model-grace-ms 3000
alive() { e2e_stat_sum pipelines_alive; }
alive_is() { [ "$(alive)" = "$1" ]; }
e2e_worker_job alpha --model "$model" --name alpha
alpha=$E2E_JOB_PID
e2e_worker_job beta --model "$model" --name beta
e2e_wait_until 20 "alpha and beta to register" alive_is 2

echo '{"name": "c1", "head": "base", "inputs": {"input_ids": [[0, 25, 26, 1]]}}' > "$run_dir/case.jsonl"
# alpha dies hard: its rank and its mpirun, no goodbye to the broker.
for w in $(pgrep -P "$alpha"); do kill -KILL "$w"; done
kill -KILL "$alpha"
e2e_wait_until 10 "the broker to notice alpha's death" alive_is 1
grep -q "model 'alpha' unregistered" "$run_dir/broker.log" && e2e_fail "alpha unregistered before its grace ran out"

# During the grace period: no model named goes to beta; a request for alpha waits.
"$build/bin/xlm-client" infer --endpoint "$endpoint" < "$run_dir/case.jsonl" > "$run_dir/none.jsonl" 2> "$run_dir/none.log" ||
  e2e_fail "a request naming no model was refused while alpha is dead but listed"
grep -q '"outputs"' "$run_dir/none.jsonl" || e2e_fail "no result for the request naming no model"
e2e_expect_status 1 "$build/bin/xlm-client" infer --endpoint "$endpoint" --model alpha --attempts 1 \
  --attempt-timeout-ms 20000 < "$run_dir/case.jsonl" > "$run_dir/queued.jsonl" 2> "$run_dir/queued.log"
grep -q '"code":\s*"unavailable"' "$run_dir/queued.jsonl" || e2e_fail "the queued request is not answered unavailable"
grep -q 'no live pipeline since 20[0-9-]*T' "$run_dir/queued.jsonl" || e2e_fail "the queued request does not hear 'no live pipeline since T'"
grep -q "model 'alpha' unregistered: no live pipeline since" "$run_dir/broker.log" || e2e_fail "the broker did not log alpha's unregistration"
echo "queued for the dead model: $(cat "$run_dir/queued.jsonl")"

# Unregistered: a new request for alpha hears when it died, at once; xlm-score
# refuses the job before streaming, naming it; no model named still goes to beta.
e2e_expect_status 2 "$build/bin/xlm-client" infer --endpoint "$endpoint" --model alpha --attempts 1 \
  < "$run_dir/case.jsonl" > "$run_dir/later.jsonl" 2> "$run_dir/later.log"
# xlm-client infer, as xlm-score, refuses the job before its first line.
e2e_says "$run_dir/later.log" "xlm-client: model 'alpha': no live pipeline since 20"
[ ! -s "$run_dir/later.jsonl" ] || e2e_fail "the refused job wrote lines: $(cat "$run_dir/later.jsonl")"
head -n 3 "$model/examples/pairs.tsv" > "$run_dir/pairs.tsv"
e2e_expect_status 2 "$build/bin/xlm-score" --endpoint "$endpoint" --model alpha --mode clm --quiet \
  --input "$run_dir/pairs.tsv" --output "$run_dir/scores.jsonl" 2> "$run_dir/score.log"
e2e_says "$run_dir/score.log" "model 'alpha': no live pipeline since 20"
"$build/bin/xlm-client" infer --endpoint "$endpoint" < "$run_dir/case.jsonl" > "$run_dir/none2.jsonl" 2> "$run_dir/none2.log" ||
  e2e_fail "a request naming no model was refused after alpha was unregistered"
[[ $("$build/bin/xlm-client" stats --endpoint "$endpoint") == *'"models_gone"'* ]] || e2e_fail "stats do not list models_gone"
echo "later: $(cat "$run_dir/later.log"); xlm-score: $(cat "$run_dir/score.log")"
echo PASS
