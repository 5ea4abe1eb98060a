#!/usr/bin/env bash
# The Python client's tests (pytest) against a real broker and real MPI
# workers: the bundled model and two golden checkpoints, one stage each.
# Usage: run.sh BUILD_DIR PYTHON
set -euo pipefail
. "$(dirname "$0")/../e2e/lib.sh"
e2e_init python-client "$1"
python=$2
e2e_start --model "$top/models/tiny-clm-enfr" --model "$top/tests/golden/clm-seq_cls" \
  --model "$top/tests/golden/clm-qa" --stages 1 --timeout 180
export XLM_ENDPOINT=$endpoint XLM_BACKEND="tcp://127.0.0.1:$backend" XLM_RUN_DIR=$run_dir \
       XLM_BUILD_DIR=$build XLM_SOURCE_DIR=$top PYTHONPATH="$build/python${PYTHONPATH:+:$PYTHONPATH}"
"$python" -m pytest -q -p no:cacheprovider "$top/tests/python" || e2e_fail "pytest failed"
