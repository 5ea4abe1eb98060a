#!/usr/bin/env bash
# The gateway and the Python client in front of a broker that requires
# CURVE on both ports (deploy/local/start --curve): with the allowed client
# key both score the 200 bundled pairs exactly as xlm-score does; without
# keys, or with a key pair the broker does not allow, they are refused (the
# gateway is not ready and answers 503, logging the refusal once; the Python
# client gets no answer); the allowed key revoked while its connection is
# open gets the broker's final permission_denied at once.
# Usage: curve.sh BUILD_DIR PYTHON
set -euo pipefail
export XLM_E2E_CURVE=1
. "$(dirname "$0")/lib.sh"
e2e_init gateway-curve "$1"
python=$2
e2e_start --model "$top/models/tiny-clm-enfr" --stages 1 --timeout 120
keys=$run_dir/keys
[ -f "$keys/client.key" ] && [ -f "$keys/broker.pub" ] || e2e_fail "start --curve made no keys in $keys"
pairs=$top/models/tiny-clm-enfr/examples/pairs.tsv
"$build/bin/xlm-score" --endpoint "$endpoint" "${e2e_client_keys[@]}" --mode clm --quiet \
  --input "$pairs" --output "$run_dir/ref.jsonl" || e2e_fail "xlm-score with the client key failed"
"$build/bin/xlm-keygen" "$run_dir/stranger" > /dev/null

# The gateway with the allowed key: ready, and /v1/score equals xlm-score.
gw_start --curve-secret "$keys/client.key" --curve-server "$keys/broker.pub"
e2e_wait_until 20 "the gateway to be ready through CURVE" \
  sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' $gw_url/v2/health/ready)\" = 200 ]"
"$python" - "$pairs" "$run_dir/score.json" <<'PY'
import json, sys
pairs = [dict(zip(("src_lang", "src", "tgt_lang", "tgt"), l.rstrip("\n").split("\t"))) for l in open(sys.argv[1])]
json.dump({"mode": "clm", "pairs": pairs}, open(sys.argv[2], "w"))
PY
gw_curl POST /v1/score "$run_dir/score.json"
gw_expect 200 "/v1/score through CURVE"
"$python" - "$run_dir/ref.jsonl" "$run_dir/body" <<'PY' || e2e_fail "the gateway's scores through CURVE differ from xlm-score's"
import json, sys
ref = [json.loads(l) for l in open(sys.argv[1])]
got = json.load(open(sys.argv[2]))["results"]
assert len(got) == len(ref) == 200, (len(got), len(ref))
for i, (g, r) in enumerate(zip(got, ref)):
    assert g["score"] == r["score"] and g["n_target_tokens"] == r["n_target_tokens"], (i, g, r)
PY
gw_stop

# The gateway without keys, and with a key pair the broker does not allow:
# never ready, and a request is 503, not a hang.
for how in plain stranger; do
  opts=()
  [ $how = stranger ] && opts=(--curve-secret "$run_dir/stranger.key" --curve-server "$keys/broker.pub")
  gw_start ${opts[@]+"${opts[@]}"} --attempt-timeout-ms 500 --max-attempts 2
  sleep 1
  gw_curl GET /v2/health/ready
  [ "$code" != 200 ] || e2e_fail "a gateway with $how keys is ready behind a CURVE broker"
  gw_curl POST /v1/score "$run_dir/score.json" --max-time 60
  [ "$code" = 503 ] || [ "$code" = 504 ] ||
    e2e_fail "/v1/score from a gateway with $how keys: HTTP $code, expected 503 or 504: $(head -c 300 "$run_dir/body")"
  gw_stop
  # The gateway's log names the refusal, once, not once per request.
  case $how in
    plain) why="the broker requires CURVE" ;;
    stranger) why="CURVE" ;;
  esac
  lines=$(grep -c "xlm-gateway: the broker at .* does not answer: .*$why" "$run_dir/gateway.log" || true)
  [ "$lines" -ge 1 ] && [ "$lines" -le 3 ] ||
    e2e_fail "a gateway with $how keys logged $lines lines naming the refused handshake, expected 1 to 3: $(grep -m3 'does not answer' "$run_dir/gateway.log")"
  echo "gateway-curve: $how keys: $(grep -m1 'does not answer' "$run_dir/gateway.log")"
  : > "$run_dir/gateway.log"
done

# The Python client: the allowed key scores equal to xlm-score; a stranger's
# key gets no answer (its attempts time out).
PYTHONPATH="$build/python${PYTHONPATH:+:$PYTHONPATH}" "$python" - "$endpoint" "$keys" "$run_dir" "$pairs" <<'PY' ||
import json, sys
import xlmserve
endpoint, keys, run_dir, pairs_path = sys.argv[1:]
pairs = [tuple(l.rstrip("\n").split("\t")) for l in open(pairs_path)]
ref = [json.loads(l) for l in open(f"{run_dir}/ref.jsonl")]
with xlmserve.Client(endpoint, curve_server=f"{keys}/broker.pub", curve_secret=f"{keys}/client.key",
                     attempt_timeout_ms=5000, max_attempts=10) as c:
    got = c.score_pairs(pairs, mode="clm")
assert len(got) == 200
for i, (g, r) in enumerate(zip(got, ref)):
    assert g["score"] == r["score"], (i, g, r)
with xlmserve.Client(endpoint, curve_server=f"{keys}/broker.pub", curve_secret=f"{run_dir}/stranger.key",
                     attempt_timeout_ms=300, max_attempts=2) as c:
    try:
        refused = c.score_pairs(pairs[:2], mode="clm")
    except Exception as e:  # a client that gives up on a request may raise
        refused = [{"error": str(e)}]
assert all("error" in r for r in refused), refused
print("python: 200 pairs through CURVE equal to xlm-score; a stranger's key got no score")
# The allowed key revoked while its connection is open (its public key
# leaves the allow directory): the next request is refused with a final
# answer naming the cause, not left to time out.
import os, time
with xlmserve.Client(endpoint, curve_server=f"{keys}/broker.pub", curve_secret=f"{keys}/client.key",
                     attempt_timeout_ms=3000, max_attempts=3) as c:
    assert all("error" not in r for r in c.score_pairs(pairs[:2], mode="clm"))
    os.unlink(f"{keys}/allowed/client.pub")
    until = time.monotonic() + 20
    while True:
        t0 = time.monotonic()
        got = c.score_pairs(pairs[:1], mode="clm")[0]
        took = time.monotonic() - t0
        if "error" in got or time.monotonic() > until:
            break
        time.sleep(0.2)
assert "error" in got, ("still scored 20 s after the revoke", got)
assert "permission" in json.dumps(got["error"]).lower(), got["error"]
assert took < 2.5, ("the refusal took %.1f s: a timeout, not the broker's answer" % took, got)
print("python: a key revoked mid-connection is refused in %.2f s: %s" % (took, got["error"]))
PY
  e2e_fail "the Python client through CURVE"
echo "gateway-curve: gateway and Python client score through CURVE as xlm-score does; plain and stranger keys refused"
