#!/usr/bin/env bash
# The test command (what .ci/run runs): packages, a Release build with every test
# (unit, integration; GPU tests skip without a GPU; Vulkan on Mesa's lavapipe), ref-gqa's
# perplexity over all of WikiText-2 against transformers (label slow), then the unit and parser
# tests again under AddressSanitizer + UBSan, then every parser's libFuzzer target for 10 s on
# its seed corpus (scripts/fuzz.sh; scripts/tsan.sh runs the daemon's tests under ThreadSanitizer
# separately, ~8 min).
#   scripts/test.sh            the above (22–24 min on 2 cores without AVX-512 from a fresh clone)
#   scripts/test.sh --fast     skip the slow perplexity run, the sanitizer pass and fuzzing
#   scripts/test.sh --full     also ref-mha's whole-WikiText-2 perplexity (+3.5 min) and the
#                              compressor's unit tests under ASan (+3 min)
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=default
case "${1:-}" in
  "") ;;
  --fast) MODE=fast ;;
  --full) MODE=full ;;
  *) echo "test.sh: unknown argument '$1' (use --fast, --full or nothing)" >&2; exit 2 ;;
esac
# One line per finished stage with its wall time, so a CI log shows where the minutes go.
STAGE_START=$SECONDS
stage_done() {
  echo "test.sh: $1 took $((SECONDS - STAGE_START)) s (total $SECONDS s)"
  STAGE_START=$SECONDS
}
scripts/install-deps.sh
stage_done "install-deps"
scripts/build.sh
stage_done "build"
# Tests run two at a time; each uses all cores through OpenMP, so threads wait passively
# instead of spinning against the other test. The slow perplexity runs go alone afterwards.
OMP_WAIT_POLICY=PASSIVE ctest --test-dir build --output-on-failure -j 2 -LE slow
stage_done "tests"
if [ $MODE = fast ]; then
  exit 0
fi
# Both reference models take ~3.5 min each on 2 cores; by default the GQA one (GQA, bfloat16,
# rope_parameters), whose forward shares every kernel with the MHA one. ref-mha's logits and
# 1023-token NLL against transformers are in the default run (GoldenTest.*).
SLOW_FILTER=(-R RefGqa)
[ $MODE = full ] && SLOW_FILTER=()
ctest --test-dir build --output-on-failure -L slow "${SLOW_FILTER[@]}" --timeout 1500
stage_done "slow perplexity tests"
# Without Vulkan: Mesa's lavapipe leaks 128 bytes in its one-time set-up (vkEnumeratePhysicalDevices),
# from frames LeakSanitizer cannot name once the loader has unloaded the driver, so no suppression
# can match them. The unit tests built here do not use a Vulkan device (vulkan_tests is not one
# of them); the registry then reports "vulkan: not compiled in".
# -O1 with line tables only (as the fuzz build): readable stacks at about half the compile time
# of -O2 -g for the Eigen-heavy compressor sources.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPALU_ASAN=ON -DPALU_CUDA=OFF -DPALU_VULKAN=OFF \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -g1"
# Only the unit-test executables (parsers, kernels, cache, protocol, daemon); ctest -L unit
# leaves out the tests of executables not built here. The compressor's math (Eigen-heavy: a third
# of this build) only with --full; the files it reads go through model_unit_tests' parsers.
ASAN_TARGETS=(base_unit_tests cpu_unit_tests model_unit_tests cache_unit_tests proto_unit_tests daemon_unit_tests)
[ $MODE = full ] && ASAN_TARGETS+=(compress_unit_tests)
cmake --build build-asan -j "$(nproc)" --target "${ASAN_TARGETS[@]}"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 OMP_WAIT_POLICY=PASSIVE \
  ctest --test-dir build-asan --output-on-failure -j 2 -L unit
stage_done "ASan+UBSan build and unit tests"
# Fuzz step: every parser's libFuzzer target for 10 s (clang; two at a time; 168 s on 2 cores with the build).
scripts/fuzz.sh 10
stage_done "fuzzing"
