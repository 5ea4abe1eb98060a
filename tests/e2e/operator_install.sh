#!/usr/bin/env bash
# After `cmake --install` (issue 11): the systemd units are written with the
# install prefix and pass `systemd-analyze verify`; every installed program
# finds its libraries at run time (RPATH) and runs; the cluster scripts find
# the installation without $0 pointing into a source tree (Slurm runs a copy
# from its spool directory: XLM_HOME). The units' command lines, run as
# systemd would run them with a settings file, start the broker and the
# workers with the CURVE options when XLM_CURVE_* are set (and they work
# through CURVE), and without them when those are empty.
# Usage: operator_install.sh BUILD_DIR
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init op-install "$1"
prefix="$run_dir/prefix"
for c in server tools xlmclient; do
  cmake --install "$build" --prefix "$prefix" --component "$c" > /dev/null || e2e_fail "cmake --install --component $c"
done
units="$prefix/lib/systemd/system"
for u in xlm-broker.service xlm-workers.service; do
  [ -f "$units/$u" ] || e2e_fail "$u not installed"
  grep -q "$prefix/bin/" "$units/$u" || e2e_fail "$u does not run the installed programs"
  grep -q "EnvironmentFile=-$prefix/etc/xlmserve/xlmserve.env" "$units/$u" || e2e_fail "$u does not read the environment file"
done
command -v systemd-analyze > /dev/null || e2e_fail "systemd-analyze missing (package systemd)"
systemd-analyze verify "$units/xlm-broker.service" "$units/xlm-workers.service" 2> "$run_dir/verify.log" ||
  e2e_fail "systemd-analyze verify"
[ -s "$run_dir/verify.log" ] && e2e_fail "systemd-analyze verify warns"
echo "systemd units verified: $(grep -h ExecStart= "$units"/*.service | cut -c1-80 | tr '\n' ' ')"
grep -q "^#XLM_CURVE_KEY=" "$prefix/share/xlmserve/xlmserve.env" &&
  grep -q "^#XLM_CURVE_SECRET=" "$prefix/share/xlmserve/xlmserve.env" ||
  e2e_fail "the installed xlmserve.env has no CURVE examples"

# What systemd would start, without systemd (no manager runs here): each
# unit's ExecStart split into words as systemd splits it, with the unit's
# Environment= and an environment file as the only environment. The line
# must hold nothing systemd itself would expand (\${VAR}, %-specifiers,
# escapes): the variables are read by the sh it starts, so an empty one
# means "off" and that check is the same here as under systemd.
cat > "$run_dir/unit_exec.py" <<'PY'
import os, shlex, sys
unit, env_file = sys.argv[1], sys.argv[2]
env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
exec_start = None
for line in open(unit):
    line = line.rstrip("\n")
    if line.startswith("Environment="):
        for word in shlex.split(line[len("Environment="):]):
            key, _, value = word.partition("=")
            env[key] = value
    elif line.startswith("ExecStart="):
        exec_start = line[len("ExecStart="):]
for line in open(env_file):
    line = line.strip()
    if line and not line.startswith("#"):
        key, _, value = line.partition("=")
        env[key] = value
if exec_start is None or "${" in exec_start or "%" in exec_start or "\\" in exec_start:
    sys.exit(f"unit_exec: {unit}: ExecStart holds what systemd would expand: {exec_start}")
argv = shlex.split(exec_start)
os.execve(argv[0], argv, env)
PY
keys="$run_dir/keys"
mkdir -p "$keys/allowed"
for k in broker worker client; do
  "$prefix/bin/xlm-keygen" "$keys/$k" > /dev/null || e2e_fail "installed xlm-keygen $k"
