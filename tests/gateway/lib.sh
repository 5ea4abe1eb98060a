# shellcheck shell=bash
# tests/gateway/lib.sh: tests/e2e/lib.sh plus an xlm-gateway in front of
# the service the script starts.
#
#   gw_start [xlm-gateway options]   on a free 127.0.0.1 port ($gw_url); killed on exit
#   gw_stop                          SIGTERM, and wait for it
#   gw_curl METHOD PATH [BODY_FILE] [curl options...]
#                                    sets $code; the body in $run_dir/body,
#                                    the headers in $run_dir/headers
#   gw_expect CODE WHAT              fails unless the last gw_curl got CODE
#   gw_body_has TEXT WHAT            fails unless its body holds TEXT
#   gw_metric 'SERIES'               the value of that exact series in /metrics
. "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"

gw_start() {
  gw_port=$("$top/tests/tools/free_ports" 1)
  gw_url="http://127.0.0.1:$gw_port"
  "$build/bin/xlm-gateway" --broker "$endpoint" --listen "127.0.0.1:$gw_port" "$@" \
    >> "$run_dir/gateway.log" 2>&1 &
  gw_pid=$!
  e2e_background "$gw_pid"
  e2e_wait_until 10 "the gateway to listen" curl -sf -o /dev/null "$gw_url/v2/health/live"
}

gw_stop() {
  kill -TERM "$gw_pid" 2>/dev/null || true
  wait "$gw_pid" 2>/dev/null || true
}

gw_curl() { # method path [body_file] [curl options...]
  local method=$1 path=$2 data=()
  shift 2
  if [ $# -gt 0 ] && [ -f "$1" ]; then data=(--data-binary "@$1" -H 'Content-Type: application/json'); shift; fi
  code=$(curl -s -X "$method" -o "$run_dir/body" -D "$run_dir/headers" -w '%{http_code}' \
           "${data[@]}" "$@" "$gw_url$path") || code=000
}

gw_expect() { # code what
  [ "$code" = "$1" ] || e2e_fail "$2: HTTP $code, expected $1: $(head -c 300 "$run_dir/body")"
}

gw_body_has() { # text what
  grep -qF -- "$1" "$run_dir/body" || e2e_fail "$2: the body lacks '$1': $(head -c 300 "$run_dir/body")"
}

gw_metric() { # exact series, e.g. 'xlm_gateway_http_responses_total{code="200"}'
  curl -s "$gw_url/metrics" | awk -v s="$1" '$1 == s { print $2; found = 1 } END { if (!found) print 0 }'
}
