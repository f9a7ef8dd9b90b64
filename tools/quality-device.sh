#!/usr/bin/env bash
# docs/perf/quality.md on a bigger machine (the GPU machine's CPU cores; no GPU is used): one
# call configures a CPU-only build, builds palu-compress and palu-perplexity, prints the CPU and
# runs scripts/quality.sh for one model until a deadline. Rows accumulate in
# build-qa-dev/quality-MODEL.md, so repeated calls on a warm machine continue the table.
#   tools/quality-device.sh CARRY_DIR MODEL_NAME [DEADLINE_S]
# CARRY_DIR holds sys/ (the sysroot of tools/gpu-check.sh: Eigen, nlohmann/json, CLI11, PCRE2,
# xxHash) and shared/{models/MODEL_NAME, data/calib.txt, data/wikitext-2/wiki.test.raw};
# data/calib.txt may be a prefix of ../shared/data/calib.txt holding at least 64 × 1024
# tokens (calibration reads the file in order, so the samples are the same).
# CARRY_DIR/quality-MODEL.md, when present and the table here is not, seeds the table (a run
# that continues on a fresh machine). DEADLINE_S (default 570) bounds the whole call; rows in
# progress when it passes are dropped and redone by the next call. Results go to $OUT.
# JOBS, THREADS and LIMIT pass through to scripts/quality.sh (compressed models do not outlive a
# call: each call compresses what its rows need, so LIMIT keeps a call inside its time).
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
CARRY="$1"
NAME="$2"
DEADLINE="${3:-570}"
OUT="${OUT:-/tmp/palu-quality}"
mkdir -p "$OUT"
BUILD=build-qa-dev
# One fixed sysroot path, so the CMake cache stays valid whichever carry folder brought it.
S=/opt/palu-sys
if [ ! -d "$S/include" ]; then mkdir -p "$S" && cp -a "$CARRY/sys/." "$S/"; fi
mkdir -p "$S/lib/pkgconfig"
printf 'Name: libxxhash\nDescription: xxHash\nVersion: 0.8.1\nCflags: -I%s/include\nLibs: -L%s/lib -lxxhash\n' "$S" "$S" >"$S/lib/pkgconfig/libxxhash.pc"
printf 'Name: libpcre2-8\nDescription: PCRE2\nVersion: 10.42\nCflags: -I%s/include\nLibs: -L%s/lib -lpcre2-8\n' "$S" "$S" >"$S/lib/pkgconfig/libpcre2-8.pc"
export PKG_CONFIG_PATH="$S/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"

{ date -u '+%Y-%m-%d %H:%M UTC'; lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|L3)'; nproc; } | tee "$OUT/machine.txt"
# -I: header-only uses of the sysroot (XXH_INLINE_ALL xxhash.h) outside the targets that find it.
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPALU_CUDA=OFF -DPALU_VULKAN=OFF -DPALU_BUILD_TESTS=OFF \
  "-DCMAKE_INCLUDE_PATH=$S/include" "-DCMAKE_CXX_FLAGS=-I$S/include" >"$OUT/configure.log" 2>&1 ||
  { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" --target palu-compress palu-perplexity >"$OUT/build.log" 2>&1 ||
  { grep -E "error|Error" "$OUT/build.log" | head -20; exit 1; }
echo "build ok after $((SECONDS - T0)) s"

TABLE="$PWD/$BUILD/quality-$NAME.md"
if [ ! -f "$TABLE" ] && [ -f "$CARRY/quality-$NAME.md" ]; then cp "$CARRY/quality-$NAME.md" "$TABLE"; fi
# Processes of 2 threads, one per 2 cores: on ref-mha one palu-perplexity scales poorly past a
# few threads (16 windows: 30.6 s at 1 thread, 16.7 s at 2, 9.2 s at 16), while 8 processes of
# 2 threads each run 8 × 16 windows in 21 s, 3× the throughput of one 16-thread process.
export THREADS="${THREADS:-2}"
export JOBS="${JOBS:-$(( $(nproc) / THREADS ))}"
export PALU_BUILD="$BUILD" PALU_SHARED_DIR="$PWD/$CARRY/shared" WORK="$PWD/$BUILD/quality-work-$NAME"
LEFT=$((DEADLINE - (SECONDS - T0)))
rc=0
if [ "$LEFT" -gt 30 ]; then
  timeout -k 5 "$LEFT" scripts/quality.sh "$PWD/$CARRY/shared/models/$NAME" "$TABLE" 2>"$OUT/quality-$NAME.err" || rc=$?
else
  rc=124
fi
cp "$TABLE" "$OUT/" 2>/dev/null || true
# palu-compress's own summary of every compressed model made so far (ratio, time, peak RSS).
for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "== $(basename "$f")"; grep -E "^(ratio|KV cache|time)" "$f"; }; done \
  >"$OUT/compress-$NAME.txt" 2>/dev/null || true
cat "$TABLE" 2>/dev/null || true
[ $rc -eq 124 ] || [ $rc -eq 137 ] && echo "quality.sh: deadline reached, rerun to continue" && exit 0
[ $rc -eq 0 ] && echo "quality.sh: done for $NAME (with LIMIT set, rows may be left for a later call)" || { cat "$OUT/quality-$NAME.err"; exit $rc; }
