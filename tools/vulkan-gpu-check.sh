#!/usr/bin/env bash
# The Vulkan backend on the GPU machine, in one call, from binaries built here (the machine has
# no Vulkan headers, loader or glslc). Build them with oneDNN off (not on the machine):
#   cmake -S . -B build-vkdev -G Ninja -DCMAKE_BUILD_TYPE=Release -DPALU_CUDA=OFF -DPALU_VULKAN=ON -DPALU_ONEDNN=OFF
#   cmake --build build-vkdev --target vulkan_tests device_model_tests palu-perplexity palu-compress palu-vulkan-attention-bench
# then copy the five binaries (stripped) and CMakeCache.txt to build-vkrun, and Debian's
# libsentencepiece.so.0 to build-vkrun/lib: the GPU machine's image has a libsentencepiece.so.0
# of another version with the same soname, and loading a tokenizer through it crashes
# (SIGSEGV in SentencePieceProcessor::Normalize, a null call); the whole build tree
# does not fit the carry limit next to the data) and carry build-vkrun, .carry/shared (ref-mha with a trimmed golden file, WikiText-2) and .gl
# (Debian's libvulkan1 and the GL/EGL dispatch libraries, see the device README). Runs the
# Vulkan tests (those on ref-gqa filtered out: its files are not carried), the DeviceModel contract
# test, palu-perplexity --backend vulkan vs cpu, and the decode-attention bench; logs under $OUT.
#   tools/vulkan-gpu-check.sh [BUILD_DIR]     (default build-vkrun)
# Environment: T_TESTS (s per test binary, 300), BENCH_ARGS (the bench's flags), T_BENCH (s, 300).
# ref-gqa and the compressed-model tests: the carry limit holds one model, so carry a folder
# with models/ref-gqa (golden.safetensors trimmed to 2 rows of long.logits_last64) and
# data/{calib.txt,wikitext-2} instead of .carry/shared, then
#   SETUP_ONLY=1 source tools/vulkan-gpu-check.sh; export PALU_SHARED_DIR=$PWD/<that>/shared
#   build-vkrun/tests/vulkan_tests --gtest_filter='-*mha*'
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
B="${1:-build-vkrun}"
OUT="${OUT:-/tmp/palu-vk-check}"
mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -z "$(ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null | grep -i nvidia)" ] && \
   [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
# The binaries name their source and build directories (test data, palu-compress) by the
# absolute paths of the machine that built them.
SRC_AT=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$B/CMakeCache.txt")
if [ -n "$SRC_AT" ] && [ "$SRC_AT" != "$PWD" ] && [ ! -e "$SRC_AT" ]; then
  mkdir -p "$(dirname "$SRC_AT")" && ln -s "$PWD" "$SRC_AT"
fi
# Tests run palu-compress from the build directory they were built in.
BIN_AT=$(sed -n 's/^CMAKE_CACHEFILE_DIR:INTERNAL=//p' "$B/CMakeCache.txt")
if [ -n "$BIN_AT" ] && [ ! -e "$BIN_AT" ]; then ln -s "$PWD/$B" "$BIN_AT"; fi
export PALU_SHARED_DIR="$PWD/.carry/shared"
[ -d "$B/lib" ] && export LD_LIBRARY_PATH="$PWD/$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
SH_AT="$(dirname "$SRC_AT")/shared"
[ -e "$SH_AT" ] || [ -L "$SH_AT" ] || ln -s "$PALU_SHARED_DIR" "$SH_AT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# SETUP_ONLY=1 with `source`: the environment above, for commands of one's own (bisecting).
if [ -n "${SETUP_ONLY:-}" ]; then return 0 2>/dev/null || exit 0; fi
# Every step under `timeout`, so a hang costs minutes, not the whole call. Contexts also bound
# their own fence waits (PALU_VULKAN_TIMEOUT_MS, 30 s on GPUs).
T_TESTS="${T_TESTS:-300}"
echo "== vulkan_tests"
timeout "$T_TESTS" "$B/tests/vulkan_tests" \
  --gtest_filter='-*gqa*:*Gqa*:*GQA_model*:VulkanModel.F16WeightsGolden:VulkanModel.OutOfDeviceMemory*:VulkanModel.UnsupportedOptions*' >"$OUT/vulkan-tests.log" 2>&1
echo "rc=$?"; grep -E "^\[ *(PASSED|FAILED|SKIPPED) |Failure|^\[vulkan\]" "$OUT/vulkan-tests.log" | head -40
echo "== device_model_tests"
timeout "$T_TESTS" "$B/tests/device_model_tests" --gtest_filter='*vulkan_ref_mha*:*cpu_ref_mha*:DeviceModels.*:-*GreedyContinuation*' >"$OUT/device-tests.log" 2>&1
rc=$?
echo "rc=$rc"; grep -E "^\[ *(PASSED|FAILED|SKIPPED) |Failure|\[device\]" "$OUT/device-tests.log" | head -20
if [ "$rc" -ge 128 ] && command -v cuda-gdb >/dev/null; then
  # A crash: where, with the Vulkan calls traced up to it.
  PALU_VULKAN_TRACE=1 timeout 180 cuda-gdb -q -batch -ex run -ex bt --args "$B/tests/device_model_tests" \
    --gtest_filter='*GoldenLogits*vulkan_ref_mha*' >"$OUT/device-gdb.log" 2>&1
  grep -E "^\[vulkan\]" "$OUT/device-gdb.log" | tail -5; grep -E "^#|signal" "$OUT/device-gdb.log" | head -25
fi
echo "== palu-perplexity, ref-mha, ctx 512, 8 windows"
for be in cpu vulkan; do
  timeout 240 "$B/tools/palu-perplexity" -q --json --model "$PALU_SHARED_DIR/models/ref-mha" \
    --file "$PALU_SHARED_DIR/data/wikitext-2/wiki.test.raw" --ctx 512 --max-windows 8 --backend $be 2>&1 | tail -1 |
    tee -a "$OUT/ppl.log"
done
echo "== decode-attention bench"
BENCH_ARGS="${BENCH_ARGS:---contexts 4096,16384,65536,131072 --reps 20 --runs 5}"
# shellcheck disable=SC2086
timeout "${T_BENCH:-300}" "$B/tools/palu-vulkan-attention-bench" $BENCH_ARGS 2>&1 | tee "$OUT/vk-bench.md"
