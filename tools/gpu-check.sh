#!/usr/bin/env bash
# One call on the GPU machine: configure with CUDA required, build, run the gpu-labelled
# tests and the CPU golden tests, print the device list. Writes logs under $OUT when set.
#   tools/gpu-check.sh
# Needs ../shared or PALU_SHARED_DIR (on the device machine: the carried .carry/shared).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/palu-gpu-check}"
mkdir -p "$OUT"
if [ -z "${PALU_SHARED_DIR:-}" ] && [ -d .carry/shared ]; then export PALU_SHARED_DIR="$PWD/.carry/shared"; fi
EXTRA=()
# The GPU machine has no Debian nlohmann/CLI11 packages: use carried headers when present.
if [ -d .carry/include ]; then EXTRA+=("-DCMAKE_INCLUDE_PATH=$PWD/.carry/include"); fi
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DPALU_CUDA=ON -DPALU_VULKAN=OFF -DPALU_ONEDNN=AUTO \
  -DCMAKE_CUDA_ARCHITECTURES=90 "${EXTRA[@]}" 2>&1 | tee "$OUT/configure.log" | tail -12
cmake --build build-gpu -j "$(nproc)" 2>&1 | tail -5
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
ctest --test-dir build-gpu --output-on-failure -L gpu 2>&1 | tee "$OUT/gpu-tests.log" | tail -15
ctest --test-dir build-gpu --output-on-failure -LE slow -R 'RefMha|Registry' 2>&1 | tee "$OUT/golden.log" | tail -8
