#!/usr/bin/env bash
# A model whose last pipeline died (issue 11): while it is down, requests that
# name no model go to the model that is still served (the dead one does not
# make the choice ambiguous); after --model-grace-ms without a pipeline the
# broker unregisters it: what was queued for it is answered UNAVAILABLE "no
# live pipeline since T", later requests hear the same (stats list it under
# models_gone, the clients say it before streaming).
# Usage: operator_dead_model.sh BUILD_DIR
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=$1
model="$top/models/tiny-clm-enfr"
run_dir=$(mktemp -d /tmp/xlm-op-dead-XXXXXX)
mapfile -t ports < <("$top/tests/tools/free_ports" 2)
frontend="tcp://127.0.0.1:${ports[0]}" backend="tcp://127.0.0.1:${ports[1]}"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  rm -rf "$run_dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$run_dir"/*.log "$run_dir"/*.jsonl "$run_dir"/*.err; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done; exit 1; }

"$build/bin/xlm-broker" --frontend "$frontend" --backend "$backend" --model-grace-ms 3000 \
  > "$run_dir/broker.log" 2>&1 &
pids+=($!)
job() { # NAME: one single-rank job serving the bundled model as NAME
  mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp \
    --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -np 1 \
    "$build/bin/xlm-worker" --model "$model" --broker "$backend" --name "$1" > "$run_dir/$1.log" 2>&1 &
  pids+=($!)
}
alive() { "$build/bin/xlm-client" stats --endpoint "$frontend" --timeout-ms 2000 2>/dev/null |
  python3 -c 'import json,sys
try: print(sum(m["pipelines_alive"] for m in json.load(sys.stdin)["models"]))
except Exception: print(0)'; }
job alpha; alpha=${pids[-1]}
job beta
for _ in $(seq 1 100); do [ "$(alive)" -ge 2 ] && break; sleep 0.2; done
[ "$(alive)" = 2 ] || fail "alpha and beta did not both register"

echo '{"name": "c1", "head": "base", "inputs": {"input_ids": [[0, 25, 26, 1]]}}' > "$run_dir/case.jsonl"
# alpha dies hard: its rank and its mpirun, no goodbye to the broker.
for w in $(pgrep -P "$alpha"); do kill -KILL "$w"; done
kill -KILL "$alpha"
for _ in $(seq 1 50); do [ "$(alive)" = 1 ] && break; sleep 0.2; done
[ "$(alive)" = 1 ] || fail "the broker did not notice alpha's death"
grep -q "model 'alpha' unregistered" "$run_dir/broker.log" && fail "alpha unregistered before its grace ran out"

# During the grace period: no model named goes to beta; a request for alpha waits.
"$build/bin/xlm-client" infer --endpoint "$frontend" < "$run_dir/case.jsonl" > "$run_dir/none.jsonl" 2> "$run_dir/none.err" ||
  fail "a request naming no model was refused while alpha is dead but listed"
grep -q '"outputs"' "$run_dir/none.jsonl" || fail "no result for the request naming no model"
"$build/bin/xlm-client" infer --endpoint "$frontend" --model alpha --attempts 1 \
  --attempt-timeout-ms 20000 < "$run_dir/case.jsonl" > "$run_dir/queued.jsonl" 2> "$run_dir/queued.err"
status=$?
[ "$status" = 1 ] || fail "the request queued for alpha: exit status $status, expected 1"
grep -q '"code":\s*"unavailable"' "$run_dir/queued.jsonl" || fail "the queued request is not answered unavailable"
grep -q 'no live pipeline since 20[0-9-]*T' "$run_dir/queued.jsonl" || fail "the queued request does not hear 'no live pipeline since T'"
grep -q "model 'alpha' unregistered: no live pipeline since" "$run_dir/broker.log" || fail "the broker did not log alpha's unregistration"
echo "queued for the dead model: $(cat "$run_dir/queued.jsonl")"

# Unregistered: a new request for alpha hears when it died, at once; xlm-score
# refuses the job before streaming, naming it; no model named still goes to beta.
"$build/bin/xlm-client" infer --endpoint "$frontend" --model alpha --attempts 1 < "$run_dir/case.jsonl" > "$run_dir/later.jsonl" 2> "$run_dir/later.err"
status=$?
[ "$status" = 1 ] || fail "a request for the unregistered alpha: exit status $status, expected 1"
grep -q '"code":\s*"unavailable".*no live pipeline since 20' "$run_dir/later.jsonl" || fail "a later request does not hear 'no live pipeline since T'"
head -n 3 "$model/examples/pairs.tsv" > "$run_dir/pairs.tsv"
"$build/bin/xlm-score" --endpoint "$frontend" --model alpha --mode clm --quiet --input "$run_dir/pairs.tsv" \
  --output "$run_dir/scores.jsonl" 2> "$run_dir/score.err"
status=$?
[ "$status" = 2 ] || fail "xlm-score --model alpha: exit status $status, expected 2"
grep -q "model 'alpha': no live pipeline since 20" "$run_dir/score.err" || fail "xlm-score does not say 'no live pipeline since T'"
"$build/bin/xlm-client" infer --endpoint "$frontend" < "$run_dir/case.jsonl" > "$run_dir/none2.jsonl" 2> "$run_dir/none2.err" ||
  fail "a request naming no model was refused after alpha was unregistered"
"$build/bin/xlm-client" stats --endpoint "$frontend" | grep -q '"models_gone"' || fail "stats do not list models_gone"
echo "later: $(cat "$run_dir/later.jsonl"); xlm-score: $(cat "$run_dir/score.err")"
echo PASS
