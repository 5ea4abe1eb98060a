#!/usr/bin/env bash
# Fault tests on the real service (127.0.0.1 only), the bundled model in 2 stages:
#   worker: kill -9 the worker rank of the last stage during a run of 2,000
#           requests; the broker must re-queue what that pipeline held and
#           the supervisor restart the job;
#   broker: kill -9 the broker during the run and start it again; the
#           workers must register with the new broker and the client's
#           retries reach it.
# The kill must land mid-run (fewer than 2,000 answers before it). Every
# request must be answered exactly once, with the outputs of the offline
# engine (xlm-infer) within the golden tolerance. XLM_E2E_CURVE=1: the same
# with CURVE on both broker ports (keys made by deploy/local/start --curve).
# Usage: faults.sh BUILD_DIR worker|broker
set -euo pipefail
. "$(dirname "$0")/lib.sh"
fault=$2
e2e_init "faults-$fault" "$1"
model="$top/models/tiny-clm-enfr"
stages=2 total=2000
case $fault in worker|broker) ;; *) echo "faults: unknown fault $fault" >&2; exit 2 ;; esac

# 2,000 scoring requests: the 200 reference pairs, ten times, distinct names.
python3 - "$model/examples/pairs_scores.jsonl" > "$run_dir/requests.jsonl" <<'PY'
import json, sys
pairs = [json.loads(l) for l in open(sys.argv[1])]
for rep in range(10):
    for p in pairs:
        ids = p["input_ids"]
        print(json.dumps({"name": "r%d-%d" % (rep, p["line"]), "head": "lm", "kind": "clm_score",
                          "inputs": {"input_ids": [ids], "attention_mask": [[1] * len(ids)],
                                     "langs": [p["langs"]]}}, separators=(",", ":")))
PY
# The expected outputs, offline, in the same format as cases.jsonl.
"$build/bin/xlm-infer" --model "$model" --threads 1 < "$run_dir/requests.jsonl" |
  python3 -c '
import json, sys
reqs = [json.loads(l) for l in open(sys.argv[1])]
for req, line in zip(reqs, sys.stdin):
    req["outputs"] = json.loads(line)["outputs"]
    print(json.dumps(req))' "$run_dir/requests.jsonl" > "$run_dir/expected.jsonl"

e2e_start --model "$model" --stages "$stages" --timeout 60
if [ "${XLM_E2E_CURVE:-0}" = 1 ]; then
  # CURVE holds: a client without keys is refused, and says why.
  plain=$("$build/bin/xlm-client" stats --endpoint "$endpoint" --timeout-ms 1500 2>&1) &&
    e2e_fail "a client without CURVE keys got stats from the CURVE broker"
  [[ $plain == *"broker requires CURVE"* ]] || e2e_fail "the plain client's error does not say why: $plain"
  grep -q "CURVE: the frontend allows 2 client keys" "$run_dir/broker.log" ||
    e2e_fail "the broker's log does not show CURVE on the frontend"
  echo "faults: CURVE on; a plain client is refused: ${plain#xlm-client: }"
fi

"$build/bin/xlm-client" infer --endpoint "$endpoint" --window 32 \
  --attempt-timeout-ms 3000 --attempts 20 ${e2e_client_keys[@]+"${e2e_client_keys[@]}"} \
  < "$run_dir/requests.jsonl" > "$run_dir/got.jsonl" &
client=$!
e2e_background "$client"

# Answers counted by the broker (the client's output is buffered).
done_count() { e2e_stat requests_done 0; }
at_least_done() { [ "$(done_count)" -ge "$1" ]; }

# Strike once a tenth of the answers are in.
e2e_wait_until 60 "200 answers before the fault" at_least_done 200
case $fault in
  worker)
    # The rank of the last stage of pipeline 0 (it sends the replies): by
    # its MPI rank, and its own log says it owns that stage.
    rank=$((stages - 1))
    grep -q "xlm-worker \[info\] rank $rank: pipeline 0 stage $((stages - 1))/$stages:" "$run_dir/workers.log" ||
      e2e_fail "no log line of rank $rank owning stage $((stages - 1)) of pipeline 0"
    victim=$(e2e_worker_pid "$rank") || e2e_fail "no xlm-worker process of rank $rank"
    before=$(done_count)
    kill -9 "$victim"
    echo "faults: kill -9 rank $rank (the last stage, pid $victim) after $before answers" ;;
  broker)
    victim=$(cat "$run_dir/broker.pid")
    before=$(done_count)
    kill -9 "$victim"
    echo "faults: kill -9 the broker (pid $victim) after $before answers, start it again once it is gone" ;;
esac
e2e_wait_until 10 "pid $victim to end" e2e_gone "$victim"
if [ "$fault" = broker ]; then
  "$build/bin/xlm-broker" --frontend "$endpoint" --backend "tcp://127.0.0.1:$backend" \
    ${e2e_broker_keys[@]+"${e2e_broker_keys[@]}"} >> "$run_dir/broker.log" 2>&1 &
  echo $! > "$run_dir/broker.pid"
fi

rc=0
wait "$client" || rc=$?
[ $rc = 0 ] || e2e_fail "xlm-client exited $rc"

# What shows the fault was felt.
case $fault in
  worker)
    requeued=$(e2e_stat requests_requeued 0)
    logged=$(grep -cE "removed \(.*\); [1-9][0-9]* requests queued again" "$run_dir/broker.log" || true)
    restarts=$(grep -c "supervisor: mpirun exited.*, restarting" "$run_dir/workers.log" || true)
    after=$(( $(done_count) - before ))
    echo "faults: broker re-queued $requeued requests ($logged log lines), $restarts mpirun restarts, $after answers after the kill"
    e2e_assert_fault_landed "kill -9 of rank $rank" "$before" "$total" "$requeued" "requests re-queued by the broker"
    [ "$logged" -ge 1 ] || e2e_fail "no 'requests queued again' line in the broker's log"
    [ "$restarts" -ge 1 ] || e2e_fail "the supervisor did not restart mpirun"
    [ "$after" -ge 1 ] || e2e_fail "no answer after the kill" ;;
  broker)
    # The new broker knows only what came after the kill.
    received=$(e2e_stat requests_received 0)
    after=$(done_count)
    alive=$(e2e_stat pipelines_alive 0)
    reregistered=$(grep -c "the broker asked to re-register" "$run_dir/workers.log" || true)
    echo "faults: the new broker received $received requests, answered $after, $alive pipeline(s); $reregistered re-registrations in the workers' log"
    e2e_assert_fault_landed "kill -9 of the broker" "$before" "$total" "$after" "answers from the restarted broker"
    [ "$alive" -ge 1 ] || e2e_fail "no pipeline registered with the new broker"
    [ "$reregistered" -ge 1 ] || e2e_fail "no worker re-registered after the restart" ;;
esac

python3 - "$run_dir/got.jsonl" "$total" <<'PY'
import collections, json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
total = int(sys.argv[2])
names = collections.Counter(g["name"] for g in got)
dups = [n for n, c in names.items() if c > 1]
errors = [g for g in got if "error" in g]
print("faults: %d answers, %d distinct, %d duplicates, %d errors" % (len(got), len(names), len(dups), len(errors)))
if errors:
    print("faults: first error:", errors[0])
sys.exit(0 if len(got) == total and len(names) == total and not errors else 1)
PY
e2e_compare "$run_dir/expected.jsonl" "$run_dir/got.jsonl" "faults($fault): outputs vs the offline engine"
