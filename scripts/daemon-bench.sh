#!/usr/bin/env bash
# docs/perf/daemon.md: palud on the CPU with ref-mha, 1/8/32 concurrent clients, full cache
# (f16 K/V rows) vs latent cache (ratio 0.5, group 4, fisher_uniform + Hadamard; f16 and
# 4-bit latents). Each client: one session, one greedy generation of TOKENS tokens.
#   scripts/daemon-bench.sh [TOKENS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENS="${1:-64}"
CLIENTS="${2:-1,8,32}"
B="${PALU_BUILD:-build}"
SHARED="${PALU_SHARED_DIR:-../shared}"
WORK="${WORK:-$(mktemp -d /tmp/palu-db-XXXXXX)}"
mkdir -p "$WORK"
MODEL="$SHARED/models/ref-mha"
C="$WORK/ref-mha-r50-g4-fu-h"
if [ ! -f "$C/palu.json" ]; then
  "$B/tools/palu-compress" -q --model "$MODEL" --calib "$SHARED/data/calib.txt" --ratio 0.5 --group-size 4 \
    --search fisher_uniform --hadamard --out "$C" >"$WORK/compress.log" 2>&1
fi
OUT=docs/perf/daemon.md
run() {  # label, model, extra palud flags
  local sock="$WORK/s.sock"
  "$B/daemon/palud" --socket "$sock" --state-dir "$WORK/state" --disk-dir "$WORK/spill" --no-restore \
    --host-budget 1GiB --model "$2" "${@:3}" 2>"$WORK/palud.log" &
  local pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  echo "### $1"
  echo
  "$B/tools/palu-daemon-bench" --socket "$sock" --clients "$CLIENTS" --tokens "$TOKENS"
  echo
  kill -TERM $pid; wait $pid || true
  rm -rf "$WORK/state"
}
{
  echo "# palud throughput (CPU)"
  echo
  echo "Command: \`scripts/daemon-bench.sh $TOKENS $CLIENTS\` ($(date -u +%Y-%m-%d), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) CPUs)."
  echo
  echo "palud with one model, host budget 1 GiB; N clients connect at once, each creates a session and asks for"
  echo "$TOKENS greedy tokens after the prompt \"Once upon a time\" (palu-daemon-bench). Aggregate decode tok/s = all"
  echo "generated tokens / wall time from the first request to the last final chunk; TTFT = request sent → first"
  echo "token received (includes waiting for the other clients' prefill and decode steps, which share one engine)."
  echo
  run "ref-mha, full K/V cache (f16 rows, 16384 B/token)" "$MODEL"
  run "ref-mha Palu-50% (g4, Hadamard), latent cache f16 (8192 B/token)" "$C"
  run "ref-mha Palu-50% (g4, Hadamard), latent cache 4-bit (2304 B/token)" "$C" --kv-bits 4
} >"$OUT"
cat "$OUT"
