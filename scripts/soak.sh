#!/usr/bin/env bash
# The soak benchmark of issue 9: palud with ref-mha compressed (latent cache, 4-bit latents), a
# small host budget so sessions spill to disk, and palu-soak's mixed clients for SECONDS
# (default 600). Prints palu-soak's table (RSS, descriptors, threads, sessions, cache bytes and
# saved files before/peak/after, and every operation's results) and writes it to
# docs/perf/soak.md. Exit status: palu-soak's (1 when something did not return to baseline).
#   scripts/soak.sh [SECONDS] [CLIENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_="${1:-600}"
CLIENTS="${2:-8}"
B="${PALU_BUILD:-build}"
SHARED="${PALU_SHARED_DIR:-../shared}"
WORK="${WORK:-$(mktemp -d /tmp/palu-soak-XXXXXX)}"
mkdir -p "$WORK"
cmake --build "$B" --target palud palu-soak palu-compress >/dev/null
C="$WORK/ref-mha-r50-g4"
if [ ! -f "$C/palu.json" ]; then
  "$B/tools/palu-compress" -q --model "$SHARED/models/ref-mha" --calib "$SHARED/data/calib.txt" --ratio 0.5 \
    --group-size 4 --search uniform --hadamard --out "$C" >"$WORK/compress.log" 2>&1
fi
sock="$WORK/s.sock"
rm -rf "$WORK/state" "$WORK/spill"
"$B/daemon/palud" --socket "$sock" --state-dir "$WORK/state" --disk-dir "$WORK/spill" --no-restore \
  --host-budget 1MiB --disk-budget 256MiB --model "$C" --kv-bits 4 2>"$WORK/palud.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.1; done
OUT=docs/perf/soak.md
set +e
"$B/tools/palu-soak" --socket "$sock" --pid $pid --duration "$SECONDS_" --clients "$CLIENTS" \
  --state-dir "$WORK/state" --out "$WORK/table.md"
rc=$?
set -e
kill -TERM $pid; wait $pid || true
trap - EXIT
{
  echo "# Soak: palud under mixed clients"
  echo
  echo "Command: \`scripts/soak.sh $SECONDS_ $CLIENTS\` ($(date -u +%Y-%m-%d), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) CPUs)."
  echo
  echo "palud with ref-mha compressed (Palu 50%, group 4, Hadamard), 4-bit latent cache, host budget 1 MiB"
  echo "(sessions spill to disk), disk budget 256 MiB. palu-soak's clients each loop over a random mix:"
  echo "create (context 128–512), generate 4–31 tokens (greedy or sampled; a quarter cancelled from the"
  echo "callback), a second client that starts a stream and disconnects without reading it, append text,"
  echo "save, restore under a new name, fork, close (half with the saved file deleted) and list. Before: after"
  echo "a warm-up round. After: every session closed and every saved file deleted, 2 s later."
  echo
  cat "$WORK/table.md"
  echo
  echo "palud's last log lines:"
  echo
  echo '```'
  tail -5 "$WORK/palud.log"
  echo '```'
} >"$OUT"
echo "wrote $OUT (work dir $WORK)"
exit $rc
