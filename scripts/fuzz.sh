#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang, ASan + UBSan) in build-fuzz and runs each for
# a bounded time on a copy of its seed corpus (tests/fuzz/corpus/<target>/; the repository is
# not modified). Fails when any target crashes, leaks, times out on one input or breaks one of
# its properties; prints target / execs / exec/s / result.
#
#   scripts/fuzz.sh                 20 s per target, one per core at a time (the test command runs 10 s)
#   scripts/fuzz.sh 600             10 minutes per target
#   scripts/fuzz.sh 60 --only gguf,session_file
#   scripts/fuzz.sh 20 --write-doc  also writes the table into docs/reliability.md
#   scripts/fuzz.sh 60 --all        adds fuzz_engine_requests (requests into a live engine with a
#                                   tiny model; its build takes ~90 s more, so not in the default)
#   scripts/fuzz.sh --seeds         regenerates the seed corpora (make_corpus.py + the targets'
#                                   own seed writers) and exits
#
# Crash inputs are kept in build-fuzz/fuzz-artifacts/<target>/; replay one with
#   build-fuzz/tests/fuzz/fuzz_<target> build-fuzz/fuzz-artifacts/<target>/crash-...
# Environment: PALU_FUZZ_BUILD_DIR (default build-fuzz), PALU_SHARED_DIR (shared/ folder),
# PALU_FUZZ_JOBS (build parallelism, default 2), PALU_FUZZ_PARALLEL (targets run at once, default
# one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_PER_TARGET=20
WRITE_DOC=0
SEEDS=0
ONLY=""
ALL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --write-doc) WRITE_DOC=1 ;;
    --seeds) SEEDS=1 ;;
    --all) ALL=1 ;;
    --only) ONLY="$2"; shift ;;
    --only=*) ONLY="${1#--only=}" ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *[!0-9]*|"") echo "fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    *) SECONDS_PER_TARGET="$1" ;;
  esac
  shift
done

BUILD=${PALU_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
JOBS=${PALU_FUZZ_JOBS:-2}
TARGETS=(safetensors safetensors_index config_json gguf palu_manifest tokenizer_file tokenizer_encode_sp
         tokenizer_encode_bpe frame_decoder json_lines session_file)
if [ $ALL -eq 1 ] || [ $SEEDS -eq 1 ]; then
  TARGETS+=(engine_requests)
fi
if [ -n "$ONLY" ]; then
  IFS=, read -r -a TARGETS <<< "$ONLY"
fi

start=$(date +%s)
if ! command -v clang++ > /dev/null; then
  echo "fuzz.sh: clang++ not found (Debian: apt-get install clang libclang-rt-14-dev libomp-14-dev)" >&2
  exit 1
fi
mkdir -p "$BUILD"
WORK_LOG="$BUILD/fuzz-configure.log"
GENERATOR=()
if [ ! -f "$BUILD/CMakeCache.txt" ] && command -v ninja > /dev/null; then GENERATOR=(-G Ninja); fi
# -O1 and line tables: fast to build, readable stacks.
cmake -S . -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DPALU_FUZZ=ON -DPALU_CUDA=OFF -DPALU_VULKAN=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" "-DCMAKE_C_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" \
  > "$WORK_LOG" 2>&1 || { cat "$WORK_LOG"; exit 1; }
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]/#/fuzz_}"
built=$(date +%s)
echo "fuzz.sh: build took $((built - start)) s"

