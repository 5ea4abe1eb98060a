#!/usr/bin/env bash
# Issue 13, a worker that a CURVE broker refuses ends its MPI job within
# seconds with one line naming the cause, the key file and the broker,
# instead of retrying the handshake for ever in silence: its key not in the
# backend's allow directory, the wrong broker key, no keys for a CURVE broker,
# keys for a plain broker. A worker whose key is removed from the allow
# directory while it serves hears Disconnect{refused, revoked}: the broker
# drops its pipeline and the job stops the same way.
# Usage: curve_worker.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init curve-worker "$1"
model="$top/models/tiny-clm-enfr"
keys=$run_dir/keys
mkdir -p "$keys/allowed"
for k in broker client worker stranger; do
  "$build/bin/xlm-keygen" "$keys/$k" > /dev/null || e2e_fail "xlm-keygen $k"
done
cp "$keys/client.pub" "$keys/worker.pub" "$keys/allowed/"
e2e_client_keys=(--curve-secret "$keys/client.key" --curve-server "$keys/broker.pub")
e2e_broker --curve-key "$keys/broker.key" --curve-allow "$keys/allowed" --heartbeat-ms 200
e2e_wait_until 20 "the CURVE broker to answer" e2e_stat uptime_ms
# A start-up failure, as the supervisor sees it: the job's exit status and
# how long it took; its log holds the cause once.
# Waits up to SECONDS for PID to end; it must have failed. Sets seconds
# (since STARTED, epoch microseconds).
job_fails() { # what pid started-us seconds
  local status=0
  e2e_wait_until "$4" "$1 to end" e2e_gone "$2"
  wait "$2" || status=$?
  seconds=$(( (${EPOCHREALTIME//[^0-9]/} - $3) / 1000000 ))
  [ "$status" != 0 ] || e2e_fail "$1 exited with status 0"
}
refused_job() { # name worker-options...
  local name=$1 started
  shift
  local client_keys=("${e2e_client_keys[@]}")
  started=${EPOCHREALTIME//[^0-9]/}
  e2e_client_keys=() # e2e_worker_job's default keys: only this job's own
  e2e_worker_job "$name" --model "$model" "$@"
  e2e_client_keys=("${client_keys[@]}")
  local pid=$E2E_JOB_PID
  job_fails "job $name (refused)" "$pid" "$started" 30
}
says_once() { # name text
  local n
  n=$(grep -cF -- "$2" "$run_dir/$1.log" || true)
  [ "$n" = 1 ] || e2e_fail "$1.log says '$2' $n times, expected once"
  echo "$1: ${seconds}s: $(grep -F -- "$2" "$run_dir/$1.log" | sed 's/.*error: //' | cut -c1-150)"
}

refused_job stranger --curve-secret "$keys/stranger.key" --curve-server "$keys/broker.pub"
says_once stranger "the broker at tcp://127.0.0.1:$backend refused this worker's CURVE key (--curve-secret $keys/stranger.key"
refused_job wrongserver --curve-secret "$keys/worker.key" --curve-server "$keys/client.pub"
says_once wrongserver "--curve-server $keys/client.pub is not that broker's public key"
refused_job nokeys
says_once nokeys "requires CURVE on its backend" # the event varies: a mechanism mismatch, or the connection closed
plain_back=$(e2e_free_port)
"$build/bin/xlm-broker" --frontend "tcp://127.0.0.1:$(e2e_free_port)" --backend "tcp://127.0.0.1:$plain_back" \
  >> "$run_dir/plain-broker.log" 2>&1 &
e2e_background $!
started=${EPOCHREALTIME//[^0-9]/}
mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp \
  --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -np 1 "$build/bin/xlm-worker" \
  --broker "tcp://127.0.0.1:$plain_back" --model "$model" --curve-secret "$keys/worker.key" \
  --curve-server "$keys/broker.pub" > "$run_dir/plainbroker.log" 2>&1 &
pid=$!
e2e_background "$pid"
job_fails "the CURVE worker of a plain broker" "$pid" "$started" 30
says_once plainbroker "does not use CURVE on its backend"

# Revoked while serving: registered, then its .pub removed.
alive() { [ "$(e2e_stat pipelines_alive 0)" = "$1" ]; }
e2e_worker_job revoked --model "$model" --curve-secret "$keys/worker.key" --curve-server "$keys/broker.pub"
pid=$E2E_JOB_PID
e2e_wait_until 30 "the allowed worker to register" alive 1
rm "$keys/allowed/worker.pub"
started=${EPOCHREALTIME//[^0-9]/}
job_fails "the revoked worker's job" "$pid" "$started" 20
says_once revoked "the broker at tcp://127.0.0.1:$backend no longer allows this worker's CURVE key (--curve-secret $keys/worker.key)"
e2e_says "$run_dir/broker.log" "removed (its CURVE key is no longer allowed)"
alive 0 || e2e_fail "the revoked worker's pipeline is still alive"
echo PASS
