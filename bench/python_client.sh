#!/usr/bin/env bash
# The Python client's scoring rate against xlm-score's, through the same
# service (one broker, one 2-stage pipeline of the bundled model) in the
# same run: pairs/s of Client.score_pairs and AsyncClient.score_pairs over
# xlm-score --endpoint's, on the 200 bundled pairs repeated (target >= 0.8).
# Usage: bench/python_client.sh [BUILD_DIR] [PAIRS_REPEAT] [PYTHON]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$top/build}
repeat=${2:-20}
python=${3:-$(sed -n 's/^XLM_PYTHON:FILEPATH=//p' "$build/CMakeCache.txt")}
run_dir=$(mktemp -d /tmp/xlm-bench-py-XXXXXX)
mapfile -t ports < <("$top/tests/tools/free_ports" 2)
cleanup() { "$top/deploy/local/stop" --run-dir "$run_dir/svc" >/dev/null 2>&1 || true; rm -rf "$run_dir"; }
trap cleanup EXIT
endpoint="tcp://127.0.0.1:${ports[0]}"
for _ in $(seq "$repeat"); do cat "$top/models/tiny-clm-enfr/examples/pairs.tsv"; done > "$run_dir/pairs.tsv"
"$top/deploy/local/start" --frontend-port "${ports[0]}" --backend-port "${ports[1]}" \
  --run-dir "$run_dir/svc" --build "$build" --timeout 120 >/dev/null
window=64
"$build/bin/xlm-score" --endpoint "$endpoint" --mode clm --input "$run_dir/pairs.tsv" \
  --output "$run_dir/warm.jsonl" --window "$window" 2>/dev/null  # the same warm service for both
t0=$(date +%s.%N)
"$build/bin/xlm-score" --endpoint "$endpoint" --mode clm --input "$run_dir/pairs.tsv" \
  --output "$run_dir/ref.jsonl" --window "$window" 2>/dev/null
t1=$(date +%s.%N)
PYTHONPATH="$build/python" "$python" - "$endpoint" "$run_dir/pairs.tsv" "$t0" "$t1" "$window" <<'PY'
import asyncio, sys, time
import xlmserve
endpoint, path, t0, t1, window = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
pairs = [tuple(l.rstrip("\n").split("\t")) for l in open(path, encoding="utf-8")]
reference = len(pairs) / (t1 - t0)
# xlm-score's own retry settings: a long queue is not a lost request.
config = dict(window=window, attempt_timeout_ms=20000, max_attempts=60)
def check(got, who):
    failed = [g for g in got if not g.ok]
    if failed:
        sys.exit(f"bench-python-client: {who}: {len(failed)} pairs failed, the first: {failed[0]}")
with xlmserve.Client(endpoint, **config) as c:
    s = time.monotonic(); got = c.score_pairs(pairs); sync = len(pairs) / (time.monotonic() - s)
check(got, "Client")
async def run():
    async with xlmserve.AsyncClient(endpoint, **config) as a:
        s = time.monotonic(); got = await a.score_pairs(pairs); return len(pairs) / (time.monotonic() - s), got
rate, got = asyncio.run(run())
check(got, "AsyncClient")
print(f"bench-python-client: {len(pairs)} pairs, window {window}, one 2-stage pipeline of tiny-clm-enfr")
print(f"  xlm-score --endpoint:        {reference:8.0f} pairs/s (reference)")
print(f"  Client.score_pairs:          {sync:8.0f} pairs/s  {sync / reference:.2f} of xlm-score")
print(f"  AsyncClient.score_pairs:     {rate:8.0f} pairs/s  {rate / reference:.2f} of xlm-score (target >= 0.8)")
PY
