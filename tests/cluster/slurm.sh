#!/usr/bin/env bash
# A real Slurm on this machine: slurmctld and slurmd (Debian's slurm-wlm)
# on loopback, configured by this test in its run directory (its own ports,
# state, spool and logs; no systemd, no munge: auth/none), then
#
#   1. sbatch deploy/cluster/xlmserve.slurm (Slurm runs a spool copy of it,
#      which finds the build through XLM_HOME): the broker on the node, one
#      2-stage pipeline started by a plain mpirun inside the allocation;
#   2. the bundled en-fr pairs scored through it equal offline
#      (xlm-score --model, in process) within 1e-4;
#   3. scancel: no process of the job is left (broker, workers, mpirun,
#      orted/prted), the job leaves the queue;
#   4. slurmd and slurmctld stopped.
#
# Skipped (status 77) only where Slurm's daemons or clients are not
# installed. Usage: slurm.sh BUILD_DIR
set -euo pipefail

for tool in slurmctld slurmd sbatch scancel squeue scontrol; do
  command -v "$tool" > /dev/null ||
    { echo "slurm: SKIP: $tool is not installed (Debian: slurmctld slurmd slurm-client)"; exit 77; }
done

. "$(dirname "$0")/../e2e/lib.sh"
e2e_init slurm "$1"
model="$top/models/tiny-clm-enfr"
stages=2
conf="$run_dir/slurm.conf"
export SLURM_CONF=$conf
ctld_pid= slurmd_pid= job=

mapfile -t slurm_ports < <("$top/tests/tools/free_ports" 2)
mkdir -p "$run_dir/state" "$run_dir/spool"
read -r cpus sockets cores threads < <(lscpu -p=CPU,SOCKET,CORE 2>/dev/null | awk -F, '
  !/^#/ { n++; s[$2] = 1; c[$2 "," $3]++ }
  END { ns = length(s); nc = length(c); print n, ns, nc / ns, n / nc }')
memory_mb=$(( $(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) / 1024 ))
# auth/none and cred/none: one machine, one user; no munge daemon or key.
# proctrack/linuxproc follows the job's process tree, so scancel reaches
# mpirun's children too. KillWait is short: the test waits for it.
cat > "$conf" <<EOF
ClusterName=xlmtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=${slurm_ports[0]}
SlurmdPort=${slurm_ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$run_dir/state
SlurmdSpoolDir=$run_dir/spool
SlurmctldPidFile=$run_dir/slurmctld.pid
SlurmdPidFile=$run_dir/slurmd.pid
SlurmctldLogFile=$run_dir/slurmctld.log
SlurmdLogFile=$run_dir/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus SocketsPerBoard=$sockets CoresPerSocket=$cores ThreadsPerCore=$threads RealMemory=$memory_mb State=UNKNOWN
PartitionName=xlm Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

# The job's processes: XLM_SLURM_TEST_RUN (given to sbatch alone, not to
# this script's own children) is in the environment of everything the job
# started.
job_pids() {
  local p
  for p in /proc/[0-9]*; do
    e2e_environ_has "${p#/proc/}" "XLM_SLURM_TEST_RUN=$run_dir" && echo "${p#/proc/}"
  done
  return 0
}

# This run's slurmstepd processes: they inherit slurmd's environment, and
# with it SLURM_CONF, and outlive a slurmd that is killed.
stepd_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = slurmstepd ] || continue
    e2e_environ_has "${p#/proc/}" "SLURM_CONF=$conf" && echo "${p#/proc/}"
  done
  return 0
}

slurm_cleanup() {
  local pid
  if [ -n "$job" ] && [ -n "$ctld_pid" ]; then
    scancel "$job" 2>/dev/null || true
    for _ in $(seq 1 100); do
      [ -z "$(job_pids)$(stepd_pids)" ] && break
      sleep 0.1
    done
  fi
  for pid in $slurmd_pid $ctld_pid; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    e2e_gone "${slurmd_pid:-0}" && e2e_gone "${ctld_pid:-0}" && break
    sleep 0.1
  done
  for pid in $(job_pids) $(stepd_pids) $slurmd_pid $ctld_pid; do kill -9 "$pid" 2>/dev/null || true; done
  return 0
}
trap 'rc=$?; slurm_cleanup; e2e_cleanup $rc' EXIT

