#!/usr/bin/env bash
# Installs a built dynmoe into a fresh prefix (cmake --install) and builds
# docs/example.c against that tree two ways, as a C user would:
#   1. find_package(dynmoe) -> dynmoe::dynmoe   (tests/install/CMakeLists.txt)
#   2. cc docs/example.c $(pkg-config --cflags --libs dynmoe)
# then runs both. The source tree's include/ is not on any include path, so
# the header must come from the prefix. Usage: run.sh BUILD_DIR (ctest passes it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=$(cd "${1:?usage: run.sh BUILD_DIR}" && pwd)
work=$(mktemp -d "$build/install-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(ls -d "$prefix"/lib* | head -1)
test -f "$prefix/include/dynmoe.h"
test -f "$libdir/cmake/dynmoe/dynmoeConfig.cmake"
test -f "$libdir/pkgconfig/dynmoe.pc"

echo "install: find_package(dynmoe) -> dynmoe::dynmoe"
cmake -S "$here" -B "$work/cmake" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/cmake" >/dev/null
LD_LIBRARY_PATH=$libdir "$work/cmake/example_cmake" > "$work/cmake.out"

echo "install: pkg-config --cflags --libs dynmoe"
flags=$(PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config --cflags --libs dynmoe)
case "$flags" in *"$root/include"*) echo "pkg-config points into the source tree: $flags"; exit 1 ;; esac
cc -std=c11 -Wall -Wextra -Werror -o "$work/example_pc" "$root/docs/example.c" $flags -Wl,-rpath,"$libdir"
"$work/example_pc" > "$work/pc.out"

cmp "$work/cmake.out" "$work/pc.out"
test -s "$work/pc.out"
echo "install: both consumers built and ran, same output ($(wc -l < "$work/pc.out") lines)"
