#!/usr/bin/env bash
# deploy/local/start as an operator meets it (issue 11): a broker that cannot
# bind fails the start (status 1, the broker's own error); workers that fail
# at start-up fail it too, with the worker's own error on stderr and no
# restart loop; the broker log is appended on restart; the scripts' --help
# prints usage, not code; --version of every program.
# Usage: operator_start.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init op-start "$1"
model="$top/models/tiny-clm-enfr"
start() { e2e_try_start --model "$model" --stages 2 --timeout 60 "$@"; }

# --help: usage, not the script's code; unknown options in one line.
for s in deploy/local/start deploy/local/stop deploy/cluster/run-workers deploy/cluster/xlmserve.slurm; do
  out=$("$top/$s" --help 2>&1) || e2e_fail "$s --help: non-zero status"
  grep -qi '^usage:' <<< "$out" || e2e_fail "$s --help prints no usage line"
  grep -qE 'set -e|\$\(|^\[|exec |fi$' <<< "$out" && e2e_fail "$s --help prints code: $out"
done
status=0
out=$("$top/deploy/local/start" --bogus 2>&1) || status=$?
[ "$status" = 2 ] && [ "$(wc -l <<< "$out")" = 1 ] && grep -q "'--bogus'; see --help" <<< "$out" ||
  e2e_fail "start --bogus: status $status, '$out'"
for p in xlm-broker xlm-worker xlm-tokenize xlm-infer xlm-client xlm-score; do
  v=$("$build/bin/$p" --version) || e2e_fail "$p --version: non-zero status"
  grep -qE "^$p \(xlmserve\) [0-9]+\.[0-9]+\.[0-9]+, wire protocol version [0-9]+$" <<< "$v" || e2e_fail "$p --version says '$v'"
  status=0
  out=$("$build/bin/$p" --no-such-option 2>&1) || status=$?
  [ "$status" != 0 ] && [ "$(wc -l <<< "$out")" = 1 ] && grep -q "'--no-such-option'; see --help" <<< "$out" ||
    e2e_fail "$p --no-such-option: status $status, '$out'"
done
echo "--help, --version and unknown options: one way for every program and script"

# The frontend port is taken: the broker cannot bind, start says so.
python3 -c 'import socket,sys,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); time.sleep(60)' "$frontend" &
holder=$!
e2e_background "$holder"
sleep 0.5
t0=$SECONDS
e2e_expect_status 1 start > /dev/null 2> "$run_dir/err.log"
e2e_says "$run_dir/err.log" "the broker could not start"
grep -qi "address already in use\|bind" "$run_dir/err.log" || e2e_fail "start does not show the broker's bind error"
[ $((SECONDS - t0)) -lt 15 ] || e2e_fail "start took $((SECONDS - t0)) s to notice"
kill "$holder"
wait "$holder" 2>/dev/null || true
echo "port taken: start failed in $((SECONDS - t0)) s: $(head -n 2 "$run_dir/err.log" | tail -n 1)"

# Workers that fail at start-up: a layer map that does not fit the model.
t0=$SECONDS
e2e_expect_status 1 start -- --layer-map 1,1 > /dev/null 2> "$run_dir/err.log"
e2e_says "$run_dir/err.log" "failed at start-up"
e2e_says "$run_dir/err.log" "--layer-map assigns 2 layers, the model has 4"
[ $((SECONDS - t0)) -lt 30 ] || e2e_fail "start took $((SECONDS - t0)) s to notice"
grep -q ", restarting" "$run_dir/workers.log" && e2e_fail "the failing workers were restarted"
echo "workers failing at start-up: start failed in $((SECONDS - t0)) s, not restarted"

# Started twice: the broker log holds both runs.
start > /dev/null 2> "$run_dir/err.log" || e2e_fail "start failed"
e2e_stop
start > /dev/null 2> "$run_dir/err.log" || e2e_fail "start failed the second time"
n=$(grep -c "serving clients on" "$run_dir/broker.log" || true)
[ "$n" -ge 3 ] || e2e_fail "broker.log holds $n starts, expected every one (appended)"
echo "broker.log appended: $n starts"
echo PASS
