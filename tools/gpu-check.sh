#!/usr/bin/env bash
# One call on the GPU machine: configure with CUDA required, build, run the gpu-labelled
# tests, the CPU golden tests (ref-mha) and the decode-attention benchmark
# (scripts/cuda-bench.sh → docs/perf/cuda.md, copied to $OUT). Logs go under $OUT.
#   tools/gpu-check.sh [--no-tests] [--no-bench] [--quick] [--filter GTEST_FILTER] [--ppl [N]] [--model-bench]
#   --attention: build only cuda_tests and palu-cuda-attention-bench (kernel iterations), skip golden tests
#   --quick: build only the CUDA targets (cuda_tests, the CUDA benches, palu-compress, palu-perplexity),
#            skip golden tests
#   --filter F: run only these cuda_tests cases
#   --ppl [N]: palu-perplexity --backend cuda vs --backend cpu on ref-mha (WikiText-2, ctx 512, N windows,
#            default 40): uncompressed, and compressed (palu-compress ratio 0.5, group 4) with f16 and q4 latents
#   --ppl-only "latent f16,latent q4": only these of the --ppl configurations
#   --model-bench: end-to-end decode tokens/s of the whole model (scripts/cuda-bench.sh --model)
# The GPU machine lacks some Debian -dev packages; a carried sysroot (.carry/sys: headers of
# Eigen, nlohmann/json, CLI11, PCRE2, xxHash and their static libraries) fills in, and
# .carry/shared holds the test data (see docs/perf/README.md for how it is made). Carry
# [".carry/sys", ".carry/shared"] (.carry also holds other runs' folders; all of it is over the
# 64 MiB limit). For ref-gqa: carry [".carry/syslite", ".carry/cgqa"] (the sysroot without
# Eigen's unsupported/ headers, and shared/models/ref-gqa), `ln -sfn syslite .carry/sys` and
# PALU_SHARED_DIR=$PWD/.carry/cgqa/shared first (docs/perf/cuda.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/palu-gpu-check}"
mkdir -p "$OUT"
source tools/gpu-env.sh
palu_gpu_configure "$OUT" || exit 1
grep -A9 "configuration summary" "$OUT/configure.log"
TESTS=1 BENCH=1 QUICK=0 FILTER="*" PPL=0 MODEL_BENCH=0 PPL_ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-tests) TESTS=0 ;;
    --no-bench) BENCH=0 ;;
    --quick) QUICK=1 ;;
    --attention) QUICK=2 ;;
    --filter) FILTER="$2"; shift ;;
    --ppl) PPL=40; if [[ "${2:-}" =~ ^[0-9]+$ ]]; then PPL="$2"; shift; fi ;;
    --model-bench) MODEL_BENCH=1 ;;
    --ppl-only) PPL_ONLY="$2"; shift ;;
    *) echo "usage: tools/gpu-check.sh [--no-tests] [--no-bench] [--quick | --attention] [--filter F] [--ppl [N]] [--model-bench]" >&2; exit 2 ;;
  esac
  shift
done
TARGETS=()
[ "$QUICK" = 1 ] && TARGETS=(--target cuda_tests palu-cuda-attention-bench palu-cuda-model-bench palu-compress palu-perplexity)
[ "$QUICK" = 2 ] && TARGETS=(--target cuda_tests palu-cuda-attention-bench)
cmake --build build-gpu -j "$(nproc)" "${TARGETS[@]}" >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -20; exit 1; }
echo "build ok"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
if [ "$TESTS" = 1 ]; then
  # The gtest binary directly (ctest discovery needs every target built); verbose per-case errors.
  # (to a file first: a reader that stops early must not kill the tests with SIGPIPE)
  build-gpu/tests/cuda_tests --gtest_filter="$FILTER" >"$OUT/gpu-tests.log" 2>&1 || true
  grep -E "^\[(latent|full|model)\]|FAILED|PASSED|SKIPPED|Failure|error|Expected|Which is|actual" "$OUT/gpu-tests.log" \
    | head -120 || true
  if [ "$QUICK" = 0 ]; then
    ctest --test-dir build-gpu --output-on-failure -L gpu 2>&1 | tail -4
    ctest --test-dir build-gpu --output-on-failure -LE slow -R 'RefMha|Registry' 2>&1 | tee "$OUT/golden.log" | tail -8
  fi
fi
if [ "$PPL" != 0 ]; then
  # GPU vs CPU perplexity (issue 5 must-show 1: within 0.1%), logged to $OUT/ppl.log.
  SH="${PALU_SHARED_DIR:-../shared}"
  PP=(build-gpu/tools/palu-perplexity --file "$SH/data/wikitext-2/wiki.test.raw" --ctx 512 --max-windows "$PPL" --json)
  CMP="$OUT/ref-mha-palu50"
  rm -rf "$CMP"
  build-gpu/tools/palu-compress -q --model "$SH/models/ref-mha" --calib "$SH/data/calib.txt" --calib-samples 8 \
    --calib-seq 256 --ratio 0.5 --group-size 4 --search uniform --out "$CMP" >"$OUT/compress.log" 2>&1 \
    || { echo "palu-compress failed"; tail -5 "$OUT/compress.log"; }
  for cfg in "uncompressed|$SH/models/ref-mha|" "latent f16|$CMP|" "latent q4|$CMP|--kv-bits 4"; do
    IFS='|' read -r name model extra <<<"$cfg"
    if [ -n "$PPL_ONLY" ] && [[ ",$PPL_ONLY," != *",$name,"* ]]; then continue; fi
    for be in cpu cuda; do
      # shellcheck disable=SC2086
      line=$("${PP[@]}" --model "$model" --backend "$be" $extra 2>>"$OUT/ppl.err" | tail -1)
      echo "$name $be $line" | tee -a "$OUT/ppl.log"
    done
  done
  rm -rf "$CMP"
fi
if [ "$MODEL_BENCH" = 1 ]; then
  OUT="$OUT" scripts/cuda-bench.sh --model build-gpu 2>&1 | tail -30
fi
if [ "$BENCH" = 1 ]; then
  OUT="$OUT" scripts/cuda-bench.sh build-gpu 2>&1 | tail -60
fi