done
cp "$keys/worker.pub" "$keys/client.pub" "$keys/allowed/"
client_keys=(--curve-secret "$keys/client.key" --curve-server "$keys/broker.pub")
# The settings file as an operator writes it: the template, edited.
env_with_curve() { # curve-key curve-allow curve-secret curve-server
  sed -e "s|^XLM_MODEL=.*|XLM_MODEL=$prefix/share/xlmserve/models/tiny-clm-enfr|" \
      -e "s|^XLM_STAGES=.*|XLM_STAGES=1|" \
      -e "s|^XLM_FRONTEND=.*|XLM_FRONTEND=$endpoint|" \
      -e "s|^XLM_BACKEND=.*|XLM_BACKEND=tcp://127.0.0.1:$backend|" \
      -e "s|^#XLM_CURVE_KEY=.*|XLM_CURVE_KEY=$1|" -e "s|^#XLM_CURVE_ALLOW=.*|XLM_CURVE_ALLOW=$2|" \
      -e "s|^#XLM_CURVE_SECRET=.*|XLM_CURVE_SECRET=$3|" -e "s|^#XLM_CURVE_SERVER=.*|XLM_CURVE_SERVER=$4|" \
      "$prefix/share/xlmserve/xlmserve.env"
  # This test's own: mpirun as root, Open MPI on loopback only.
  printf 'OMPI_ALLOW_RUN_AS_ROOT=1\nOMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\nOMPI_MCA_oob_tcp_if_include=lo\nOMPI_MCA_btl_tcp_if_include=lo\n'
}
unit_start() { # unit env-file log
  python3 "$run_dir/unit_exec.py" "$units/$1" "$2" > "$run_dir/$3" 2>&1 &
  unit_pid=$!
  e2e_background "$unit_pid"
}
unit_stop() { # pid
  kill -TERM "$1" 2>/dev/null || true
  e2e_wait_until 30 "$2 to stop" e2e_gone "$1"
  wait "$1" 2>/dev/null || true
}
cmdline() { tr '\0' ' ' < "/proc/$1/cmdline"; }
stats_ok() { "$prefix/bin/xlm-client" stats --endpoint "$endpoint" --timeout-ms 1000 "$@" > /dev/null 2>&1; }
alive_curve() {
  local json
  json=$("$prefix/bin/xlm-client" stats --endpoint "$endpoint" --timeout-ms 1000 "${client_keys[@]}" 2>/dev/null) &&
    [[ $json =~ \"pipelines_alive\":1 ]]
}

env_with_curve "$keys/broker.key" "$keys/allowed" "$keys/worker.key" "$keys/broker.pub" > "$run_dir/curve.env"
unit_start xlm-broker.service "$run_dir/curve.env" unit-broker.log
broker_pid=$unit_pid
e2e_wait_until 20 "the broker unit to answer a CURVE client" stats_ok "${client_keys[@]}"
[[ $(cmdline "$broker_pid") == *"xlm-broker --frontend $endpoint --backend tcp://127.0.0.1:$backend --curve-key $keys/broker.key --curve-allow $keys/allowed"* ]] ||
  e2e_fail "the broker unit's command line has not the CURVE options: $(cmdline "$broker_pid")"
e2e_says "$run_dir/unit-broker.log" "CURVE: the frontend allows 2 client keys from $keys/allowed"
stats_ok && e2e_fail "the broker unit with XLM_CURVE_KEY set answers a client without keys"
unit_start xlm-workers.service "$run_dir/curve.env" unit-workers.log
workers_pid=$unit_pid
e2e_wait_until 60 "the workers unit to register through CURVE" alive_curve
[[ $(cmdline "$workers_pid") == *"/bin/xlm-worker --model $prefix/share/xlmserve/models/tiny-clm-enfr --broker tcp://127.0.0.1:$backend --stages 1 --curve-secret $keys/worker.key --curve-server $keys/broker.pub"* ]] ||
  e2e_fail "the workers unit's command line has not the CURVE options: $(cmdline "$workers_pid")"
echo "units with the CURVE variables set: $(cmdline "$broker_pid" | sed "s|$run_dir|RUN|g")"
echo "                                    $(cmdline "$workers_pid" | sed "s|$run_dir|RUN|g" | cut -c1-200)"
unit_stop "$workers_pid" "the workers unit"
unit_stop "$broker_pid" "the broker unit"
# Empty means off: the template's lines uncommented with nothing after '='.
env_with_curve "" "" "" "" > "$run_dir/plain.env"
grep -q "^XLM_CURVE_KEY=$" "$run_dir/plain.env" || e2e_fail "the plain settings file has no empty XLM_CURVE_KEY"
unit_start xlm-broker.service "$run_dir/plain.env" unit-broker-plain.log
broker_pid=$unit_pid
e2e_wait_until 20 "the broker unit with empty CURVE variables to answer a plain client" stats_ok
[[ $(cmdline "$broker_pid") == *curve* ]] && e2e_fail "empty CURVE variables gave the broker CURVE options: $(cmdline "$broker_pid")"
unit_start xlm-workers.service "$run_dir/plain.env" unit-workers-plain.log
workers_pid=$unit_pid
alive_plain() { [[ $("$prefix/bin/xlm-client" stats --endpoint "$endpoint" --timeout-ms 1000 2>/dev/null) =~ \"pipelines_alive\":1 ]]; }
e2e_wait_until 60 "the workers unit with empty CURVE variables to register" alive_plain
[[ $(cmdline "$workers_pid") == *curve* ]] && e2e_fail "empty CURVE variables gave the workers CURVE options: $(cmdline "$workers_pid")"
unit_stop "$workers_pid" "the plain workers unit"
unit_stop "$broker_pid" "the plain broker unit"
echo "the units start the broker and the workers with CURVE when the settings file names the keys, without when they are empty"
for p in xlm-broker xlm-worker xlm-infer xlm-tokenize xlm-client xlm-score; do
  ldd "$prefix/bin/$p" | grep -q "not found" && e2e_fail "$p: a library is not found: $(ldd "$prefix/bin/$p")"
  (cd / && LD_LIBRARY_PATH= "$prefix/bin/$p" --version > /dev/null) || e2e_fail "installed $p --version fails"
done
echo "installed programs find their libraries and run"
# A copy of the Slurm script elsewhere (as sbatch runs it) finds the installation.
spool=$(mktemp -d "$prefix/spool-XXXXXX")
cp "$prefix/share/xlmserve/cluster/xlmserve.slurm" "$spool/slurm_script"
out=$(cd "$spool" && XLM_HOME="$prefix" SLURM_JOB_NODELIST=x bash "$spool/slurm_script" /nonexistent 2>&1 || true)
grep -q "/nonexistent is not a checkpoint folder" <<< "$out" || e2e_fail "the spooled slurm script did not find the installation: $out"
out=$(cd "$spool" && XLM_HOME="$prefix/none" bash "$spool/slurm_script" /nonexistent 2>&1 || true)
grep -q "XLM_HOME" <<< "$out" || e2e_fail "without an installation the slurm script does not name XLM_HOME: $out"
echo "the spooled slurm script finds the installation through XLM_HOME"
echo PASS
