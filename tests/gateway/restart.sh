#!/usr/bin/env bash
# No request is lost when the broker restarts under the gateway: four
# concurrent /v1/score requests of 1,000 pairs each; the broker is killed
# (kill -9) mid-run and started again; every pair must come back scored,
# equal to xlm-score's result (libxlmclient's retries with the same id).
# Usage: restart.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init gateway-restart "$1"
e2e_start --model "$top/models/tiny-clm-enfr" --stages 1 --timeout 120
gw_start --clients 4 --attempt-timeout-ms 1000 --max-attempts 120
pairs=$top/models/tiny-clm-enfr/examples/pairs.tsv
"$build/bin/xlm-score" --endpoint "$endpoint" --mode clm --input "$pairs" --output "$run_dir/ref.jsonl" 2>/dev/null
python3 - "$pairs" "$run_dir/score.json" <<'PY'
import json, sys
pairs = [dict(zip(("src_lang", "src", "tgt_lang", "tgt"), l.rstrip("\n").split("\t"))) for l in open(sys.argv[1])]
json.dump({"mode": "clm", "pairs": pairs * 5}, open(sys.argv[2], "w"))
PY
done0=$(e2e_stat requests_done 0)
clients=()
for k in 1 2 3 4; do
  curl -s -o "$run_dir/out$k" -w '%{http_code}' "$gw_url/v1/score" --data-binary "@$run_dir/score.json" \
    > "$run_dir/code$k" &
  clients+=($!)
done
e2e_wait_until 60 "300 answers before the kill" sh -c "[ \$(\"$build/bin/xlm-client\" stats --endpoint $endpoint --timeout-ms 2000 | grep -o '\"requests_done\":[0-9]*' | head -1 | cut -d: -f2) -ge $((done0 + 300)) ]"
before=$(( $(e2e_stat requests_done 0) - done0 ))
victim=$(cat "$run_dir/broker.pid")
kill -9 "$victim"
e2e_wait_until 10 "the broker to end" e2e_gone "$victim"
"$build/bin/xlm-broker" --frontend "$endpoint" --backend "tcp://127.0.0.1:$backend" >> "$run_dir/broker.log" 2>&1 &
echo $! > "$run_dir/broker.pid"
for pid in "${clients[@]}"; do wait "$pid"; done
after=$(e2e_stat requests_done 0)
e2e_assert_fault_landed "kill -9 of the broker" "$before" 4000 "$after" "answers from the restarted broker"
for k in 1 2 3 4; do
  [ "$(cat "$run_dir/code$k")" = 200 ] || e2e_fail "request $k: HTTP $(cat "$run_dir/code$k"): $(head -c 300 "$run_dir/out$k")"
  python3 - "$run_dir/ref.jsonl" "$run_dir/out$k" <<'PY' || e2e_fail "request $k lost or changed pairs"
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])] * 5
got = json.load(open(sys.argv[2]))["results"]
assert len(got) == len(ref) == 1000, len(got)
for i, (g, r) in enumerate(zip(got, ref)):
    assert "error" not in g, (i, g)
    assert g["n_target_tokens"] == r["n_target_tokens"] and abs(g["score"] - r["score"]) <= 1e-4, (i, g, r)
PY
done
echo "gateway-restart: 4 x 1000 pairs all scored, equal to xlm-score, across the broker's restart"
gw_stop
