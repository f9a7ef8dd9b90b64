#!/usr/bin/env bash
# One call on the GPU machine: configure with CUDA required, build, run the gpu-labelled
# tests, the CPU golden tests (ref-mha) and the decode-attention benchmark
# (scripts/cuda-bench.sh → docs/perf/cuda.md, copied to $OUT). Logs go under $OUT.
#   tools/gpu-check.sh [--no-tests] [--no-bench] [--quick]
#   --quick: build only the CUDA targets (cuda_tests, palu-cuda-attention-bench), skip golden tests
# The GPU machine lacks some Debian -dev packages; a carried sysroot (.carry/sys: headers of
# Eigen, nlohmann/json, CLI11, PCRE2, xxHash and their static libraries) fills in, and
# .carry/shared holds the test data (see docs/perf/README.md for how it is made).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/palu-gpu-check}"
mkdir -p "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
if [ -z "${PALU_SHARED_DIR:-}" ] && [ -d .carry/shared ]; then export PALU_SHARED_DIR="$PWD/.carry/shared"; fi
EXTRA=()
if [ -d .carry/sys ]; then
  S="$PWD/.carry/sys"
  mkdir -p "$S/lib/pkgconfig"
  printf 'Name: libxxhash\nDescription: xxHash\nVersion: 0.8.1\nCflags: -I%s/include\nLibs: -L%s/lib -lxxhash\n' "$S" "$S" >"$S/lib/pkgconfig/libxxhash.pc"
  printf 'Name: libpcre2-8\nDescription: PCRE2\nVersion: 10.42\nCflags: -I%s/include\nLibs: -L%s/lib -lpcre2-8\n' "$S" "$S" >"$S/lib/pkgconfig/libpcre2-8.pc"
  export PKG_CONFIG_PATH="$S/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  EXTRA+=("-DCMAKE_INCLUDE_PATH=$S/include")
fi
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DPALU_CUDA=ON -DPALU_VULKAN=OFF -DPALU_ONEDNN=AUTO \
  -DCMAKE_CUDA_ARCHITECTURES=90 "${EXTRA[@]}" >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
grep -A9 "configuration summary" "$OUT/configure.log"
TESTS=1 BENCH=1 QUICK=0
for a in "$@"; do
  case "$a" in
    --no-tests) TESTS=0 ;;
    --no-bench) BENCH=0 ;;
    --quick) QUICK=1 ;;
    *) echo "usage: tools/gpu-check.sh [--no-tests] [--no-bench] [--quick]" >&2; exit 2 ;;
  esac
done
TARGETS=()
[ "$QUICK" = 1 ] && TARGETS=(--target cuda_tests palu-cuda-attention-bench)
cmake --build build-gpu -j "$(nproc)" "${TARGETS[@]}" >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -20; exit 1; }
echo "build ok"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
if [ "$TESTS" = 1 ]; then
  # The gtest binary directly (ctest discovery needs every target built); verbose per-case errors.
  build-gpu/tests/cuda_tests 2>&1 | tee "$OUT/gpu-tests.log" | grep -E "^\[(latent|full)\]|FAILED|PASSED|SKIPPED|Failure|error" | head -80 || true
  if [ "$QUICK" = 0 ]; then
    ctest --test-dir build-gpu --output-on-failure -L gpu 2>&1 | tail -4
    ctest --test-dir build-gpu --output-on-failure -LE slow -R 'RefMha|Registry' 2>&1 | tee "$OUT/golden.log" | tail -8
  fi
fi
if [ "$BENCH" = 1 ]; then
  OUT="$OUT" scripts/cuda-bench.sh build-gpu 2>&1 | tail -60
fi
