#!/usr/bin/env bash
# Perplexity versus compression (docs/perf/quality.md): WikiText-2, --scoring hf --ctx 1024.
#   scripts/quality.sh MODEL_DIR [OUT_TABLE]        (one model; rows appended to OUT_TABLE)
# Env: PALU_BUILD (default build), PALU_SHARED_DIR (default ../shared), CALIB (default
# $PALU_SHARED_DIR/data/calib.txt), WIKI (default .../wikitext-2/wiki.test.raw), WORK (scratch).
# Configurations: the baseline; ratio 0.5 with every group size dividing H_kv, uniform and
# fisher_uniform; ratio 0.25/0.5/0.75 at the default group size (fisher_uniform); ratio 0.5
# with 4-, 3- and 2-bit latents, with and without Hadamard.
set -euo pipefail
MODEL="$1"
OUT="${2:-/dev/stdout}"
B="${PALU_BUILD:-build}"
SHARED="${PALU_SHARED_DIR:-../shared}"
CALIB="${CALIB:-$SHARED/data/calib.txt}"
WIKI="${WIKI:-$SHARED/data/wikitext-2/wiki.test.raw}"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"
NAME="$(basename "$MODEL")"
KV=$(python3 -c "import json;c=json.load(open('$MODEL/config.json'));print(c.get('num_key_value_heads',c['num_attention_heads']))" 2>/dev/null || echo 8)
DEFAULT_GS=$(( KV < 4 ? KV : 4 ))

ppl() {  # model dir, extra args → ppl
  "$B/tools/palu-perplexity" -q --model "$1" --file "$WIKI" --ctx 1024 --scoring hf --json "${@:2}" | tail -1 |
    sed -E 's/.*"ppl": ([0-9.]+).*/\1/'
}
compress() {  # out dir, args
  local dir="$WORK/$1"; shift
  if [ ! -f "$dir/palu.json" ]; then
    "$B/tools/palu-compress" -q --model "$MODEL" --calib "$CALIB" --out "$dir" "$@" >"$dir.log" 2>&1 ||
      { echo "palu-compress $* failed:" >&2; cat "$dir.log" >&2; return 1; }
  fi
  echo "$dir"
}
row() { echo "| $NAME | $1 | $2 | $3 | $4 | $5 | $6 | $(python3 -c "print(f'{$6/$BASE:.3f}')") |" >>"$OUT"; }

BASE=$(ppl "$MODEL")
echo "| $NAME | baseline (full cache) | - | - | - | - | $BASE | 1.000 |" >>"$OUT"
for gs in 1 2 4 8 16 32; do
  [ $gs -le "$KV" ] && [ $((KV % gs)) -eq 0 ] || continue
  for s in uniform fisher_uniform; do
    d=$(compress "r50_g${gs}_$s" --ratio 0.5 --group-size $gs --search $s)
    row 0.5 $gs $s "f32" "no" "$(ppl "$d")"
  done
done
for r in 0.25 0.75; do
  d=$(compress "r${r}_g${DEFAULT_GS}_fu" --ratio $r --group-size $DEFAULT_GS --search fisher_uniform)
  row $r $DEFAULT_GS fisher_uniform f32 no "$(ppl "$d")"
done
for h in no yes; do
  flag=""; [ $h = yes ] && flag="--hadamard"
  d=$(compress "r50_g${DEFAULT_GS}_fu_h$h" --ratio 0.5 --group-size $DEFAULT_GS --search fisher_uniform $flag)
  for bits in 4 3 2; do row 0.5 $DEFAULT_GS fisher_uniform "$bits-bit" $h "$(ppl "$d" --kv-bits $bits)"; done
done
