#!/usr/bin/env bash
# Several hosts with real networking, on one machine: three network
# namespaces ("hosts" a, b, c, each with its own hostname) joined by a
# bridge that lives in a fourth, on a /24 that exists only inside them (no
# link to this machine's own network). Host a runs the broker, the clients
# and mpirun (through deploy/cluster/run-workers, the script users run, with
# a hostfile); netns-rsh stands in for ssh, so stage 0 runs on host b and
# stage 1 on host c, the activations crossing the bridge over TCP.
#
#   1. 10,000 pairs (models/tiny-clm-enfr/examples/pairs.tsv, 50 times)
#      scored offline (xlm-score --model) and through the service with both
#      ranks on host b, then with the stages on b and c: the same scores
#      (1e-4), and the throughput of both placements, as a ratio;
#   2. every process of host b killed (kill -9: stage 0 and its orted)
#      mid-job: the supervisor restarts the MPI job, the broker re-queues
#      what the pipeline held, and the job ends with every line, equal to
#      offline.
#
# Skipped (status 77) where network namespaces cannot be made.
# CURVE is on (broker, workers and clients with xlm-keygen's key files, the
# broker's ports off loopback); XLM_CLUSTER_CURVE=0 runs without it (the
# broker then needs --insecure).
# Usage: netns_cluster.sh BUILD_DIR
set -euo pipefail

# Can this process make namespaces and a bridge at all?
probe=xlmc-probe-$$
if ! ip netns add "$probe" 2>/dev/null; then
  echo "netns_cluster: SKIP: 'ip netns add' is not permitted here (needs root and CAP_SYS_ADMIN)"
  exit 77
fi
if ! ip -n "$probe" link add br0 type bridge 2>/dev/null; then
  ip netns del "$probe"
  echo "netns_cluster: SKIP: no bridge links in a network namespace (kernel without bridge support)"
  exit 77
fi
ip netns del "$probe"

. "$(dirname "$0")/../e2e/lib.sh"
e2e_init netns-cluster "$1"
model="$top/models/tiny-clm-enfr"
here="$top/tests/cluster"
total=10000 stages=2

# Unique names per run: a crashed run's namespaces (its pid in the name,
# that pid gone) are removed here, a running one's left alone.
tag=xlmc$$x$(printf %04x $((RANDOM)))
subnet=10.213.7
declare -A ns=([a]=$tag-a [b]=$tag-b [c]=$tag-c [br]=$tag-br)
declare -A addr=([a]=$subnet.1 [b]=$subnet.2 [c]=$subnet.3)
broker_ep="tcp://${addr[a]}:5555"
supervisor= broker=

