#!/usr/bin/env bash
# docs/sdk.md's example against a real palud: as built in the tree, then from an installed SDK
# (cmake --install into a temporary prefix) through pkg-config (shared and static) and through
# find_package(palu). Each run continues the same conversation, so its context grows.
#   example_test.sh BUILD_DIR PALUD MODEL_DIR EXAMPLE_BIN EXAMPLE_SRC CC CMAKE
set -euo pipefail
BUILD=$1 PALUD=$2 MODEL=$3 EXAMPLE=$4 SRC=$5 CC=$6 CMAKE=$7
T=$(mktemp -d /tmp/palu-example-XXXXXX)
cleanup() { [ -n "${PID:-}" ] && kill -9 "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$T/palud.log" ] && tail -20 "$T/palud.log" >&2; exit 1; }

# No daemon yet: a clear error and exit 3.
set +e
PALU_SOCKET="$T/run/palud.sock" "$EXAMPLE" hi >"$T/out" 2>"$T/err"; rc=$?
set -e
[ $rc -eq 3 ] || fail "without palud the example exited $rc, expected 3"
grep -q "PALU_ECONNECT" "$T/err" || fail "no PALU_ECONNECT in: $(cat "$T/err")"

"$PALUD" --socket "$T/run/palud.sock" --state-dir "$T/state" --disk-dir "$T/spill" --model "$MODEL" \
  --host-budget 64MiB --threads 2 >"$T/palud.log" 2>&1 &
PID=$!
for _ in $(seq 600); do [ -S "$T/run/palud.sock" ] && break; sleep 0.1; done
export PALU_SOCKET="$T/run/palud.sock"

last=0
run_example() {  # $1: binary
  "$1" "Tell me about latents." >"$T/out" 2>"$T/err" || fail "$1 failed: $(cat "$T/err")"
  local n
  n=$(sed -n 's/^\[\([0-9]*\) tokens of context.*/\1/p' "$T/err")
  [ -n "$n" ] || fail "$1 printed no status line: $(cat "$T/err")"
  [ "$n" -gt "$last" ] || fail "$1: context $n did not grow past $last (the conversation did not continue)"
  echo "$1: context $n tokens"
  last=$n
}
run_example "$EXAMPLE"
run_example "$EXAMPLE"

# Installed SDK.
"$CMAKE" --install "$BUILD" --prefix "$T/prefix" >/dev/null
PC=$(dirname "$(find "$T/prefix" -name palu.pc | head -1)")
export PKG_CONFIG_PATH="$PC"
"$CC" -std=c11 -Wall -Wextra -Werror "$SRC" -o "$T/ex-pc" $(pkg-config --cflags --libs palu) \
  -Wl,-rpath,"$(pkg-config --variable=libdir palu)" || fail "pkg-config build"
run_example "$T/ex-pc"
"$CC" -std=c11 "$SRC" -o "$T/ex-static" $(pkg-config --cflags palu) "$(pkg-config --variable=libdir palu)/libpalu.a" \
  $(pkg-config --libs-only-l --static palu | sed 's/-lpalu //') || fail "static pkg-config build"
if ldd "$T/ex-static" | grep -q libpalu; then fail "the static build links libpalu.so"; fi
run_example "$T/ex-static"
mkdir -p "$T/cm"
cp "$SRC" "$T/cm/notes.c"
cat >"$T/cm/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.20)
project(notes C)
find_package(palu 0.1 REQUIRED)
add_executable(notes notes.c)
target_link_libraries(notes PRIVATE palu::palu)
add_executable(notes_static notes.c)
target_link_libraries(notes_static PRIVATE palu::palu_static)
CM
"$CMAKE" -S "$T/cm" -B "$T/cm/build" -DCMAKE_PREFIX_PATH="$T/prefix" -DCMAKE_C_COMPILER="$CC" >/dev/null \
  || fail "find_package(palu) configure"
"$CMAKE" --build "$T/cm/build" >/dev/null || fail "find_package(palu) build"
run_example "$T/cm/build/notes"
run_example "$T/cm/build/notes_static"
echo "example: all builds ran; the conversation reached $last tokens"
