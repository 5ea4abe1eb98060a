#!/usr/bin/env bash
# A real Prometheus (Debian's, bound to 127.0.0.1 on a free port, its own
# config and data folder under the run dir) scrapes the gateway's /metrics
# every 500 ms during a scoring run; its query API must then return the
# request counter with the number of pairs scored and a latency histogram
# (histogram_quantile over its buckets). promtool checks the exposition.
# Usage: prometheus.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init gateway-prometheus "$1"
command -v prometheus >/dev/null || { echo "gateway-prometheus: no prometheus (Debian prometheus): skipped"; exit 0; }
e2e_start --model "$top/models/tiny-clm-enfr" --stages 1 --timeout 120
gw_start
prom_port=$("$top/tests/tools/free_ports" 1)
prom_url="http://127.0.0.1:$prom_port"
mkdir -p "$run_dir/prometheus-data"
cat > "$run_dir/prometheus.yml" <<YML
global:
  scrape_interval: 500ms
  evaluation_interval: 500ms
scrape_configs:
  - job_name: xlm-gateway
    scrape_interval: 500ms
    static_configs:
      - targets: ['127.0.0.1:$gw_port']
YML
promtool check config "$run_dir/prometheus.yml" > /dev/null || e2e_fail "promtool check config"
prometheus --config.file="$run_dir/prometheus.yml" --storage.tsdb.path="$run_dir/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" > "$run_dir/prometheus.log" 2>&1 &
prom_pid=$!
e2e_background "$prom_pid"
e2e_wait_until 60 "prometheus to be ready" curl -sf -o /dev/null "$prom_url/-/ready"

# The scoring run: the 200 bundled pairs, five times, while Prometheus scrapes.
python3 - "$top/models/tiny-clm-enfr/examples/pairs.tsv" "$run_dir/score.json" <<'PY'
import json, sys
pairs = [dict(zip(("src_lang", "src", "tgt_lang", "tgt"), l.rstrip("\n").split("\t"))) for l in open(sys.argv[1])]
json.dump({"mode": "clm", "pairs": pairs}, open(sys.argv[2], "w"))
PY
for round in 1 2 3 4 5; do
  gw_curl POST /v1/score "$run_dir/score.json"; gw_expect 200 "scoring round $round"
  sleep 0.3
done
curl -s "$gw_url/metrics" | promtool check metrics || e2e_fail "promtool check metrics"

query() { # promql -> the first sample's value, or nothing
  curl -s -G "$prom_url/api/v1/query" --data-urlencode "query=$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
series='xlm_gateway_requests_total{model="tiny-clm-enfr",task="clm_score",status="ok"}'
has_all() { [ "$(query "$series")" = 1000 ]; }
e2e_wait_until 30 "Prometheus to scrape the counter at 1000" has_all
p50=$(query 'histogram_quantile(0.5, sum by (le) (xlm_gateway_request_duration_seconds_bucket{model="tiny-clm-enfr"}))')
count=$(query 'xlm_gateway_request_duration_seconds_count{model="tiny-clm-enfr",task="clm_score"}')
up=$(query 'up{job="xlm-gateway"}')
served=$(query 'xlm_broker_request_duration_seconds_count{model="tiny-clm-enfr"}')
broker_p99=$(query 'histogram_quantile(0.99, sum by (le) (xlm_broker_request_duration_seconds_bucket{model="tiny-clm-enfr"}))')
[ "$count" = 5 ] || e2e_fail "latency histogram count in Prometheus: '$count', expected 5 scoring requests"
python3 -c "import sys; v=float(sys.argv[1]); sys.exit(0 if 0 < v < 10 else 1)" "$p50" ||
  e2e_fail "histogram_quantile(0.5) of the gateway's latency: '$p50'"
[ "$up" = 1 ] || e2e_fail "up{job=xlm-gateway} = '$up'"
[ "${served:-0}" -ge 1000 ] || e2e_fail "the broker's request histogram in Prometheus: '$served' requests, expected 1000"
python3 -c "import sys; v=float(sys.argv[1]); sys.exit(0 if 0 < v < 100 else 1)" "$broker_p99" ||
  e2e_fail "histogram_quantile(0.99) of the broker's request histogram: '$broker_p99'"
echo "gateway-prometheus: Prometheus scraped $series = 1000, 5 latency observations, p50 ${p50}s; the broker's histogram: $served requests, p99 ${broker_p99}s"
kill -TERM "$prom_pid"
e2e_wait_until 20 "prometheus to stop" e2e_gone "$prom_pid"
gw_stop
echo "gateway-prometheus: ok"
