#!/usr/bin/env bash
# xlm-gateway end to end, with curl: a real broker and MPI workers serving
# the bundled model and three golden checkpoints; every endpoint, every
# error status, golden cases through KServe infer against HuggingFace's
# outputs, /v1/score against xlm-score through the same service, the
# bounded queue (503 Retry-After), deadlines, and /metrics checked by
# promtool with the counts the test caused.
# Usage: http.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init gateway-http "$1"
golden=(clm-seq_cls clm-qa clm-multiple_choice)
models=(--model "$top/models/tiny-clm-enfr")
for g in "${golden[@]}"; do models+=(--model "$top/tests/golden/$g"); done
e2e_start "${models[@]}" --stages 1 --timeout 180
gw_start --clients 1 --max-queue 2 --max-body-bytes 1000000 --retry-after 3

# ---------------------------------------------------------------- health, metadata
gw_curl GET /v2/health/live;  gw_expect 200 live
[ ! -s "$run_dir/body" ] || e2e_fail "live: the protocol's health body is empty, got $(cat "$run_dir/body")"
gw_curl GET /v2/health/ready; gw_expect 200 ready
gw_curl GET /v2;              gw_expect 200 "server metadata"
gw_body_has '"name":"xlmserve"' "server metadata"
gw_body_has '"extensions":[]' "server metadata"
gw_curl GET /v2/models/clm-seq_cls; gw_expect 200 "model metadata"
for want in '"name":"clm-seq_cls"' '"platform":"xlmserve"' '{"name":"input_ids","datatype":"INT64","shape":[-1,-1]}' \
            '"seq_cls":{' '"languages":["en","fr"]' '"max_length":64' '"precision":"fp32"'; do
  gw_body_has "$want" "model metadata"
done
gw_curl GET /v2/models/clm-multiple_choice/versions/1; gw_expect 200 "model metadata by version"
gw_body_has '{"name":"input_ids","datatype":"INT64","shape":[-1,-1,-1]}' "multiple_choice metadata"
gw_curl GET /v2/models/tiny-clm-enfr/ready; gw_expect 200 "model ready"
gw_curl GET /v2/models/nope;       gw_expect 404 "unknown model"
gw_body_has '{"error":"unknown model '"'"'nope'"'"' (served: ' "unknown model"
gw_curl GET /v2/models/nope/ready; gw_expect 404 "unknown model ready"
gw_curl GET /nope;                 gw_expect 404 "unknown endpoint"
gw_body_has '"error":"no such endpoint: GET /nope"' "unknown endpoint"
gw_curl GET /v2/models/clm-seq_cls/infer; gw_expect 405 "GET infer"
gw_curl POST /v2/health/live;      gw_expect 405 "POST live"

