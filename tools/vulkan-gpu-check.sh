#!/usr/bin/env bash
# The Vulkan backend on the GPU machine, in one call, from binaries built here (the machine has
# no Vulkan headers, loader or glslc). Build them with oneDNN off (not on the machine):
#   cmake -S . -B build-vkdev -G Ninja -DCMAKE_BUILD_TYPE=Release -DPALU_CUDA=OFF -DPALU_VULKAN=ON -DPALU_ONEDNN=OFF
#   cmake --build build-vkdev --target vulkan_tests device_model_tests palu-perplexity palu-compress palu-vulkan-attention-bench
# then copy the five binaries and CMakeCache.txt, stripped, to build-vkrun (the whole build tree
# does not fit the carry limit next to the data) and carry build-vkrun, .carry/shared (ref-mha with a trimmed golden file, WikiText-2) and .gl
# (Debian's libvulkan1 and the GL/EGL dispatch libraries, see the device README). Runs the
# Vulkan tests (ref-gqa ones filtered out: its files are not carried), the DeviceModel contract
# test, palu-perplexity --backend vulkan vs cpu, and the decode-attention bench; logs under $OUT.
#   tools/vulkan-gpu-check.sh [BUILD_DIR]     (default build-vkrun)
set -uo pipefail
cd "$(dirname "$0")/.."
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
SH_AT="$(dirname "$SRC_AT")/shared"
[ -e "$SH_AT" ] || ln -s "$PALU_SHARED_DIR" "$SH_AT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== vulkan_tests"
"$B/tests/vulkan_tests" --gtest_filter='-*gqa*:*Gqa*:*GQA_model*' >"$OUT/vulkan-tests.log" 2>&1
echo "rc=$?"; grep -E "^\[ *(PASSED|FAILED|SKIPPED) |Failure|device" "$OUT/vulkan-tests.log" | head -40
echo "== device_model_tests"
"$B/tests/device_model_tests" --gtest_filter='*vulkan_ref_mha*:DeviceModels.*' >"$OUT/device-tests.log" 2>&1
echo "rc=$?"; grep -E "^\[ *(PASSED|FAILED|SKIPPED) |Failure|\[device\]" "$OUT/device-tests.log" | head -20
echo "== palu-perplexity, ref-mha, ctx 512, 8 windows"
for be in cpu vulkan; do
  "$B/tools/palu-perplexity" -q --json --model "$PALU_SHARED_DIR/models/ref-mha" \
    --file "$PALU_SHARED_DIR/data/wikitext-2/wiki.test.raw" --ctx 512 --max-windows 8 --backend $be 2>&1 | tail -1 |
    tee -a "$OUT/ppl.log"
done
echo "== decode-attention bench"
"$B/tools/palu-vulkan-attention-bench" --contexts 4096,16384,65536,131072 --reps 20 --runs 5 2>&1 | tee "$OUT/vk-bench.md"