# -D: in the foreground, children of this script; -i: no old state.
slurmctld -D -i -f "$conf" >> "$run_dir/slurmctld.out" 2>&1 &
ctld_pid=$!
node_idle() { sinfo -h -n localhost -o %t 2>/dev/null | grep -qx idle; }
ctld_up() { scontrol ping 2>/dev/null | grep -q UP; }
e2e_wait_until 30 "slurmctld to answer" ctld_up
slurmd -D -N localhost -f "$conf" >> "$run_dir/slurmd.out" 2>&1 &
slurmd_pid=$!
e2e_wait_until 30 "node localhost to be idle in slurmctld" node_idle
echo "slurm: slurmctld (pid $ctld_pid, port ${slurm_ports[0]}) and slurmd (pid $slurmd_pid, port ${slurm_ports[1]}) up: $(sinfo -h -o '%P %D %c cpus %m MB')"

# The build is the installation (bin/xlm-broker, bin/xlm-worker); the
# broker binds loopback on this run's ports; Open MPI keeps to loopback and
# may run as root (what an operator's environment would say).
export XLM_HOME=$build XLM_FRONTEND_PORT=$frontend XLM_BACKEND_PORT=$backend XLM_BROKER_BIND=127.0.0.1
# CURVE on, as the script runs by default: the job makes its keys here, and
# this test's clients use the client pair it allows.
export XLM_KEY_DIR=$run_dir/keys
e2e_client_keys=(--curve-secret "$XLM_KEY_DIR/client.key" --curve-server "$XLM_KEY_DIR/broker.pub")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo
job=$(sbatch --parsable --chdir "$run_dir" --nodes 1 --ntasks "$stages" --export="ALL,XLM_SLURM_TEST_RUN=$run_dir" \
        "$top/deploy/cluster/xlmserve.slurm" "$model" "$stages") ||
  e2e_fail "sbatch refused the job"
job=${job%%;*}
echo "slurm: sbatch deploy/cluster/xlmserve.slurm: job $job"
job_out="$run_dir/xlmserve-$job.out"

job_state() { squeue -h -j "$job" -o %T 2>/dev/null; }
running() {
  local state
  state=$(job_state)
  [ -n "$state" ] || e2e_fail "job $job left the queue before serving: $(cat "$job_out" 2>/dev/null)"
  [ "$state" = RUNNING ]
}
e2e_wait_until 30 "job $job to run" running
alive() { running && [ "$(e2e_stat pipelines_alive 0)" -ge 1 ]; }
e2e_wait_until 60 "the job's pipeline to register with its broker" alive
grep -q "^xlmserve: $build on localhost, clients use tcp://localhost:$frontend" "$job_out" ||
  e2e_fail "the job's output does not name the build and the frontend: $(cat "$job_out")"

# The ranks were started by mpirun inside the allocation: Slurm's job id in
# their environment and the pipeline's id.
job_worker() { # rank
  local p
  for p in $(job_pids); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = xlm-worker ] || continue
    e2e_environ_has "$p" "OMPI_COMM_WORLD_RANK=$1" &&
      { echo "$p"; return 0; }
  done
  return 1
}
job_processes() { ps -o pid=,args= -p "$(job_pids | paste -sd, -)" 2>/dev/null || true; }
rank0=$(job_worker 0) || e2e_fail "no xlm-worker of rank 0 among the job's processes: $(job_processes)"
job_worker 1 > /dev/null || e2e_fail "no xlm-worker of rank 1 among the job's processes: $(job_processes)"
e2e_environ_has "$rank0" "SLURM_JOB_ID=$job" ||
  e2e_fail "rank 0 (pid $rank0) does not run inside Slurm job $job"
