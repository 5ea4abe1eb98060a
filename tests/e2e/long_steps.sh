#!/usr/bin/env bash
# A micro-batch that computes for longer than the broker's liveness window
# is not taken for a hung pipeline (issue 13, liveness end to end). A
# random checkpoint of the enfr-1024 shape (bench-engine --write, the
# bundled model's tokenizer) in 2 stages of 1 thread, fp32, under a
# liveness window of 3 x 250 ms (broker and workers): one micro-batch of 65
# of the bundled pairs (each side repeated, for longer rows) takes stage 0
# seconds, and no Reply can come meanwhile. Each stage's heartbeat thread
# shows its work count grow, so the pipeline keeps its work: every pair is
# answered once, with the in-process scores' bits, nothing is re-queued, no
# pipeline is removed, and the broker's stats show a stage step longer than
# the window (the condition was met).
# Usage: long_steps.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init long-steps "$1"
model="$run_dir/enfr-1024"
mkdir -p "$model"
"$build/bin/bench-engine" --write "$model" --shape enfr-1024 --lm --causal > /dev/null ||
  e2e_fail "bench-engine could not write the enfr-1024 checkpoint"
for f in vocab.json merges.txt tokenizer_config.json special_tokens_map.json; do
  cp "$top/models/tiny-clm-enfr/$f" "$model/"
done
# Each side twice over: longer rows, so that the broker's batches of
# up to 65 requests (--batch-scan) hold thousands of tokens.
n=130
awk -F'\t' -v OFS='\t' -v n=$n 'NR <= n { print $1, $2 " " $2, $3, $4 " " $4 }' \
  "$top/models/tiny-clm-enfr/examples/pairs.tsv" > "$run_dir/input.tsv"
window_ms=750 # liveness 3 x heartbeat 250 ms (the broker's and the workers')

"$build/bin/xlm-score" --model "$model" --precision fp32 --mode clm --quiet \
  --input "$run_dir/input.tsv" --output "$run_dir/offline.jsonl" ||
  e2e_fail "xlm-score in process failed on the enfr-1024 checkpoint"

e2e_start --model "$model" --stages 2 --pipelines 1 --threads 1 --timeout 180 \
  --broker-option --heartbeat-ms --broker-option 250 --broker-option --liveness --broker-option 3 -- \
  --precision fp32 --max-batch-tokens 16384 --credit 1 --heartbeat-ms 250
# About 15 s of compute; a pipeline declared dead at each long step would
# never finish.
limit_s=$(( 120 * $(e2e_time_factor) ))
rc=0
timeout "$limit_s" "$build/bin/xlm-score" --endpoint "$endpoint" --mode clm --quiet \
  --input "$run_dir/input.tsv" --output "$run_dir/service.jsonl" 2> "$run_dir/score.err" || rc=$?
[ $rc != 124 ] || e2e_fail "xlm-score through the service did not finish in ${limit_s}s; the broker: $(grep -c 'removed (' "$run_dir/broker.log") pipelines removed, first: $(grep -m1 -o 'removed ([^;]*' "$run_dir/broker.log")"
[ $rc = 0 ] || e2e_fail "xlm-score through the service failed: $(tail -n 3 "$run_dir/score.err")"

"$build/bin/xlm-client" stats --endpoint "$endpoint" ${e2e_client_keys[@]+"${e2e_client_keys[@]}"} \
  > "$run_dir/stats.json"
python3 - "$run_dir/stats.json" "$window_ms" "$n" <<'PY' || e2e_fail "the broker's stats say the pipeline was not kept"
import json, sys
model = json.load(open(sys.argv[1]))["models"][0]
window_ms, n = int(sys.argv[2]), int(sys.argv[3])
longest_ms = max(s.get("max_us", 0) for s in model["stages"]) / 1000
assert longest_ms > window_ms, "longest stage step %.0f ms, not over the %d ms window: the test shows nothing" % (longest_ms, window_ms)
assert model.get("requests_requeued", 0) == 0, model
assert model["requests_done"] == n, model
assert model["pipelines_alive"] == 1, model
print("long_steps: longest stage step %.0f ms (window %d ms), %d done, none re-queued" % (longest_ms, window_ms, n))
PY
if grep -q "removed (" "$run_dir/broker.log"; then
  e2e_fail "the broker removed the pipeline: $(grep -m1 'removed (' "$run_dir/broker.log")"
fi

python3 - "$run_dir/service.jsonl" "$run_dir/offline.jsonl" "$n" <<'PY' || e2e_fail "the service's scores differ from in process"
import json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
ref = [json.loads(l) for l in open(sys.argv[2])]
n = int(sys.argv[3])
assert [g["line"] for g in got] == list(range(1, n + 1)), [g["line"] for g in got]
for g, r in zip(got, ref):
    assert "error" not in g, g
    assert (g["score"], g["n_target_tokens"]) == (r["score"], r["n_target_tokens"]), (g, r)
print("long_steps: %d pairs, each once, in order, the in-process bits" % n)
PY