if [ $SEEDS -eq 1 ]; then
  python3 tests/fuzz/make_corpus.py
  for t in frame_decoder json_lines engine_requests; do
    mkdir -p "tests/fuzz/corpus/$t"
    PALU_FUZZ_WRITE_SEED="tests/fuzz/corpus/$t" "$BUILD/tests/fuzz/fuzz_$t" -runs=0 > /dev/null 2>&1
  done
  mkdir -p tests/fuzz/corpus/session_file
  PALU_FUZZ_WRITE_SEED=tests/fuzz/corpus/session_file/valid_13_tokens \
    "$BUILD/tests/fuzz/fuzz_session_file" -runs=0 > /dev/null 2>&1
  chmod 644 tests/fuzz/corpus/*/*
  du -sh tests/fuzz/corpus
  exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/palu-fuzz-run-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ARTIFACTS="$BUILD/fuzz-artifacts"
# run_target T: one libFuzzer run of target T; writes "T|execs|exec/s|result" to $WORK/T.row.
run_target() {
  local t=$1 bin="$BUILD/tests/fuzz/fuzz_$1" log rc execs speed result artifact
  mkdir -p "$WORK/$t" "$ARTIFACTS/$t"
  cp -r "tests/fuzz/corpus/$t/." "$WORK/$t/"
  log="$ARTIFACTS/$t/last-run.log"
  # -timeout: one input over 10 s is a hang; -rss_limit_mb: a parser that allocates what a header
  # claims fails here. Leaks are reported (ASan's LeakSanitizer) and fail the run.
  set +e
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$bin" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$ARTIFACTS/$t/" "$WORK/$t" > "$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if [ $rc -eq 0 ] && [ -n "$execs" ]; then
    result="ok"
  else
    artifact=$({ grep -o "Test unit written to [^ ]*" "$log" || true; } | tail -1 | sed 's/Test unit written to //')
    result="FAILED (rc $rc${artifact:+, input $artifact}; log $log)"
    grep -E "ERROR|SUMMARY|property violated|terminate|what\(\)" "$log" | head -5 >&2 || true
  fi
  printf '%-22s %12s execs %8s exec/s  %s\n' "$t" "${execs:-?}" "${speed:-?}" "$result"
  echo "$t|${execs:-?}|${speed:-?}|$result" > "$WORK/$t.row"
}
# Targets run PALU_FUZZ_PARALLEL at a time (default: one per core; each fuzzer is one thread).
PARALLEL=${PALU_FUZZ_PARALLEL:-$(nproc)}
for t in "${TARGETS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || true; done
  run_target "$t" &
done
wait
failed=0
rows=()
for t in "${TARGETS[@]}"; do
  row=$(cat "$WORK/$t.row" 2> /dev/null || echo "$t|?|?|FAILED (no result)")
  case "$row" in *"|ok") ;; *) failed=1 ;; esac
  rows+=("$row")
done
end=$(date +%s)

echo
printf '%-22s | %12s | %8s | %s\n' target execs exec/s result
printf '%-22s-+-%12s-+-%8s-+-%s\n' "----------------------" "------------" "--------" "------"
for r in "${rows[@]}"; do
  IFS='|' read -r t e s res <<< "$r"
  printf '%-22s | %12s | %8s | %s\n' "$t" "$e" "$s" "$res"
done
echo "fuzz.sh: ${#TARGETS[@]} targets x ${SECONDS_PER_TARGET} s, $PARALLEL at a time; build $((built - start)) s, total $((end - start)) s"

if [ $WRITE_DOC -eq 1 ]; then
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  table="$WORK/table.md"
  {
    echo "<!-- fuzz-table:begin (written by scripts/fuzz.sh --write-doc) -->"
    echo "Run of \`scripts/fuzz.sh ${SECONDS_PER_TARGET}\` on $(date -u +%Y-%m-%d), $(nproc) cores ($cpu), $PARALLEL targets at a time;"
    echo "build $((built - start)) s, whole script $((end - start)) s."
    echo
    echo "| target | execs | exec/s | result |"
    echo "|---|---:|---:|---|"
    for r in "${rows[@]}"; do
      IFS='|' read -r t e s res <<< "$r"
      echo "| \`fuzz_$t\` | $e | $s | ${res%% (*} |"
    done
    echo "<!-- fuzz-table:end -->"
  } > "$table"
  doc=docs/reliability.md
  if grep -q '<!-- fuzz-table:begin' "$doc" 2> /dev/null; then
    python3 - "$doc" "$table" << 'EOF'
import re, sys
doc, table = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
text = open(doc).read()
text = re.sub(r"<!-- fuzz-table:begin.*?<!-- fuzz-table:end -->", lambda m: table, text, flags=re.S)
open(doc, "w").write(text)
EOF
    echo "fuzz.sh: table written to $doc"
  else
    echo "fuzz.sh: $doc has no <!-- fuzz-table:begin --> marker; table:" >&2
    cat "$table"
  fi
fi
exit $failed