[[ $("$build/bin/xlm-client" stats --endpoint "$endpoint" "${e2e_client_keys[@]}") == *"/j$job/p0"* ]] ||
  e2e_fail "no pipeline id with Slurm's job id j$job in the broker's stats"

"$build/bin/xlm-score" --model "$model" --mode clm --quiet --threads 1 \
  --input "$model/examples/pairs.tsv" --output "$run_dir/offline.jsonl"
"$build/bin/xlm-score" --endpoint "$endpoint" "${e2e_client_keys[@]}" --mode clm --quiet \
  --input "$model/examples/pairs.tsv" --output "$run_dir/service.jsonl" 2>> "$run_dir/score.log" ||
  e2e_fail "xlm-score through the Slurm job failed: $(tail -n 3 "$run_dir/score.log")"
python3 - "$run_dir/service.jsonl" "$run_dir/offline.jsonl" <<'PY'
import json, sys
got = [json.loads(l) for l in open(sys.argv[1])]
offline = [json.loads(l) for l in open(sys.argv[2])]
if len(got) != 200 or [g["line"] for g in got] != list(range(1, 201)):
    sys.exit("slurm: FAIL: %d lines through the service, expected lines 1..200" % len(got))
worst = 0.0
for g, o in zip(got, offline):
    if "error" in g:
        sys.exit("slurm: FAIL: line %d: %s" % (g["line"], g["error"]))
    if g["n_target_tokens"] != o["n_target_tokens"] or abs(g["score"] - o["score"]) > 1e-4:
        sys.exit("slurm: FAIL: line %d scores %r (%d tokens), offline %r (%d)" % (
            g["line"], g["score"], g["n_target_tokens"], o["score"], o["n_target_tokens"]))
    worst = max(worst, abs(g["score"] - o["score"]))
print("slurm: 200 pairs through the Slurm job equal to offline (largest difference %.3g)" % worst)
PY

# scancel: every process of the job goes, nothing is left behind.
before=$(job_pids | wc -l)
job_processes > "$run_dir/job_processes.txt"
for name in xlm-broker xlm-worker mpirun; do
  grep -q "$name" "$run_dir/job_processes.txt" || e2e_fail "no $name among the job's processes before scancel"
done
scancel "$job"
left_queue() { [ -z "$(job_state)" ]; }
no_job_process() { [ -z "$(job_pids)" ]; }
e2e_wait_until 60 "job $job to leave the queue after scancel" left_queue
e2e_wait_until 30 "the job's processes to end after scancel" no_job_process
no_stepd() { [ -z "$(stepd_pids)" ]; }
e2e_wait_until 30 "the job's slurmstepd processes to end after scancel" no_stepd
# And by command line (this run's backend port), in case a process shed
# its environment; orted/prted (mpirun's daemons on other nodes) carry the
# job's environment and are among job_pids above.
for pattern in "xlm-broker.*:$backend" "xlm-worker.*:$backend" "mpirun.*:$backend"; do
  if pgrep -f -- "$pattern" > /dev/null; then
    e2e_fail "a process matching '$pattern' is left after scancel: $(pgrep -a -f -- "$pattern")"
  fi
done
echo "slurm: scancel $job: all $before processes of the job ended ($(awk '{ sub(".*/", "", $2); print $2 }' "$run_dir/job_processes.txt" | sort | uniq -c | awk '{ printf "%s%s x%d", n++ ? ", " : "", $2, $1 }')), none left"

kill -TERM "$slurmd_pid" "$ctld_pid"
e2e_wait_until 30 "slurmd to stop" e2e_gone "$slurmd_pid"
e2e_wait_until 30 "slurmctld to stop" e2e_gone "$ctld_pid"
wait "$slurmd_pid" "$ctld_pid" 2>/dev/null || true
slurmd_pid= ctld_pid= job=
echo "slurm: OK"
