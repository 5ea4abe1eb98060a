# shellcheck shell=bash
# tests/e2e/lib.sh: what the end-to-end scripts share. Each script starts
#   . "$(dirname "$0")/lib.sh"
#   e2e_init NAME BUILD_DIR
# and gets: $top (the source tree), $build, $run_dir (a new folder under
# /tmp), two free ports on 127.0.0.1 ($frontend, $backend) and the client
# endpoint ($endpoint); on exit, however the script ends, the service it
# started is stopped, the processes it handed to e2e_background are ended
# (SIGTERM, then SIGKILL for what still runs 5 s later: an mpirun passes
# the TERM on to its ranks, a KILL would leave them running) and $run_dir is
# removed (kept, and named, when the script failed and XLM_E2E_KEEP=1).
#
#   e2e_start [deploy/local/start options]   the service on these ports
#                                            (XLM_E2E_CURVE=1: with --curve; then
#                                            ${e2e_client_keys[@]} and
#                                            ${e2e_broker_keys[@]} are the key options
#                                            of clients and of a broker started by hand)
#   e2e_try_start [options]                  the same, its status and output to the caller
#   e2e_stop                                 stop it (e2e_start may follow)
#   e2e_broker [xlm-broker options]          a bare broker on these ports ($E2E_BROKER_PID)
#   e2e_worker_job NAME [xlm-worker options] a one-rank mpirun job of xlm-worker for that
#                                            broker, log NAME.log ($E2E_JOB_PID)
#   e2e_free_port                            one more free port on 127.0.0.1
#   e2e_fail MESSAGE                         print it and the logs, exit 1
#   e2e_background PID                       end PID on exit
#   e2e_wait_until SECONDS WHAT COMMAND...   poll COMMAND until it succeeds
#   e2e_gone PID                             true once PID has ended
#   e2e_stat FIELD [DEFAULT]                 a number of the broker's stats
#   e2e_stat_sum FIELD [DEFAULT]             the sum of FIELD over the stats (all models)
#   e2e_worker_pid RANK                      this service's xlm-worker of RANK
#   e2e_compare GOLDEN RESULTS LABEL         compare_golden.py
#   e2e_assert_fault_landed WHAT BEFORE TOTAL FELT FELT_WHAT
#   e2e_expect_status STATUS COMMAND...      run it, fail unless it exits with STATUS
#   e2e_says FILE TEXT                       fail unless FILE holds TEXT (grep, fixed)
#   e2e_absent PATH                          fail if PATH exists

# XLM_TEST_TIME_FACTOR (a whole number, default 1) stretches every wait and
# the service's start-up timeout: tests/sanitize sets it, a sanitized
# service runs several times slower.
e2e_time_factor() { echo "${XLM_TEST_TIME_FACTOR:-1}"; }

e2e_init() { # name build_dir
  E2E_NAME=$1
  top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  build=$(cd "$2" && pwd)
  run_dir=$(mktemp -d "/tmp/xlm-$1-XXXXXX")
  E2E_PIDS=()
  E2E_STARTED=0
  # The script's own output, for reports and failures from inside commands
  # whose output goes to files (e2e_expect_status CMD > out.jsonl).
  exec {E2E_REPORT}>&1
  trap e2e_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  local ports
  mapfile -t ports < <("$top/tests/tools/free_ports" 2)
  frontend=${ports[0]} backend=${ports[1]}
  endpoint="tcp://127.0.0.1:$frontend"
  e2e_client_keys=() e2e_broker_keys=()
  if [ "${XLM_E2E_CURVE:-0}" = 1 ]; then
    local keys=$run_dir/keys
    e2e_client_keys=(--curve-secret "$keys/client.key" --curve-server "$keys/broker.pub")
    e2e_broker_keys=(--curve-key "$keys/broker.key" --curve-allow "$keys/allowed")
    echo "$E2E_NAME: CURVE on (keys in $keys)"
  fi
}

# A child process of this script still running (so PID is not some other
# process that took a recycled number).
e2e_our_child() { # pid
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # shellcheck disable=SC2086
  set -- $stat
  [ "$2" = "$$" ]
}

