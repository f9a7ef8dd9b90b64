#!/usr/bin/env bash
# Issue 4, must-show 2: token-by-token decode through the paged latent cache against the
# latent simulation (dense cache, K/V rebuilt from fake-quantized latents), same model, same
# text, for f16 latents and 4/3/2 bits. Writes docs/perf/latent-cache.md.
#   scripts/latent-vs-sim.sh [MODEL_DIR] [WINDOWS] [CTX]
# Env: PALU_BUILD (default build), PALU_SHARED_DIR (default ../shared), WORK (scratch dir).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${PALU_SHARED_DIR:-../shared}"
MODEL="${1:-$SHARED/models/ref-mha}"
WINDOWS="${2:-8}"
CTX="${3:-1024}"
B="${PALU_BUILD:-build}"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
WIKI="$SHARED/data/wikitext-2/wiki.test.raw"
OUT=docs/perf/latent-cache.md
C="$WORK/$(basename "$MODEL")-r50-g4-fu-h"
if [ ! -f "$C/palu.json" ]; then
  "$B/tools/palu-compress" -q --model "$MODEL" --calib "$SHARED/data/calib.txt" --ratio 0.5 --group-size 4 \
    --search fisher_uniform --hadamard --out "$C" >"$WORK/compress.log" 2>&1
fi
ppl() { "$B/tools/palu-perplexity" -q --model "$C" --file "$WIKI" --ctx "$CTX" --max-windows "$WINDOWS" --json "$@" | tail -1; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$2'])" "$1"; }
{
  echo "# Latent cache vs the latent simulation"
  echo
  echo "Command: \`scripts/latent-vs-sim.sh $MODEL $WINDOWS $CTX\` ($(date -u +%Y-%m-%d), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) CPUs)."
  echo
  echo "Model: $(basename "$MODEL") compressed with \`palu-compress --ratio 0.5 --group-size 4 --search fisher_uniform --hadamard\` (default calibration)."
  echo "Text: the first $WINDOWS windows of $CTX tokens of wiki.test.raw, \`--scoring hf\`."
  echo "*simulation*: \`--kv sim --kv-bits B\` (one prefill per window into the dense float32 cache; K and V rebuilt from"
  echo "fake-quantized latents). *latent decode*: \`--kv latent --kv-bits B --decode-all\` (every token a decode step"
  echo "through the paged latent cache: B-bit codes in the block pool, keys rebuilt in the fused kernel, B^V folded into W_o)."
  echo "*latent prefill*: \`--kv latent --kv-bits B\` (one prefill per window, tiled latent attention)."
  echo "Target (issue 4): latent decode within 0.2% of the simulation."
  echo
  echo "| latents | bytes/token | simulation ppl | latent prefill ppl | latent decode ppl | decode vs simulation | decode s |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
} >"$OUT.tmp"
for bits in 0 4 3 2; do
  s=$(ppl --kv sim --kv-bits $bits)
  p=$(ppl --kv latent --kv-bits $bits)
  d=$(ppl --kv latent --kv-bits $bits --decode-all)
  label=$([ $bits = 0 ] && echo "f16" || echo "$bits-bit")
  python3 - "$label" "$s" "$p" "$d" >>"$OUT.tmp" <<'PY'
import json, sys
label, s, p, d = sys.argv[1], *(json.loads(x) for x in sys.argv[2:])
rel = d["ppl"] / s["ppl"] - 1
print(f"| {label} | {d['kv_bytes_per_token']} | {s['ppl']:.4f} | {p['ppl']:.4f} | {d['ppl']:.4f} | {rel*100:+.3f}% | {d['seconds']:.0f} |")
PY
done
mv "$OUT.tmp" "$OUT"
cat "$OUT"