# ---------------------------------------------------------------- infer: golden cases
for g in "${golden[@]}"; do
  python3 "$top/tests/gateway/kserve_golden.py" requests "$top/tests/golden/$g/cases.jsonl" "$run_dir/$g"
  for body in "$run_dir/$g"/*.json; do
    gw_curl POST "/v2/models/$g/infer" "$body"
    gw_expect 200 "$g $(basename "$body")"
    cp "$run_dir/body" "${body%.json}.out"
  done
  python3 "$top/tests/gateway/kserve_golden.py" results "$top/tests/golden/$g/cases.jsonl" "$run_dir/$g" "$run_dir/$g.results"
  e2e_compare "$top/tests/golden/$g/cases.jsonl" "$run_dir/$g.results" "$g through the gateway" ||
    e2e_fail "$g: KServe infer differs from the golden outputs"
done
seq_cls_ok=$(grep -c . "$top/tests/golden/clm-seq_cls/cases.jsonl")

# ---------------------------------------------------------------- infer: errors
req() { printf '%s' "$1" > "$run_dir/req.json"; }
req '{"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [0, 5, 1]}], }'
gw_curl POST /v2/models/clm-seq_cls/infer "$run_dir/req.json"; gw_expect 400 "malformed JSON"
gw_body_has '{"error":"malformed JSON at byte 93 (line 1, column 94): near '"'"'}'"'"'"}' "malformed JSON"
req '{"inputs": []}'
gw_curl POST /v2/models/clm-seq_cls/infer "$run_dir/req.json"; gw_expect 400 "no inputs"
gw_body_has '"inputs\" must be a non-empty array' "no inputs"
req '{"inputs": [{"name": "input_ids", "shape": [1, 4], "datatype": "INT64", "data": [0, 5, 1]}]}'
gw_curl POST /v2/models/clm-seq_cls/infer "$run_dir/req.json"; gw_expect 400 "short data"
gw_body_has "input 'input_ids': 3 values, its shape holds 4" "short data"
req '{"parameters": {"task": "qa"}, "inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [0, 5, 1]}]}'
gw_curl POST /v2/models/clm-seq_cls/infer "$run_dir/req.json"; gw_expect 400 "unserved task"
gw_body_has "parameters.task 'qa': model 'clm-seq_cls' serves base, seq_cls" "unserved task"
req '{"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "FP32", "data": [0, 5, 1]}]}'
gw_curl POST /v2/models/clm-seq_cls/infer "$run_dir/req.json"; gw_expect 400 "bad datatype"
gw_body_has "input 'input_ids': datatype FP32, expected INT64" "bad datatype"
req '{"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [0, 5, 1]}], "outputs": [{"name": "start_logits"}]}'
gw_curl POST /v2/models/clm-seq_cls/infer "$run_dir/req.json"; gw_expect 400 "unknown output"
gw_body_has "requested output 'start_logits': not an output of task 'seq_cls'" "unknown output"
req '{"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [0, 5000, 1]}]}'
gw_curl POST /v2/models/clm-seq_cls/infer "$run_dir/req.json"; gw_expect 400 "id out of the vocabulary"
gw_body_has '"error":"bad_request: ' "id out of the vocabulary"
req '{"inputs": [{"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [0, 5, 1]}]}'
gw_curl POST /v2/models/nope/infer "$run_dir/req.json"; gw_expect 404 "infer of an unknown model"
gw_curl POST /v2/models/clm-seq_cls/infer "$run_dir/req.json" -H 'X-Deadline-Ms: soon'; gw_expect 400 "bad deadline header"
gw_body_has "X-Deadline-Ms: 'soon', expected whole milliseconds" "bad deadline header"
head -c 1000001 /dev/zero | tr '\0' ' ' > "$run_dir/big.json"
gw_curl POST /v2/models/clm-seq_cls/infer "$run_dir/big.json"; gw_expect 413 "body over the limit"
gw_body_has "the request body is over 1000000 bytes" "body over the limit"
# A body sent in chunks (no Content-Length) is measured as it comes.
gw_curl POST /v2/models/clm-seq_cls/infer "$run_dir/big.json" -H 'Transfer-Encoding: chunked'; gw_expect 413 "chunked body over the limit"

# ---------------------------------------------------------------- /v1/score
pairs=$top/models/tiny-clm-enfr/examples/pairs.tsv
"$build/bin/xlm-score" --endpoint "$endpoint" --model tiny-clm-enfr --mode clm --input "$pairs" \
  --output "$run_dir/xlm-score.jsonl" 2>/dev/null
python3 - "$pairs" "$run_dir/score.json" <<'PY'
import json, sys
pairs = [dict(zip(("src_lang", "src", "tgt_lang", "tgt"), l.rstrip("\n").split("\t"))) for l in open(sys.argv[1])]
pairs.insert(7, {"src_lang": "xx", "src": "a", "tgt_lang": "fr", "tgt": "b"})  # a bad language: that pair alone fails
json.dump({"model": "tiny-clm-enfr", "mode": "clm", "pairs": pairs}, open(sys.argv[2], "w"))
PY
gw_curl POST /v1/score "$run_dir/score.json"; gw_expect 200 "score"
python3 - "$run_dir/xlm-score.jsonl" "$run_dir/body" <<'PY' || e2e_fail "/v1/score differs from xlm-score"
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])]
got = json.load(open(sys.argv[2]))["results"]
bad = got.pop(7)
assert bad["error"]["code"] == "bad_request" and "'xx'" in bad["error"]["message"], bad
assert len(got) == len(ref) == 200, (len(got), len(ref))
for i, (r, g) in enumerate(zip(ref, got)):
    assert set(g) == {"score", "n_target_tokens", "mean"}, g
    assert g["n_target_tokens"] == r["n_target_tokens"], (i, g, r)
    # the service's tolerance: a pair's micro-batch (its padding) changes float rounding
    assert abs(g["score"] - r["score"]) <= 1e-4 and abs(g["mean"] - r["mean"]) <= 1e-4, (i, g, r)
print("gateway-http: /v1/score equals xlm-score on the 200 bundled pairs; the bad pair alone failed")
PY
req '{"model": "tiny-clm-enfr", "mode": "clm", "token_scores": true, "no_source": true, "pairs": [{"tgt_lang": "fr", "tgt": "Lampe fluorescente 2"}]}'
gw_curl POST /v1/score "$run_dir/req.json"; gw_expect 200 "score with token scores, no source"
gw_body_has '"tokens":["l","am","pe</w>","f","lu","o","re","sc","ente</w>","2</w>","</s>"]' "token scores"
req '{"model": "tiny-clm-enfr", "mode": "mlm-pll", "pairs": []}'
gw_curl POST /v1/score "$run_dir/req.json"; gw_expect 400 "mlm-pll on a causal model"
gw_body_has "mode 'mlm-pll': model 'tiny-clm-enfr' does not serve mlm_pll" "mlm-pll on a causal model"
req '{"model": "tiny-clm-enfr", "pairs": []}'
gw_curl POST /v1/score "$run_dir/req.json"; gw_expect 400 "no mode"
gw_body_has 'mode: missing, expected \"clm\" or \"mlm-pll\"' "no mode"
req '{"mode": "clm", "pairs": []}'
gw_curl POST /v1/score "$run_dir/req.json"; gw_expect 400 "no model with four served"
req '{"model": "nope", "mode": "clm", "pairs": []}'
gw_curl POST /v1/score "$run_dir/req.json"; gw_expect 404 "score of an unknown model"
gw_curl GET /v1/score; gw_expect 405 "GET score"

# Deadlines: 1 ms for 200 pairs behind one another leaves some unscored.
gw_curl POST /v1/score "$run_dir/score.json" -H 'X-Deadline-Ms: 1'; gw_expect 200 "score under a deadline"
expired=$(grep -o '"code":"deadline_exceeded"' "$run_dir/body" | wc -l)
[ "$expired" -ge 1 ] || e2e_fail "X-Deadline-Ms: 1: no pair expired"
echo "gateway-http: X-Deadline-Ms: 1 expired $expired of 201 pairs"

# ---------------------------------------------------------------- the bounded queue
# One client and a queue of 2: two long scoring requests fill it; the third
# is refused at once with 503 and Retry-After.
python3 - "$run_dir/score.json" "$run_dir/long.json" <<'PY'
import json, sys
body = json.load(open(sys.argv[1]))
body["pairs"] = body["pairs"] * 3
json.dump(body, open(sys.argv[2], "w"))
PY
before503=$(gw_metric 'xlm_gateway_http_responses_total{code="503"}')
curl -s -o "$run_dir/long1" "$gw_url/v1/score" --data-binary "@$run_dir/long.json" & long1=$!
curl -s -o "$run_dir/long2" "$gw_url/v1/score" --data-binary "@$run_dir/long.json" & long2=$!
one_waiting() { [ "$(gw_metric xlm_gateway_queue_depth)" = 1 ]; }
e2e_wait_until 20 "two requests admitted" one_waiting
gw_curl POST /v1/score "$run_dir/req.json"; gw_expect 503 "a request past the queue"
gw_body_has "the gateway's queue is full (2 requests admitted): retry after 3 s" "queue full"
grep -qi '^Retry-After: 3' "$run_dir/headers" || e2e_fail "503 without Retry-After: $(cat "$run_dir/headers")"
wait "$long1" "$long2"
for f in long1 long2; do
  n=$(grep -o '"score":' "$run_dir/$f" | wc -l)
  [ "$n" = 600 ] || e2e_fail "$f: $n scores of 600 after the refusal"
done
after503=$(gw_metric 'xlm_gateway_http_responses_total{code="503"}')
[ "$after503" = $((before503 + 1)) ] || e2e_fail "503 count $before503 -> $after503"

# ---------------------------------------------------------------- /metrics
curl -s "$gw_url/metrics" > "$run_dir/metrics.txt"
promtool check metrics < "$run_dir/metrics.txt" || e2e_fail "promtool check metrics: $(promtool check metrics < "$run_dir/metrics.txt" 2>&1 | head -5)"
m() { awk -v s="$1" '$1 == s { print $2 }' "$run_dir/metrics.txt"; }
[ "$(m 'xlm_gateway_requests_total{model="clm-seq_cls",task="seq_cls",status="ok"}')" = "$seq_cls_ok" ] ||
  e2e_fail "requests_total of clm-seq_cls: $(m 'xlm_gateway_requests_total{model="clm-seq_cls",task="seq_cls",status="ok"}'), expected $seq_cls_ok"
[ "$(m 'xlm_gateway_request_duration_seconds_count{model="clm-seq_cls",task="seq_cls"}')" -ge "$seq_cls_ok" ] ||
  e2e_fail "no latency histogram of clm-seq_cls"
[ "$(m 'xlm_stage_compute_duration_seconds_count{model="clm-seq_cls",stage="0"}')" = "$seq_cls_ok" ] ||
  e2e_fail "no stage compute histogram of clm-seq_cls"
[ "$(m 'xlm_model_pipelines_alive{model="tiny-clm-enfr"}')" = 1 ] || e2e_fail "pipelines_alive of tiny-clm-enfr"
# The broker's own histograms count every request it served, whoever sent it.
[ "$(m 'xlm_broker_request_duration_seconds_count{model="clm-seq_cls"}')" -ge "$seq_cls_ok" ] ||
  e2e_fail "the broker's request histogram of clm-seq_cls: $(m 'xlm_broker_request_duration_seconds_count{model="clm-seq_cls"}')"
scored=$(m 'xlm_broker_queue_duration_seconds_count{model="tiny-clm-enfr"}')
[ "$scored" -ge 1200 ] || e2e_fail "the broker's queue histogram of tiny-clm-enfr: $scored requests, at least 1200 were sent"
[ "$(m 'xlm_broker_stage_compute_duration_seconds_count{model="clm-seq_cls",stage="0"}')" -ge 1 ] ||
  e2e_fail "no broker stage histogram of clm-seq_cls"
[ "$(m xlm_broker_up)" = 1 ] || e2e_fail "xlm_broker_up"
[ "$(m 'xlm_gateway_requests_total{model="tiny-clm-enfr",task="clm_score",status="bad_request"}')" -ge 1 ] ||
  e2e_fail "the bad pair is not counted"
[ "$(m xlm_gateway_malformed_requests_total)" = 1 ] || e2e_fail "malformed count $(m xlm_gateway_malformed_requests_total), expected 1"
[ "$(m 'xlm_gateway_http_responses_total{code="413"}')" = 2 ] || e2e_fail "413 count"
echo "gateway-http: promtool passes; counters match the requests sent"

# ---------------------------------------------------------------- readiness follows the broker
e2e_stop
e2e_wait_until 10 "ready to turn false" sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' $gw_url/v2/health/ready)\" = 400 ]"
gw_curl GET /v2/health/live; gw_expect 200 "live without a broker"
gw_curl GET /v2/models/clm-seq_cls; gw_expect 503 "metadata without a broker"
gw_body_has "does not answer" "metadata without a broker"
gw_stop
echo "gateway-http: ok"