# The exit trap; RC (optional) is the script's status when a trap of the
# caller's ran first (a subshell's `(exit RC)` would end the trap itself
# under errexit, and nothing would be stopped).
e2e_cleanup() {
  local rc=${1:-$?} pid ours=() waited alive
  set +e
  for pid in "${E2E_PIDS[@]}"; do
    e2e_our_child "$pid" && ours+=("$pid") && kill -TERM "$pid" 2>/dev/null
  done
  # Up to 5 s for the TERM: an mpirun stops its ranks first.
  for waited in $(seq 1 50); do
    alive=0
    for pid in "${ours[@]}"; do
      e2e_gone "$pid" || alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${ours[@]}"; do
    e2e_gone "$pid" || kill -KILL "$pid" 2>/dev/null
  done
  if [ "$E2E_STARTED" = 1 ]; then
    "$top/deploy/local/stop" --run-dir "$run_dir" >/dev/null 2>&1 || true
  fi
  if [ "$rc" != 0 ] && [ "${XLM_E2E_KEEP:-0}" = 1 ]; then
    echo "$E2E_NAME: run directory kept: $run_dir" >&2
  else
    rm -rf "$run_dir"
  fi
  exit "$rc"
}

# Ends PID when the script exits and it is still running.
e2e_background() { E2E_PIDS+=("$1"); }

# One more free port on 127.0.0.1 (for a service that is not there).
e2e_free_port() { "$top/tests/tools/free_ports" 1; }

