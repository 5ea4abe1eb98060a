#!/usr/bin/env bash
# deploy/local/start as an operator meets it (issue 11): a broker that cannot
# bind fails the start (status 1, the broker's own error); workers that fail
# at start-up fail it too, with the worker's own error on stderr and no
# restart loop; the broker log is appended on restart; the scripts' --help
# prints usage, not code; --version of every program.
# Usage: operator_start.sh BUILD_DIR
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=$1
model="$top/models/tiny-clm-enfr"
run_dir=$(mktemp -d /tmp/xlm-op-start-XXXXXX)
mapfile -t ports < <("$top/tests/tools/free_ports" 2)
holder=
cleanup() {
  "$top/deploy/local/stop" --run-dir "$run_dir/svc" >/dev/null 2>&1 || true
  [ -n "$holder" ] && kill "$holder" 2>/dev/null
  rm -rf "$run_dir"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$run_dir"/err.txt "$run_dir"/svc/*.log; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done; exit 1; }
start() { "$top/deploy/local/start" --model "$model" --stages 2 --frontend-port "${ports[0]}" \
  --backend-port "${ports[1]}" --run-dir "$run_dir/svc" --build "$build" --timeout 60 "$@"; }

# --help: usage, not the script's code; unknown options in one line.
for s in deploy/local/start deploy/local/stop deploy/cluster/run-workers deploy/cluster/xlmserve.slurm; do
  out=$("$top/$s" --help 2>&1) || fail "$s --help: non-zero status"
  grep -qi '^usage:' <<< "$out" || fail "$s --help prints no usage line"
  grep -qE 'set -e|\$\(|^\[|exec |fi$' <<< "$out" && fail "$s --help prints code: $out"
done
out=$("$top/deploy/local/start" --bogus 2>&1); status=$?
[ "$status" = 2 ] && [ "$(wc -l <<< "$out")" = 1 ] && grep -q "'--bogus'; see --help" <<< "$out" ||
  fail "start --bogus: status $status, '$out'"
for p in xlm-broker xlm-worker xlm-tokenize xlm-infer xlm-client xlm-score; do
  v=$("$build/bin/$p" --version) || fail "$p --version: non-zero status"
  grep -qE "^$p \(xlmserve\) [0-9]+\.[0-9]+\.[0-9]+, wire protocol version [0-9]+$" <<< "$v" || fail "$p --version says '$v'"
  out=$("$build/bin/$p" --no-such-option 2>&1); status=$?
  [ "$status" != 0 ] && [ "$(wc -l <<< "$out")" = 1 ] && grep -q "'--no-such-option'; see --help" <<< "$out" ||
    fail "$p --no-such-option: status $status, '$out'"
done
echo "--help, --version and unknown options: one way for every program and script"

# The frontend port is taken: the broker cannot bind, start says so.
python3 -c 'import socket,sys,time
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); time.sleep(60)' "${ports[0]}" &
holder=$!
sleep 0.5
t0=$SECONDS
start > /dev/null 2> "$run_dir/err.txt"; status=$?
[ "$status" = 1 ] || fail "start with the port taken: status $status, expected 1"
grep -q "the broker could not start" "$run_dir/err.txt" || fail "start does not say the broker could not start"
grep -qi "address already in use\|bind" "$run_dir/err.txt" || fail "start does not show the broker's bind error"
[ $((SECONDS - t0)) -lt 15 ] || fail "start took $((SECONDS - t0)) s to notice"
kill "$holder"; wait "$holder" 2>/dev/null; holder=
echo "port taken: start failed in $((SECONDS - t0)) s: $(head -n 2 "$run_dir/err.txt" | tail -n 1)"

# Workers that fail at start-up: a layer map that does not fit the model.
t0=$SECONDS
start -- --layer-map 1,1 > /dev/null 2> "$run_dir/err.txt"; status=$?
[ "$status" = 1 ] || fail "start with failing workers: status $status, expected 1"
grep -q "failed at start-up" "$run_dir/err.txt" || fail "start does not say the workers failed at start-up"
grep -q -- "--layer-map assigns 2 layers, the model has 4" "$run_dir/err.txt" || fail "the worker's own error is not on stderr"
[ $((SECONDS - t0)) -lt 30 ] || fail "start took $((SECONDS - t0)) s to notice"
grep -q ", restarting" "$run_dir/svc/workers.log" && fail "the failing workers were restarted"
echo "workers failing at start-up: start failed in $((SECONDS - t0)) s, not restarted"

# Started twice: the broker log holds both runs.
start > /dev/null 2> "$run_dir/err.txt" || fail "start failed"
"$top/deploy/local/stop" --run-dir "$run_dir/svc" > /dev/null
start > /dev/null 2> "$run_dir/err.txt" || fail "start failed the second time"
n=$(grep -c "serving clients on" "$run_dir/svc/broker.log")
[ "$n" -ge 3 ] || fail "broker.log holds $n starts, expected every one (appended)"
echo "broker.log appended: $n starts"
echo PASS
