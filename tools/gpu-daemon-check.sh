#!/usr/bin/env bash
# palud's GPU tier on the GPU machine, in one call: builds palud, palu-generate, palu-compress and
# the three test binaries in build-gpu, then runs the CUDA sequences' export / import tests
# (cuda_tests, device_model_tests; the move time through pinned and through pageable memory) and the daemon's GPU-tier integration test (eight sessions
# over 3× the GPU budget, token-identical to palu-generate --backend cuda). Logs under $OUT.
# Carry [".carry/sys", ".carry/shared"] (tools/gpu-check.sh explains them).
# build-gpu stays on the machine between calls, and its object files can be newer than the
# carried sources (another call built them from an older tree, or the clocks differ): touch the
# files you changed first, e.g. `touch backends/cuda/cuda_model.cc && tools/gpu-daemon-check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/palu-gpu-daemon-check}"
mkdir -p "$OUT"
source tools/gpu-env.sh
palu_gpu_configure "$OUT"
cmake --build build-gpu -j "$(nproc)" --target palud palu-generate palu-compress cuda_tests device_model_tests \
  daemon_integration_tests >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -20; exit 1; }
echo "build ok"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
run() {  # name, command...: to a file first (no SIGPIPE), then the summary lines
  local name="$1"; shift
  timeout 300 "$@" >"$OUT/$name.log" 2>&1 || true
  grep -E "^\[(export/import|gpu tier|device)\]|OK \]|FAILED|SKIPPED|Failure|Expected|Which is|Actual" "$OUT/$name.log" | head -40 || true
}
run cuda-export build-gpu/tests/cuda_tests --gtest_filter='*ExportImport*:*MoveTime*'
run cuda-move-pageable env PALU_CUDA_PAGEABLE_MOVES=1 build-gpu/tests/cuda_tests --gtest_filter='*MoveTime*'
run device-export build-gpu/tests/device_model_tests --gtest_filter='*ExportImport*'
run daemon-gpu build-gpu/tests/daemon_integration_tests --gtest_filter='*GpuTier*:*EightSessions*'
