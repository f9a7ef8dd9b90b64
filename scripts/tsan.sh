#!/usr/bin/env bash
# ThreadSanitizer pass over the daemon: builds palud and the daemon's tests (daemon_unit_tests:
# server, engine faults, session files, file system; daemon_integration_tests: a real palud on a
# real socket, with palu-generate for the reference ids) in build-tsan with -DPALU_TSAN=ON and
# runs them. Any data race, lock-order inversion or use of a destroyed mutex fails the run.
#
#   scripts/tsan.sh                 everything (docs/reliability.md has the time it takes)
#   scripts/tsan.sh --repeat 5      run each test executable 5 times (races that need luck)
#   scripts/tsan.sh --filter 'ServerTest.*:EngineFaultTest.*'   a gtest filter
#
# The OpenMP runtime (libgomp, also under oneDNN) is not built with TSan: its barriers are
# invisible, so every parallel region of the kernels would show up as a race.
# scripts/tsan-suppressions.txt silences the region bodies and those libraries (history_size=7
# keeps the stacks the matching needs); the daemon's own threads (I/O threads, the engine thread,
# clients, palud's signal watcher) are what this pass checks. (OMP_THREAD_LIMIT=1 would avoid
# the regions instead, but then palud's greedy tokens differ from palu-generate's and
# DaemonTest.EightSessionsOverThreeTimesTheHostBudgetAllComplete fails, in any build.)
#
# Reports also go to files: the integration tests run palud as a child process whose output
# lands in a temp dir the test removes; a race there makes palud exit with 66 (the test fails)
# and the report is kept in $BUILD/tsan-reports/ and printed at the end.
# Environment: PALU_TSAN_BUILD_DIR (default build-tsan), PALU_TSAN_JOBS (default 2),
# PALU_SHARED_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT=1
FILTER="*"
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) REPEAT="$2"; shift ;;
    --filter) FILTER="$2"; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "tsan.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
BUILD=${PALU_TSAN_BUILD_DIR:-build-tsan}
JOBS=${PALU_TSAN_JOBS:-2}
start=$(date +%s)
GENERATOR=()
if [ ! -f "$BUILD/CMakeCache.txt" ] && command -v ninja > /dev/null; then GENERATOR=(-G Ninja); fi
cmake -S . -B "$BUILD" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPALU_TSAN=ON -DPALU_CUDA=OFF \
  -DPALU_VULKAN=OFF > /dev/null
cmake --build "$BUILD" -j "$JOBS" --target palud palu-generate daemon_unit_tests daemon_integration_tests
built=$(date +%s)
echo "tsan.sh: build took $((built - start)) s"

REPORTS="$(cd "$BUILD" && pwd)/tsan-reports"
rm -rf "$REPORTS"
mkdir -p "$REPORTS"
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 history_size=7 \
suppressions=$PWD/scripts/tsan-suppressions.txt log_path=$REPORTS/tsan ${TSAN_OPTIONS:-}"
status=0
for i in $(seq "$REPEAT"); do
  for t in daemon_unit_tests daemon_integration_tests; do
    echo "tsan.sh: $t (run $i of $REPEAT)"
    if ! "$BUILD/tests/$t" --gtest_filter="$FILTER" --gtest_brief=1; then
      echo "tsan.sh: $t FAILED (a ThreadSanitizer report below, or a failing test above)" >&2
      status=1
    fi
  done
done
if compgen -G "$REPORTS/tsan.*" > /dev/null; then
  echo "tsan.sh: ThreadSanitizer reports:" >&2
  cat "$REPORTS"/tsan.* >&2
  status=1
fi
end=$(date +%s)
echo "tsan.sh: build $((built - start)) s, tests $((end - built)) s, total $((end - start)) s"
exit $status