ns_remove() { # namespace
  local pid
  for pid in $(ip netns pids "$1" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$1" 2>/dev/null || true
}

for old in $(ip netns list | awk '{print $1}' | grep -E '^xlmc[0-9]+x[0-9a-f]+-' || true); do
  pid=${old#xlmc}
  pid=${pid%%x*}
  [ -e "/proc/$pid" ] || { echo "netns_cluster: removing $old, left by a run that ended"; ns_remove "$old"; }
done

cluster_cleanup() {
  touch "$run_dir/stopping"
  # (set -e holds here too: every command must succeed or be excused.)
  if [ -n "$supervisor" ]; then kill -9 "$supervisor" 2>/dev/null || true; fi
  local h
  for h in a b c br; do ns_remove "${ns[$h]}"; done
  return 0
}
trap 'rc=$?; cluster_cleanup; e2e_cleanup $rc' EXIT

# Four namespaces; each host's veth is made inside the bridge's namespace
# with its peer moved straight into the host's: nothing touches ours.
ip netns add "${ns[br]}"
ip -n "${ns[br]}" link add br0 type bridge
ip -n "${ns[br]}" link set br0 up
for h in a b c; do
  ip netns add "${ns[$h]}"
  ip -n "${ns[br]}" link add "v$h" type veth peer name eth0 netns "${ns[$h]}"
  ip -n "${ns[br]}" link set "v$h" master br0 up
  ip -n "${ns[$h]}" addr add "${addr[$h]}/24" dev eth0
  ip -n "${ns[$h]}" link set eth0 up
  ip -n "${ns[$h]}" link set lo up
  echo "${addr[$h]} ${ns[$h]} xlm-host-$h" >> "$run_dir/hosts"
done
echo "netns_cluster: hosts a ${addr[a]} (broker, mpirun), b ${addr[b]}, c ${addr[c]} on bridge ${ns[br]}"

# Runs a command on host a; an array, not a function, so that $! of
# "${on_a[@]}" ... & is the command itself (ip netns exec execs it).
on_a=(ip netns exec "${ns[a]}")

# CURVE: one switch here, the key options in these three lists.
broker_keys=(--insecure) worker_keys=() client_keys=()
if [ "${XLM_CLUSTER_CURVE:-1}" = 1 ]; then
  [ -x "$build/bin/xlm-keygen" ] ||
    e2e_fail "XLM_CLUSTER_CURVE=1 but $build/bin/xlm-keygen is missing: this build has no CURVE"
  mkdir -p "$run_dir/keys/allowed"
  for k in broker worker client; do
    "$build/bin/xlm-keygen" "$run_dir/keys/$k" > /dev/null || e2e_fail "xlm-keygen $k failed"
  done
  cp "$run_dir/keys/worker.pub" "$run_dir/keys/client.pub" "$run_dir/keys/allowed/"
  broker_keys=(--curve-key "$run_dir/keys/broker.key" --curve-allow "$run_dir/keys/allowed")
  worker_keys=(--curve-secret "$run_dir/keys/worker.key" --curve-server "$run_dir/keys/broker.pub")
  client_keys=(--curve-secret "$run_dir/keys/client.key" --curve-server "$run_dir/keys/broker.pub")
fi

# A number of the broker's stats (asked from host a), DEFAULT without one.
cl_stat() { # field default
  local json
  if json=$("${on_a[@]}" "$build/bin/xlm-client" stats --endpoint "$broker_ep" --timeout-ms 2000 \
              ${client_keys[@]+"${client_keys[@]}"} 2>/dev/null) &&
     [[ $json =~ \"$1\":([0-9]+) ]]; then
    echo "${BASH_REMATCH[1]}"
  else
    echo "$2"
  fi
}
alive() { [ "$(cl_stat pipelines_alive 0)" -ge 1 ]; }
stats_json() {
  "${on_a[@]}" "$build/bin/xlm-client" stats --endpoint "$broker_ep" --timeout-ms 2000 \
    ${client_keys[@]+"${client_keys[@]}"}
}

# The broker on host a, and the supervisor loop of deploy/local/start
# around deploy/cluster/run-workers HOSTFILE, run on host a (its own
# hostname too); mpirun reaches hosts b and c through netns-rsh.
service_up() { # hostfile
  rm -f "$run_dir/stopping"
  "${on_a[@]}" "$build/bin/xlm-broker" --frontend "$broker_ep" --backend "tcp://${addr[a]}:5556" \
    ${broker_keys[@]+"${broker_keys[@]}"} >> "$run_dir/broker.log" 2>&1 &
  broker=$!
  echo "$broker" > "$run_dir/broker.pid"
  (
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export OMPI_MCA_plm_rsh_agent="$here/netns-rsh $run_dir/hosts"
    export XLM_BUILD_DIR="$build" XLM_MPI_IF=eth0 XLM_MPI_BIND=none
    while [ ! -f "$run_dir/stopping" ]; do
      ip netns exec "${ns[a]}" unshare --uts /bin/sh -c 'hostname xlm-host-a; exec "$@"' sh \
        "$top/deploy/cluster/run-workers" "$1" "${addr[a]}" "$model" "$stages" -- --threads 1 \
        ${worker_keys[@]+"${worker_keys[@]}"} >> "$run_dir/workers.log" 2>&1 &
      echo $! > "$run_dir/mpirun.pid"
      wait $! || true
      [ -f "$run_dir/stopping" ] && break
      echo "$(date +%T) supervisor: mpirun exited, restarting" >> "$run_dir/workers.log"
      sleep 1
    done
  ) &
  supervisor=$!
  e2e_wait_until 60 "a pipeline across the hosts of $(basename "$1") to register" alive
}

service_down() {
  touch "$run_dir/stopping"
  kill -TERM "$(cat "$run_dir/mpirun.pid")" 2>/dev/null || true
  e2e_wait_until 30 "the supervisor to end" e2e_gone "$supervisor"
  wait "$supervisor" 2>/dev/null || true
  supervisor=
  kill -TERM "$broker" 2>/dev/null || true
  e2e_wait_until 30 "the broker to end" e2e_gone "$broker"
  wait "$broker" 2>/dev/null || true
  local h pids
  for h in a b c; do
    pids=$(ip netns pids "${ns[$h]}")
    [ -z "$pids" ] || e2e_fail "processes left on host $h after the stop: $(ps -o pid=,stat=,args= -p "${pids//$'\n'/,}")"
  done
}

# The xlm-worker of MPI rank RANK running on host H (its network namespace).
worker_on() { # host rank
  local p
  for p in $(ip netns pids "${ns[$1]}"); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = xlm-worker ] || continue
    e2e_environ_has "$p" "OMPI_COMM_WORLD_RANK=$2" &&
      { echo "$p"; return 0; }
  done
  return 1
}

now_us() { echo "${EPOCHREALTIME//[^0-9]/}"; }

# Scores the input through the service into OUTPUT (2 minutes at most);
# sets $rate, pairs/s. In the background, so that a signal to this script
# is handled at once.
score_service() { # output
  local t0 pid rc=0
  t0=$(now_us)
  "${on_a[@]}" "$build/bin/xlm-score" --endpoint "$broker_ep" --mode clm --quiet \
    --input "$run_dir/input.tsv" --output "$1" ${client_keys[@]+"${client_keys[@]}"} \
    2>> "$run_dir/score.log" &
  pid=$!
  e2e_background "$pid"
  e2e_wait_until 120 "xlm-score into $(basename "$1") to finish" e2e_gone "$pid"
  wait "$pid" || rc=$?
  [ $rc = 0 ] || e2e_fail "xlm-score through the service into $1 exited $rc"
  rate=$(( total * 1000000 / ($(now_us) - t0) ))
}

compare() { # label output
  python3 - "$1" "$2" "$run_dir/offline.jsonl" "$total" <<'PY'
import json, sys
label, got_path, offline_path, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
got = [json.loads(l) for l in open(got_path)]
offline = [json.loads(l) for l in open(offline_path)]
lines = [g["line"] for g in got]
if lines != list(range(1, total + 1)):
    sys.exit("%s: %d lines, expected lines 1..%d once each, in order" % (label, len(got), total))
same = worst = 0
for g, o in zip(got, offline):
    if "error" in g or "error" in o:
        sys.exit("%s: line %d holds an error: %s / offline %s" % (label, g["line"], g.get("error"), o.get("error")))
    if g["n_target_tokens"] != o["n_target_tokens"]:
        sys.exit("%s: line %d has %d target tokens, offline %d" % (label, g["line"], g["n_target_tokens"], o["n_target_tokens"]))
    d = abs(g["score"] - o["score"])
    worst = max(worst, d)
    same += g["score"] == o["score"]
    if d > 1e-4:
        sys.exit("%s: line %d scores %r, offline %r" % (label, g["line"], g["score"], o["score"]))
print("netns_cluster: %s: %d lines equal to offline (%d bit-identical, largest difference %.3g)" % (label, total, same, worst))
PY
}

for _ in $(seq 1 $((total / 200))); do cat "$model/examples/pairs.tsv"; done > "$run_dir/input.tsv"
[ "$(wc -l < "$run_dir/input.tsv")" = "$total" ] || e2e_fail "the input does not have $total lines"
t0=$(now_us)
"$build/bin/xlm-score" --model "$model" --mode clm --quiet --threads 1 \
  --input "$run_dir/input.tsv" --output "$run_dir/offline.jsonl"
offline_rate=$(( total * 1000000 / ($(now_us) - t0) ))

# The same two ranks on one host (b: shared memory between them).
echo "${addr[b]} slots=2" > "$run_dir/hostfile.one"
service_up "$run_dir/hostfile.one"
if [ ${#client_keys[@]} -gt 0 ]; then
  # CURVE holds across the bridge: a client from host a without keys is refused.
  plain=$("${on_a[@]}" "$build/bin/xlm-client" stats --endpoint "$broker_ep" --timeout-ms 1500 2>&1) &&
    e2e_fail "a client without CURVE keys got stats from the CURVE broker"
  [[ $plain == *"requires CURVE"* ]] || e2e_fail "the plain client's error does not say why: $plain"
  echo "netns_cluster: CURVE on both broker ports; a plain client is refused"
fi
worker_on b 0 > /dev/null && worker_on b 1 > /dev/null || e2e_fail "ranks 0 and 1 are not both on host b"
score_service "$run_dir/one.jsonl"
one_rate=$rate
compare "one host" "$run_dir/one.jsonl"
stats_json > "$run_dir/stats.one.json"
service_down

# Stage 0 on host b, stage 1 on host c.
printf '%s slots=1\n%s slots=1\n' "${addr[b]}" "${addr[c]}" > "$run_dir/hostfile.two"
service_up "$run_dir/hostfile.two"
worker_on b 0 > /dev/null || e2e_fail "rank 0 (stage 0) is not on host b"
worker_on c 1 > /dev/null || e2e_fail "rank 1 (stage 1) is not on host c"
grep -q "xlm-worker \[info\] rank 0: pipeline 0 stage 0/$stages:" "$run_dir/workers.log" ||
  e2e_fail "no log line of rank 0 owning stage 0"
score_service "$run_dir/two.jsonl"
two_rate=$rate
compare "hosts b and c" "$run_dir/two.jsonl"
stats_json > "$run_dir/stats.two.json"
echo "netns_cluster: throughput, 10,000 pairs: offline $offline_rate pairs/s; 2 stages on one host $one_rate pairs/s; stage 0 on b, stage 1 on c $two_rate pairs/s; across hosts / one host = $(python3 -c "print('%.2f' % ($two_rate / $one_rate))")"
# bench/pipeline_model.py on each run's own stage figures: shared memory
# on one host (an unbounded link), the bridge across hosts (10 Gbit/s,
# 0.05 ms: a veth pair between namespaces is faster still).
model_one=$(python3 "$top/bench/pipeline_model.py" "$run_dir/stats.one.json" --gbit 0)
model_two=$(python3 "$top/bench/pipeline_model.py" "$run_dir/stats.two.json" --gbit 10 --latency-ms 0.05)
echo "netns_cluster: model, one host: $(python3 "$top/bench/pipeline_model.py" "$run_dir/stats.one.json" --table | sed -n 1p)"
echo "netns_cluster: model, one host: ${model_one#predicted } (measured $one_rate)"
echo "netns_cluster: model, hosts b and c: ${model_two#predicted } (measured $two_rate)"

# Host b dies mid-job: every process in its namespace, kill -9.
done0=$(cl_stat requests_done 0)
requeued0=$(cl_stat requests_requeued 0)
"${on_a[@]}" "$build/bin/xlm-score" --endpoint "$broker_ep" --mode clm --quiet \
  --input "$run_dir/input.tsv" --output "$run_dir/killed.jsonl" \
  ${client_keys[@]+"${client_keys[@]}"} 2>> "$run_dir/score.log" &
client=$!
e2e_background "$client"
done_since() { echo $(( $(cl_stat requests_done "$done0") - done0 )); }
past() { [ "$(done_since)" -ge "$1" ]; }
e2e_wait_until 60 "1,000 answers before the fault" past 1000
victims=$(ip netns pids "${ns[b]}" | tr '\n' ' ')
before=$(done_since)
e2e_gone "$client" && e2e_fail "the job ended before the fault ($before answers)"
# shellcheck disable=SC2086
kill -9 $victims
echo "netns_cluster: kill -9 of every process of host b (pids $victims) after $before answers"
e2e_wait_until 120 "the job to finish after host b died" e2e_gone "$client"
rc=0
wait "$client" || rc=$?
[ $rc = 0 ] || e2e_fail "xlm-score exited $rc after host b died: $(tail -n 3 "$run_dir/score.log")"
restarts=$(grep -c "supervisor: mpirun exited, restarting" "$run_dir/workers.log" || true)
requeued=$(( $(cl_stat requests_requeued 0) - requeued0 ))
echo "netns_cluster: $restarts mpirun restart(s), $requeued requests re-queued by the broker"
e2e_assert_fault_landed "kill -9 of host b" "$before" "$total" "$restarts" "mpirun restarts by the supervisor"
[ "$requeued" -ge 1 ] || e2e_fail "the broker re-queued nothing after host b died"
worker_on b 0 > /dev/null || e2e_fail "no rank 0 on host b after the restart"
compare "host b killed" "$run_dir/killed.jsonl"
service_down
echo "netns_cluster: OK"
