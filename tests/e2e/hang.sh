#!/usr/bin/env bash
# A hung rank anywhere in the ring is noticed (issue 13, liveness end to
# end): a 2-pipeline service of the bundled model in 2 stages scores 8,000
# pairs with xlm-score; mid-run one rank of pipeline 1 is stopped with
# SIGSTOP (stage0: world rank 2; last: world rank 3, while stage 0 keeps
# beating; either way the rank's heartbeat thread stops with it). The broker
# must declare the pipeline dead within liveness x heartbeat (missed
# heartbeats of stage 0, or of stage 1, named), queue its work again, and
# tell the rank it can reach, which ends the MPI job; the supervisor starts
# a new job. The
# scoring job must finish within BOUND_S seconds of the stop, every line
# once, in order, with the offline scores (xlm-score --model, in process).
# stage0-idle: rank 2 is stopped right after the service is up, before the
# scoring job starts: its last stage never replied, so the broker knows that
# rank's socket only from its own beats (Heartbeat.tail); the order to end
# the job must still reach it, the supervisor must start a new job, and the
# job must finish the same way, with both pipelines alive at the end.
# single: pipelines of 1 stage; rank 1 (pipeline 1's only rank) is stopped
# mid-run: no rank of the dead pipeline can hear the order, so the broker
# sends it to the live pipeline of the same MPI job (Ready.job), whose rank
# ends the job.
# Usage: hang.sh BUILD_DIR stage0|last|stage0-idle|single
set -euo pipefail
. "$(dirname "$0")/lib.sh"
where=$2
e2e_init "hang-$where" "$1"
model="$top/models/tiny-clm-enfr"
stages=2 pipelines=2 total=8000
# Detection is 3 s (the broker's default 1 s heartbeat x 3), the restart a
# few seconds of model loading; the bound leaves room for a loaded machine.
bound_s=90
case $where in
  stage0) rank=2 stage=0 ;;
  last) rank=3 stage=1 ;;
  stage0-idle) rank=2 stage=0 ;;
  single) rank=1 stage=0 stages=1 ;;
  *) echo "hang: unknown victim $where (stage0, last, stage0-idle or single)" >&2; exit 2 ;;
esac

victim=
# The stopped rank is not this script's child: it is let go and killed here
# whatever happens, before lib.sh's cleanup stops the service.
hang_cleanup() {
  local rc=$?
  if [ -n "$victim" ] && [ -e "/proc/$victim" ] &&
     e2e_cmdline_matches "$victim" xlm-worker; then
    kill -CONT "$victim" 2>/dev/null || true
    kill -9 "$victim" 2>/dev/null || true
  fi
  e2e_cleanup "$rc"
}
trap hang_cleanup EXIT

for _ in $(seq 1 40); do cat "$model/examples/pairs.tsv"; done > "$run_dir/input.tsv"
"$build/bin/xlm-score" --model "$model" --mode clm --quiet --input "$run_dir/input.tsv" \
  --output "$run_dir/offline.jsonl"

e2e_start --model "$model" --stages "$stages" --pipelines "$pipelines" --timeout 90
grep -q "xlm-worker \[info\] rank $rank: pipeline 1 stage $stage/$stages:" "$run_dir/workers.log" ||
  e2e_fail "no log line of rank $rank owning stage $stage of pipeline 1"
# Found before the job starts: the stop must not wait for a scan of /proc.
victim=$(e2e_worker_pid "$rank") || e2e_fail "no xlm-worker process of rank $rank"

