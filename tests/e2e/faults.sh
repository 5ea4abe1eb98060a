#!/usr/bin/env bash
# Fault tests on the real service (127.0.0.1 only), the bundled model in 2 stages:
#   worker: kill -9 one worker rank during a run of 2,000 requests;
#   broker: kill -9 the broker during a run and start it again.
# Every request must be answered exactly once, with the outputs of the
# offline engine (xlm-infer) within the golden tolerance.
# Usage: faults.sh BUILD_DIR worker|broker
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=$1 fault=$2
model="$top/models/tiny-clm-enfr"
run_dir=$(mktemp -d /tmp/xlm-faults-XXXXXX)
mapfile -t ports < <("$top/tests/tools/free_ports" 2)
frontend=${ports[0]} backend=${ports[1]}
cleanup() { "$top/deploy/local/stop" --run-dir "$run_dir" >/dev/null 2>&1 || true; rm -rf "$run_dir"; }
trap cleanup EXIT

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

"$top/deploy/local/start" --model "$model" --stages 2 --frontend-port "$frontend" \
  --backend-port "$backend" --run-dir "$run_dir" --build "$build" --timeout 60 >/dev/null

"$build/bin/xlm-client" infer --endpoint "tcp://127.0.0.1:$frontend" --window 32 \
  --attempt-timeout-ms 3000 --attempts 20 < "$run_dir/requests.jsonl" > "$run_dir/got.jsonl" &
client=$!

# Strike once a tenth of the answers are in.
for _ in $(seq 1 300); do
  [ "$(wc -l < "$run_dir/got.jsonl")" -ge 200 ] && break
  sleep 0.05
done
before=$(wc -l < "$run_dir/got.jsonl")
case $fault in
  worker)
    # A rank of this job: a child of its mpirun, the last stage of the pipeline.
    victim=$(pgrep -P "$(cat "$run_dir/mpirun.pid")" | tail -n 1)
    echo "faults: kill -9 worker rank pid $victim after $before answers"
    kill -9 "$victim" ;;
  broker)
    echo "faults: kill -9 the broker after $before answers, restart it in 1 s"
    kill -9 "$(cat "$run_dir/broker.pid")"
    sleep 1
    "$build/bin/xlm-broker" --frontend "tcp://127.0.0.1:$frontend" --backend "tcp://127.0.0.1:$backend" \
      >> "$run_dir/broker.log" 2>&1 &
    echo $! > "$run_dir/broker.pid" ;;
  *) echo "faults: unknown fault $fault" >&2; exit 2 ;;
esac
rc=0
wait "$client" || rc=$?
[ $rc = 0 ] || { echo "faults: xlm-client exited $rc"; tail -n 20 "$run_dir"/*.log; exit 1; }
grep -c "restarting" "$run_dir/workers.log" | sed 's/^/faults: mpirun restarts: /' || true

python3 - "$run_dir/got.jsonl" <<'PY'
import collections, json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
names = collections.Counter(g["name"] for g in got)
dups = [n for n, c in names.items() if c > 1]
errors = [g for g in got if "error" in g]
print("faults: %d answers, %d distinct, %d duplicates, %d errors" % (len(got), len(names), len(dups), len(errors)))
if errors:
    print("faults: first error:", errors[0])
sys.exit(0 if len(got) == 2000 and len(names) == 2000 and not errors else 1)
PY
python3 "$top/tests/tools/compare_golden.py" "$run_dir/expected.jsonl" "$run_dir/got.jsonl" \
  "faults($fault): outputs vs the offline engine"
