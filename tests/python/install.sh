#!/usr/bin/env bash
# The Python package installs without network both ways the README says:
# cmake --install (component xlmclient) and pip install ./client/python
# (from a copy of the sources, so that pip's in-tree build leaves the
# checkout clean); each installed copy imports, has its generated xlm_pb2
# and encodes a request.
# Usage: install.sh BUILD_DIR PYTHON
set -euo pipefail
build=$1 python=$2
top=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d /tmp/xlm-python-install-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
check() { # site_dir how
  PYTHONPATH=$1 "$python" -c '
import sys, xlmserve, xlmserve.xlm_pb2 as pb
from xlmserve import _core
assert xlmserve.__file__.startswith(sys.argv[1]), xlmserve.__file__
data = _core.encode_request("id-1", "seq_cls", input_ids=[[0, 5, 1]])
msg = pb.ClientMessage(); msg.ParseFromString(data)
assert msg.request.tokens.lengths == [3] and msg.version == 1
print("python-install: " + sys.argv[2] + ": ok (" + xlmserve.__file__ + ")")' "$1" "$2" ||
    { echo "python-install: FAIL: $2"; exit 1; }
}
cmake --install "$build" --prefix "$tmp/prefix" --component xlmclient > /dev/null
check "$tmp/prefix/lib/python3/dist-packages" "cmake --install"
mkdir -p "$tmp/src/client"
cp -r "$top/client/python" "$tmp/src/client/python"
cp -r "$top/proto" "$tmp/src/proto"
rm -rf "$tmp/src/client/python/build" "$tmp/src/client/python/"*.egg-info
"$python" -m pip install --quiet --no-build-isolation --no-deps --no-index --target "$tmp/site" \
  "$tmp/src/client/python" 2>&1 | grep -v "Running pip as the 'root' user" || true
check "$tmp/site" "pip install ./client/python"
