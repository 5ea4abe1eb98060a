#!/bin/sh
# Installs the client component of BUILD_DIR into a fresh prefix, builds
# EXAMPLE.c against it with pkg-config only, and runs it.
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
[ -x "$prefix/bin/xlm-client" ] || { echo "install_check: no bin/xlm-client" >&2; exit 1; }
[ -f "$prefix/share/xlmserve/xlm.proto" ] || { echo "install_check: no share/xlmserve/xlm.proto" >&2; exit 1; }
export PKG_CONFIG_PATH="$(dirname "$pc")"
cflags=$(pkg-config --cflags xlmclient)
libs=$(pkg-config --libs xlmclient)
libdir=$(pkg-config --variable=libdir xlmclient)
echo "install_check: cflags '$cflags' libs '$libs'"
${CC:-cc} -std=c11 -Wall -Wextra -Werror $cflags "$example" -o "$prefix/example" $libs
LD_LIBRARY_PATH="$libdir" "$prefix/example"
# The installed tool finds its library by its RPATH.
"$prefix/bin/xlm-client" infer --help >/dev/null
echo "install_check: ok"
