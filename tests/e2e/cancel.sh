#!/usr/bin/env bash
# Cancelled requests are dropped by the workers before they are computed
# (issue 13): with stage 0 of a 2-stage pipeline stopped (SIGSTOP), a client
# submits 40 scoring requests; the broker sends some to the pipeline (they
# wait in stage 0's socket) and queues the rest; the client cancels all 40,
# and the broker forwards the cancels of those it sent (CancelTickets).
# Stage 0 then resumes (SIGCONT) and must drop exactly those, unanswered:
# its debug log counts them, the broker counts no late reply (a computed
# cancelled request would come back as one), no request is answered done,
# and the pipeline has all its credit back (a 200-pair job runs after).
# The workers beat every 3 s so the broker waits 9 s before it would
# declare the stopped pipeline dead; the stop lasts well under that.
# Usage: cancel.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init cancel "$1"
model="$top/models/tiny-clm-enfr"
n=40

victim=
cancel_cleanup() {
  local rc=$?
  [ -n "$victim" ] && kill -CONT "$victim" 2>/dev/null
  e2e_cleanup "$rc"
}
trap cancel_cleanup EXIT

e2e_start --model "$model" --stages 2 -- --log-level debug --heartbeat-ms 3000
victim=$(e2e_worker_pid 0) || e2e_fail "no xlm-worker process of rank 0"
grep -q "xlm-worker \[info\] rank 0: pipeline 0 stage 0/2:" "$run_dir/workers.log" ||
  e2e_fail "no log line of rank 0 owning stage 0"
kill -STOP "$victim"
stopped_us=${EPOCHREALTIME//[^0-9]/}
"$build/tests/e2e-cancel-client" "$endpoint" "$n" > "$run_dir/client.out" ||
  e2e_fail "the client did not see its $n requests cancelled: $(tr '\n' ' ' < "$run_dir/client.out")"
sent=$(awk '$1 == "in_flight" {print $2}' "$run_dir/client.out")
cancelled_all() { [ "$(e2e_stat requests_cancelled 0)" -ge "$n" ]; }
e2e_wait_until 5 "the broker to count $n cancels" cancelled_all
kill -CONT "$victim"
stop_ms=$(( (${EPOCHREALTIME//[^0-9]/} - stopped_us) / 1000 ))
echo "cancel: $n requests cancelled while stage 0 was stopped ($stop_ms ms); $sent of them had been sent to the pipeline"
[ "$sent" -ge 1 ] || e2e_fail "no request reached the pipeline before the cancel"

dropped_count() {
  { grep -oE "rank 0: dropped [0-9]+ cancelled requests before computing them" "$run_dir/workers.log" || true; } |
    awk '{s += $4} END {print s + 0}'
}
# Each held request ends one way or the other: dropped, or computed and
# answered late.
all_settled() { [ $(( $(dropped_count) + $(e2e_stat late_replies 0) )) -ge "$sent" ]; }
e2e_wait_until 10 "the $sent cancelled requests stage 0 held to be dropped or answered" all_settled
# Anything computed anyway would come back now: give it the time.
sleep 1
dropped=$(dropped_count)
late=$(e2e_stat late_replies 0)
done_n=$(e2e_stat requests_done 0)
removed=$(grep -c "removed (" "$run_dir/broker.log" || true)
echo "cancel: stage 0 dropped $dropped before computing them; the broker saw $late late replies, $done_n answered done, $removed pipelines removed"
[ "$removed" = 0 ] || e2e_fail "the pipeline was declared dead during the stop ($stop_ms ms): the test needs a shorter stop"
[ "$late" = 0 ] || e2e_fail "$late cancelled requests were computed anyway (late replies)"
[ "$dropped" = "$sent" ] || e2e_fail "stage 0 dropped $dropped requests, the broker had sent it $sent"
[ "$done_n" = 0 ] || e2e_fail "$done_n cancelled requests were answered done"

# The credit of the dropped requests came back: a job runs to the end.
"$build/bin/xlm-score" --endpoint "$endpoint" --mode clm --quiet --attempt-timeout-ms 20000 \
  --input "$model/examples/pairs.tsv" --output "$run_dir/after.jsonl" ||
  e2e_fail "the pipeline did not serve a job after the cancels"
[ "$(wc -l < "$run_dir/after.jsonl")" = 200 ] || e2e_fail "the job after the cancels is incomplete"
echo "cancel: 200 pairs scored after the cancels"
