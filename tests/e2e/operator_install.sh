#!/usr/bin/env bash
# After `cmake --install` (issue 11): the systemd units are written with the
# install prefix and pass `systemd-analyze verify`; every installed program
# finds its libraries at run time (RPATH) and runs; the cluster scripts find
# the installation without $0 pointing into a source tree (Slurm runs a copy
# from its spool directory: XLM_HOME).
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