e2e_logs() {
  local f
  for f in "$run_dir"/*.log; do
    [ -f "$f" ] || continue
    echo "--- $f (last 20 lines)"
    tail -n 20 "$f"
  done
}

e2e_fail() {
  { echo "$E2E_NAME: FAIL: $*"; e2e_logs; } >&"$E2E_REPORT"
  exit 1
}

# The service (a broker and an mpirun job, deploy/local/start) on this run's
# ports and run dir; the options after are start's (--model, --stages, ...).
e2e_start() {
  e2e_try_start "$@" > "$run_dir/start.log" 2>&1 ||
    e2e_fail "the service did not start: $(tail -n 3 "$run_dir/start.log")"
}

# deploy/local/start on this run's ports, for a test of start itself: its
# status, and its output where the caller sends it.
e2e_try_start() {
  E2E_STARTED=1
  local args=() factor
  factor=$(e2e_time_factor)
  while [ $# -gt 0 ]; do
    if [ "$1" = --timeout ] && [ $# -gt 1 ]; then
      args+=(--timeout "$(( $2 * factor ))")
      shift 2
    else
      args+=("$1")
      shift
    fi
  done
  # The report descriptor is closed for the service: a daemon holding it
  # keeps ctest waiting for the end of the test's output.
  "$top/deploy/local/start" {E2E_REPORT}>&- --frontend-port "$frontend" --backend-port "$backend" \
    --run-dir "$run_dir" --build "$build" $([ "${XLM_E2E_CURVE:-0}" = 1 ] && echo --curve) \
    ${args[@]+"${args[@]}"}
}

# A broker alone on this run's ports, logging to broker.log, for tests that
# run their own worker jobs (e2e_worker_job).
e2e_broker() {
  "$build/bin/xlm-broker" --frontend "$endpoint" --backend "tcp://127.0.0.1:$backend" \
    ${e2e_broker_keys[@]+"${e2e_broker_keys[@]}"} "$@" \
    >> "$run_dir/broker.log" 2>&1 &
  E2E_BROKER_PID=$!
  e2e_background "$E2E_BROKER_PID"
}

# One single-rank mpirun job of xlm-worker for this run's broker, in the
# background, logging to NAME.log; the options after NAME are the worker's
# (--model is among them).
e2e_worker_job() { # name [xlm-worker options]
  local name=$1
  shift
  mpirun --allow-run-as-root --oversubscribe --bind-to none --mca btl self,vader,tcp \
    --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -np 1 \
    "$build/bin/xlm-worker" --broker "tcp://127.0.0.1:$backend" \
    ${e2e_client_keys[@]+"${e2e_client_keys[@]}"} "$@" > "$run_dir/$name.log" 2>&1 &
  E2E_JOB_PID=$!
  e2e_background "$E2E_JOB_PID"
}

e2e_stop() {
  "$top/deploy/local/stop" --run-dir "$run_dir" > /dev/null
}

# Polls COMMAND (every 20 ms) until it succeeds; fails the test naming WHAT
# when SECONDS (whole seconds) pass first.
e2e_wait_until() { # seconds what command...
  local seconds=$(( $1 * $(e2e_time_factor) )) what=$2
  shift 2
  local deadline=$(( ${EPOCHREALTIME//[^0-9]/} + seconds * 1000000 ))
  until "$@"; do
    [ "${EPOCHREALTIME//[^0-9]/}" -lt "$deadline" ] || e2e_fail "waited ${seconds}s for $what"
    sleep 0.02
  done
}

# Whether process PID's environment holds the line NAME=VALUE, and whether
# its command line (arguments joined by spaces) matches the extended regex
# PATTERN. Each reads the whole file before matching: under pipefail,
# `tr ... | grep -q` fails at random, when grep leaves at its match while tr
# still writes and dies of SIGPIPE (status 141). A process may end between
# a listing and the read: the braces silence the redirection's error too.
e2e_environ_has() { # pid NAME=VALUE
  local environ
  environ=$({ tr '\0' '\n' < "/proc/$1/environ"; } 2>/dev/null) || return 1
  grep -qxF -- "$2" <<< "$environ"
}
e2e_cmdline_matches() { # pid pattern
  local cmdline
  cmdline=$({ tr '\0' ' ' < "/proc/$1/cmdline"; } 2>/dev/null) || return 1
  grep -qE -- "$2" <<< "$cmdline"
}

# True once PID has ended: no such process, or a zombie nobody reaped.
e2e_gone() {
  [ ! -e "/proc/$1" ] || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]
}

# One number of the broker's stats (xlm-client stats, one JSON object):
# the first FIELD in it, so of the first model for a model's field (a
# model's own fields come before its stages' and pipelines'). DEFAULT, when
# given, where there is no such field (no model yet) or no answer. No
# Python: this is polled, and Python takes half a second to start on a busy
# machine.
e2e_stat() { # field [default]
  local json
  if json=$("$build/bin/xlm-client" stats --endpoint "$endpoint" --timeout-ms 2000 \
              ${e2e_client_keys[@]+"${e2e_client_keys[@]}"} 2>/dev/null) &&
     [[ $json =~ \"$1\":([0-9]+) ]]; then
    echo "${BASH_REMATCH[1]}"
  elif [ $# -gt 1 ]; then
    echo "$2"
  else
    echo "e2e_stat: no $1 in the broker's stats: ${json:-no answer}" >&2
    return 1
  fi
}

# The sum of every FIELD in the broker's stats (pipelines_alive over all
# models, say); DEFAULT (else 0) when there is no answer.
e2e_stat_sum() { # field [default]
  local json sum=0 rest
  json=$("$build/bin/xlm-client" stats --endpoint "$endpoint" --timeout-ms 2000 2>/dev/null) ||
    { echo "${2:-0}"; return 0; }
  rest=$json
  while [[ $rest =~ \"$1\":([0-9]+)(.*) ]]; do
    sum=$((sum + BASH_REMATCH[1]))
    rest=${BASH_REMATCH[2]}
  done
  echo "$sum"
}

# The pid of this service's xlm-worker of MPI world rank RANK: its command
# line names this run's backend, its environment (OMPI_COMM_WORLD_RANK, set
# by mpirun) the rank. Nothing when there is none.
e2e_worker_pid() { # rank
  local p
  for p in /proc/[0-9]*; do
    local pid=${p#/proc/}
    e2e_cmdline_matches "$pid" "xlm-worker .*--broker tcp://127\.0\.0\.1:$backend " || continue
    if e2e_environ_has "$pid" "OMPI_COMM_WORLD_RANK=$1"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

e2e_compare() { # golden results label
  python3 "$top/tests/tools/compare_golden.py" "$@"
}

# A fault (a kill) landed mid-run and was felt: fewer than TOTAL answers
# were in before it (BEFORE), and what shows it was felt (re-queued
# requests, a restart, a resumed output) was seen FELT >= 1 times.
e2e_assert_fault_landed() { # what before total felt felt_what
  local what=$1 before=$2 total=$3 felt=$4 felt_what=$5
  [ "$before" -lt "$total" ] ||
    e2e_fail "$what: $before of $total answers were in before it: it landed after the run"
  [ "$felt" -ge 1 ] || e2e_fail "$what: $felt_what: none seen, the fault was not felt"
  echo "$E2E_NAME: $what landed mid-run ($before of $total answers before it) and was felt ($felt_what: $felt)"
}

# Runs a command and fails unless it exits with STATUS (the tools' exit
# statuses: 0 every line done, 1 some lines failed, 2 could not run).
e2e_expect_status() { # status command...
  local want=$1 got=0
  shift
  "$@" || got=$?
  [ "$got" -eq "$want" ] || e2e_fail "$(basename "$1") exited with status $got, expected $want: $*"
}

# FILE holds TEXT (a fixed string), or the test fails saying so.
e2e_says() { # file text
  grep -qF -- "$2" "$1" || e2e_fail "$(basename "$1") does not say '$2': $(head -c 600 "$1")"
}

# Nothing at PATH (a job that could not start leaves no output).
e2e_absent() { # path
  [ ! -e "$1" ] || e2e_fail "$1 was left behind"
}
