#!/usr/bin/env bash
# Pipeline ids are unique per job (issue 11): two worker jobs of one model on
# one host serve side by side (ids model@host/jJOB/pINDEX), with no eviction;
# a second job that claims a live pipeline's id (the same --pipeline-prefix)
# is refused with one broker log line and stops with the reason on stderr,
# while the first keeps serving.
# Usage: operator_pipelines.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init op-pipelines "$1"
model="$top/models/tiny-clm-enfr"

e2e_broker
pipeline_ids() { stats | python3 -c 'import json,sys; print(" ".join(p["id"] for m in json.load(sys.stdin)["models"] for p in m["pipelines"]))'; }
stats() { "$build/bin/xlm-client" stats --endpoint "$endpoint" --timeout-ms 2000 2>/dev/null; }
alive_at_least() { [ "$(e2e_stat_sum pipelines_alive)" -ge "$1" ]; }
alive() { e2e_stat_sum pipelines_alive; }

# Two jobs, default ids: both registered, and still both after 3 eviction
# periods (the worker presumes the broker gone after 6 x 500 ms of silence).
e2e_worker_job jobA --model "$model"
e2e_wait_until 20 "job A to register" alive_at_least 1
e2e_worker_job jobB --model "$model"
e2e_wait_until 20 "job B to register beside job A" alive_at_least 2
sleep 10
[ "$(alive)" = 2 ] || e2e_fail "not 2 pipelines alive 10 s after both registered"
echo "pipeline ids: $(pipeline_ids)"
grep -q "removed\|registered again" "$run_dir/broker.log" && e2e_fail "a pipeline was evicted"
echo "two jobs on one host serve side by side"

# The same id claimed by a second live job: refused once, the job stops.
e2e_worker_job jobC --model "$model" --pipeline-prefix dup
e2e_wait_until 20 "job C to register" alive_at_least 3
e2e_worker_job jobD --model "$model" --pipeline-prefix dup
d=$E2E_JOB_PID
e2e_wait_until 20 "job D (duplicate ids) to stop" e2e_gone "$d"
status=0
wait "$d" || status=$?
[ "$status" != 0 ] || e2e_fail "job D exited with status 0"
e2e_says "$run_dir/jobD.log" "the broker refused pipeline dup/p0"
n=$(grep -c "refused: that id is served by another live pipeline" "$run_dir/broker.log" || true)
[ "$n" = 1 ] || e2e_fail "the broker logged the refusal $n times, expected once"
sleep 4
[ "$(alive)" = 3 ] || e2e_fail "not 3 pipelines alive after the duplicate was refused"
grep -q "removed\|registered again" "$run_dir/broker.log" && e2e_fail "a pipeline was evicted"
echo "a duplicate id is refused once (job D exit status $status); the first job keeps serving"
echo PASS
