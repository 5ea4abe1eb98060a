#!/usr/bin/env bash
# Pipeline ids are unique per job (issue 11): two worker jobs of one model on
# one host serve side by side (ids model@host/jJOB/pINDEX), with no eviction;
# a second job that claims a live pipeline's id (the same --pipeline-prefix)
# is refused with one broker log line and stops with the reason on stderr,
# while the first keeps serving.
# Usage: operator_pipelines.sh BUILD_DIR
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=$1
model="$top/models/tiny-clm-enfr"
run_dir=$(mktemp -d /tmp/xlm-op-pipelines-XXXXXX)
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
fail() { echo "FAIL: $*"; echo "--- broker log"; cat "$run_dir/broker.log"; for f in "$run_dir"/job*.log; do echo "--- $f"; cat "$f"; done; exit 1; }

"$build/bin/xlm-broker" --frontend "$frontend" --backend "$backend" > "$run_dir/broker.log" 2>&1 &
pids+=($!)
job() { # NAME [xlm-worker options]: one single-rank mpirun job in the background
  local name=$1; shift
  mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp \
    --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -np 1 \
    "$build/bin/xlm-worker" --model "$model" --broker "$backend" "$@" > "$run_dir/$name.log" 2>&1 &
  pids+=($!)
}
stats() { "$build/bin/xlm-client" stats --endpoint "$frontend" --timeout-ms 2000 2>/dev/null; }
alive() { stats | python3 -c 'import json,sys
try: print(sum(m["pipelines_alive"] for m in json.load(sys.stdin)["models"]))
except Exception: print(0)'; }
wait_alive() { # N SECONDS
  for _ in $(seq 1 $(($2 * 5))); do [ "$(alive)" -ge "$1" ] && return 0; sleep 0.2; done
  return 1
}

# Two jobs, default ids: both registered, and still both after 3 eviction
# periods (the worker presumes the broker gone after 6 x 500 ms of silence).
job jobA
wait_alive 1 20 || fail "job A never registered"
job jobB
wait_alive 2 20 || fail "job B did not register beside job A"
sleep 10
[ "$(alive)" = 2 ] || fail "not 2 pipelines alive 10 s after both registered"
ids=$(stats | python3 -c 'import json,sys; print(" ".join(p["id"] for m in json.load(sys.stdin)["models"] for p in m["pipelines"]))')
echo "pipeline ids: $ids"
grep -q "removed\|registered again" "$run_dir/broker.log" && fail "a pipeline was evicted"
echo "two jobs on one host serve side by side"

# The same id claimed by a second live job: refused once, the job stops.
job jobC --pipeline-prefix dup
wait_alive 3 20 || fail "job C never registered"
job jobD --pipeline-prefix dup
d=${pids[-1]}
for _ in $(seq 1 100); do kill -0 "$d" 2>/dev/null || break; sleep 0.2; done
kill -0 "$d" 2>/dev/null && fail "job D (duplicate ids) still runs after 20 s"
wait "$d"; status=$?
[ "$status" != 0 ] || fail "job D exited with status 0"
grep -q "the broker refused pipeline dup/p0" "$run_dir/jobD.log" || fail "job D's stderr does not name the refusal"
n=$(grep -c "refused: that id is served by another live pipeline" "$run_dir/broker.log")
[ "$n" = 1 ] || fail "the broker logged the refusal $n times, expected once"
sleep 4
[ "$(alive)" = 3 ] || fail "not 3 pipelines alive after the duplicate was refused"
grep -q "removed\|registered again" "$run_dir/broker.log" && fail "a pipeline was evicted"
echo "a duplicate id is refused once (job D exit status $status); the first job keeps serving"
echo PASS
