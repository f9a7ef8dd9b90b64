#!/usr/bin/env bash
# One call on the GPU machine: configure with CUDA required, build, run the gpu-labelled
# tests and the CPU golden tests (ref-mha), print the device list. Logs go under $OUT.
#   tools/gpu-check.sh [--no-tests]
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
cmake --build build-gpu -j "$(nproc)" >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -20; exit 1; }
echo "build ok"
[ "${1:-}" = "--no-tests" ] && exit 0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
ctest --test-dir build-gpu --output-on-failure -L gpu 2>&1 | tee "$OUT/gpu-tests.log" | tail -8
ctest --test-dir build-gpu --output-on-failure -LE slow -R 'RefMha|Registry' 2>&1 | tee "$OUT/golden.log" | tail -8