start_scoring() {
  "$build/bin/xlm-score" --endpoint "$endpoint" --mode clm --quiet --input "$run_dir/input.tsv" \
    --output "$run_dir/service.jsonl" 2> "$run_dir/score.err" &
  score=$!
  e2e_background "$score"
}
done_count() { e2e_stat requests_done 0; }
at_least_done() { [ "$(done_count)" -ge "$1" ]; }
stats_json() {
  "$build/bin/xlm-client" stats --endpoint "$endpoint" --timeout-ms 2000 \
    ${e2e_client_keys[@]+"${e2e_client_keys[@]}"} 2>/dev/null
}
# Pipeline 1 (ids end /p1) has had no batch, and the broker knows its last
# stage's socket: only that stage's beats can have told it.
p1_tail_known_idle() {
  [[ $(stats_json) =~ \"id\":\"[^\"]*/p1\",[^}]*\"batches\":0,[^}]*\"tail_known\":true ]]
}

if [ "$where" = stage0-idle ]; then
  e2e_wait_until 30 "the broker to know pipeline 1's last stage before any work" p1_tail_known_idle
  before=$(done_count)
  kill -STOP "$victim"
  stopped_us=${EPOCHREALTIME//[^0-9]/}
  start_scoring
else
  start_scoring
  e2e_wait_until 120 "400 answers before the stop" at_least_done 400
  before=$(done_count)
  kill -STOP "$victim"
  stopped_us=${EPOCHREALTIME//[^0-9]/}
fi
echo "hang: SIGSTOP rank $rank (pipeline 1 stage $stage, pid $victim) after $before answers"
[ "$before" -lt "$total" ] || e2e_fail "the stop landed after the run ($before of $total answers)"

ms_since_stop() { echo $(( (${EPOCHREALTIME//[^0-9]/} - stopped_us) / 1000 )); }
declared() { grep -qE "pipeline '[^']*/p1' of model .* removed \(((stage 1 )?missed heartbeats|no progress)" "$run_dir/broker.log"; }
e2e_wait_until 30 "the broker to declare pipeline 1 dead" declared
detect_ms=$(ms_since_stop)
restarted() { grep -q "supervisor: mpirun exited.*, restarting" "$run_dir/workers.log"; }
e2e_wait_until 30 "the supervisor to restart mpirun" restarted
two_alive() { [ "$(e2e_stat pipelines_alive 0)" -ge 2 ]; }
e2e_wait_until 60 "both pipelines of the new job to register" two_alive
recover_ms=$(ms_since_stop)

deadline=$(( stopped_us + bound_s * 1000000 ))
while ! e2e_gone "$score"; do
  [ "${EPOCHREALTIME//[^0-9]/}" -lt "$deadline" ] ||
    e2e_fail "the scoring job did not finish within ${bound_s}s of the stop"
  sleep 0.05
done
finish_ms=$(ms_since_stop)
rc=0
wait "$score" || rc=$?
[ $rc = 0 ] || e2e_fail "xlm-score exited $rc: $(tail -n 3 "$run_dir/score.err")"

reason=$(grep -oE "pipeline '[^']*/p1' of model .* removed \([^)]*\); [0-9]+ requests queued again" "$run_dir/broker.log" | head -n 1)
requeued=$(e2e_stat requests_requeued 0)
victim_state=gone
[ -e "/proc/$victim" ] && victim_state="still there ($(awk '{print $3}' "/proc/$victim/stat"))"
echo "hang: $reason"
echo "hang: declared dead $detect_ms ms after the stop, both pipelines back after $recover_ms ms, job done after $finish_ms ms (bound ${bound_s}s); $requeued requests re-queued; the stopped rank is $victim_state"
case $where in
  stage0|last|single)
    e2e_assert_fault_landed "SIGSTOP of rank $rank" "$before" "$total" "$requeued" "requests re-queued by the broker" ;;
  stage0-idle)
    # Idle when stopped: what shows it was felt is the job that ended and
    # the new one's stage 0 of pipeline 1 registering.
    restarts=$(grep -c "supervisor: mpirun exited.*, restarting" "$run_dir/workers.log" || true)
    e2e_assert_fault_landed "SIGSTOP of rank $rank" "$before" "$total" "$restarts" "restarts of the MPI job"
    registrations=$(grep -cE "rank 2: registering [^ ]*/p1 with the broker" "$run_dir/workers.log" || true)
    [ "$registrations" -ge 2 ] ||
      e2e_fail "rank 2 registered pipeline 1 $registrations times, expected a second time in the new job"
    # The rank that read the order is the last stage (stage 0 is stopped).
    grep -q "rank 3: the broker declared this pipeline dead (missed heartbeats).*ending the MPI job" \
      "$run_dir/workers.log" ||
      e2e_fail "rank 3 (pipeline 1's last stage) did not say it ends the MPI job" ;;
esac
case $where in
  stage0|stage0-idle|single) [[ $reason == *"(missed heartbeats)"* ]] || e2e_fail "pipeline 1 was removed for another reason: $reason" ;;
  last) [[ $reason == *"(stage 1 missed heartbeats: silent for "* ]] || e2e_fail "pipeline 1 was removed for another reason: $reason" ;;
esac
grep -q "declared .*dead .*ending the MPI job" "$run_dir/workers.log" ||
  e2e_fail "no rank said it ends the MPI job after the broker declared its pipeline dead"
if [ "$where" = single ]; then
  grep -qE "rank 0: the broker declared pipeline [^ ]*/p1 dead \(missed heartbeats\).*ending the MPI job" \
    "$run_dir/workers.log" ||
    e2e_fail "rank 0 (pipeline 0, the same job) did not end the job for pipeline 1"
fi
alive_end=$(e2e_stat pipelines_alive 0)
[ "$alive_end" -ge 2 ] || e2e_fail "$alive_end pipelines alive after the job, expected 2"

python3 - "$run_dir/service.jsonl" "$run_dir/offline.jsonl" "$total" <<'PY'
import json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
ref = [json.loads(l) for l in open(sys.argv[2])]
total = int(sys.argv[3])
assert [g["line"] for g in got] == list(range(1, total + 1)), ("lines", len(got))
assert len(ref) == total
worst = 0.0
for g, r in zip(got, ref):
    assert "error" not in g, g
    assert g["n_target_tokens"] == r["n_target_tokens"], (g, r)
    worst = max(worst, abs(g["score"] - r["score"]))
    assert abs(g["score"] - r["score"]) <= 1e-4, (g, r)
print("hang: %d lines, each once, in order, scores equal to offline (worst %.1e)" % (total, worst))
PY
