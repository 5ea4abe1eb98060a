#!/bin/sh
# Installs the client component of BUILD_DIR into a fresh prefix, checks
# that it brings nothing of the engine (no program, no BLAS, no MPI, no
# tokenizer library behind libxlmclient), builds EXAMPLE.c against it with
# pkg-config only and runs it; then installs the tools component beside it
# and checks that every tool resolves its libraries and starts.
# Usage: install_check.sh BUILD_DIR EXAMPLE.c TMP_DIR
set -eu
build=$1 example=$2 tmp=$3
mkdir -p "$tmp"
prefix=$(mktemp -d "$tmp/client_install.XXXXXX")
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" --component xlmclient >/dev/null
pc=$(find "$prefix" -name xlmclient.pc | head -n 1)
[ -n "$pc" ] || { echo "install_check: no xlmclient.pc under $prefix" >&2; exit 1; }
[ -f "$prefix/include/xlmclient.h" ] || { echo "install_check: no include/xlmclient.h" >&2; exit 1; }
[ ! -e "$prefix/bin" ] || { echo "install_check: the client component installs programs: $(ls "$prefix/bin")" >&2; exit 1; }
[ -f "$prefix/share/xlmserve/xlm.proto" ] || { echo "install_check: no share/xlmserve/xlm.proto" >&2; exit 1; }
export PKG_CONFIG_PATH="$(dirname "$pc")"
cflags=$(pkg-config --cflags xlmclient)
libs=$(pkg-config --libs xlmclient)
libdir=$(pkg-config --variable=libdir xlmclient)
echo "install_check: cflags '$cflags' libs '$libs'"
${CC:-cc} -std=c11 -Wall -Wextra -Werror $cflags "$example" -o "$prefix/example" $libs
LD_LIBRARY_PATH="$libdir" "$prefix/example"
lib=$(find "$prefix" -name 'libxlmclient.so.*' | head -n 1)
deps=$(ldd "$lib")
if echo "$deps" | grep -E 'openblas|blas|libmpi|utf8proc|libzip'; then
  echo "install_check: libxlmclient pulls in the engine's or the worker's libraries" >&2; exit 1
fi

cmake --install "$build" --prefix "$prefix" --component tools >/dev/null
for tool in xlm-client xlm-score xlm-infer xlm-tokenize; do
  [ -x "$prefix/bin/$tool" ] || { echo "install_check: no bin/$tool in the tools component" >&2; exit 1; }
  if ldd "$prefix/bin/$tool" | grep 'not found'; then
    echo "install_check: $tool does not resolve its libraries" >&2; exit 1
  fi
done
# The installed tools find libxlmclient by their RPATH.
ldd "$prefix/bin/xlm-score" | grep -q "$prefix/.*libxlmclient" ||
  { echo "install_check: xlm-score does not use the installed libxlmclient" >&2; exit 1; }
"$prefix/bin/xlm-client" infer --help >/dev/null
"$prefix/bin/xlm-score" --help >/dev/null
echo "install_check: ok"
