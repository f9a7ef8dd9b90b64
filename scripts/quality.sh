#!/usr/bin/env bash
# Perplexity versus compression (docs/perf/quality.md): WikiText-2, --scoring hf --ctx 1024.
#   scripts/quality.sh MODEL_DIR [OUT_TABLE]        (one model; rows added to OUT_TABLE)
# Env: PALU_BUILD (default build), PALU_SHARED_DIR (default ../shared), CALIB (default
# $PALU_SHARED_DIR/data/calib.txt), WIKI (default .../wikitext-2/wiki.test.raw), WORK (scratch;
# compressed models are kept there and reused), JOBS (processes at a time, default 1),
# THREADS (threads per process, default nproc / JOBS), LIMIT (at most this many rows per run).
# Configurations: the baseline; ratio 0.5 with every group size dividing H_kv, uniform and
# fisher_uniform; ratio 0.25/0.5/0.75 at the default group size (fisher_uniform); ratio 0.5
# with 4-, 3- and 2-bit latents, with and without Hadamard. Compressed models are scored with
# the latent simulation (--kv sim [--kv-bits B]).
# Two phases: all compressions (and the baseline), then all perplexities, JOBS at a time
# (the tools scale poorly past a few threads on these small models, so several processes of
# a few threads use a many-core machine better than one).
# Resumable: when OUT_TABLE is a file, rows already in it are skipped (the baseline ppl is read
# back from it), so a run cut short by a time limit continues where it stopped. A new or empty
# OUT_TABLE gets the table header first; at the end its rows are put in configuration order.
set -euo pipefail
MODEL="$1"
OUT="${2:-/dev/stdout}"
B="${PALU_BUILD:-build}"
SHARED="${PALU_SHARED_DIR:-../shared}"
CALIB="${CALIB:-$SHARED/data/calib.txt}"
WIKI="${WIKI:-$SHARED/data/wikitext-2/wiki.test.raw}"
WORK="${WORK:-$(mktemp -d)}"
JOBS="${JOBS:-1}"
THREADS="${THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}"
mkdir -p "$WORK"
NAME="$(basename "$MODEL")"
# num_key_value_heads (MHA configs may omit it: then num_attention_heads).
json_int() { sed -nE "s/.*\"$1\"[[:space:]]*:[[:space:]]*([0-9]+).*/\1/p" "$MODEL/config.json" | head -1; }
KV=$(json_int num_key_value_heads)
[ -n "$KV" ] || KV=$(json_int num_attention_heads)
[ -n "$KV" ] || { echo "quality.sh: no head count in $MODEL/config.json" >&2; exit 1; }
DEFAULT_GS=$(( KV < 4 ? KV : 4 ))

resumable() { [ -f "$OUT" ] || [ ! -e "$OUT" ]; }  # a file (or none yet), not a terminal or pipe
have() { [ -f "$OUT" ] && grep -qF -- "$1" "$OUT"; }
ppl() {  # model dir, extra args → ppl
  "$B/tools/palu-perplexity" -q --threads "$THREADS" --model "$1" --file "$WIKI" --ctx 1024 --scoring hf --json "${@:2}" |
    tail -1 | sed -E 's/.*"ppl": ([0-9.]+).*/\1/'
}
compress() {  # dir name, args
  local dir="$WORK/$1"; shift
  [ -f "$dir/palu.json" ] && return 0
  "$B/tools/palu-compress" -q --threads "$THREADS" --model "$MODEL" --calib "$CALIB" --out "$dir" "$@" >"$dir.log" 2>&1 ||
    { echo "palu-compress $* failed:" >&2; cat "$dir.log" >&2; return 1; }
}
achieved() { sed -nE 's/.*"achieved_ratio"[[:space:]]*:[[:space:]]*([0-9.eE+-]+).*/\1/p' "$1/palu.json" | head -1; }
key() { echo "| $NAME | $1 | $2 | $3 | $4 | $5 |"; }
throttle() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done; }

# The configurations: key fields (ratio, group size, search, latents, Hadamard), compressed
# model directory, --kv-bits.
CONFIGS=()
declare -A CARGS
add() {  # ratio gs search latents hadamard dir bits[:window] compress-args...
  CONFIGS+=("$1|$2|$3|$4|$5|$6|$7")
  CARGS[$6]="${*:8}"
}
for gs in 1 2 4 8 16 32; do
  [ $gs -le "$KV" ] && [ $((KV % gs)) -eq 0 ] || continue
  for s in uniform fisher_uniform; do
    add 0.5 $gs $s f32 no "r50_g${gs}_$s" 0 --ratio 0.5 --group-size $gs --search $s
  done
done
for r in 0.25 0.75; do
  add $r $DEFAULT_GS fisher_uniform f32 no "r${r}_g${DEFAULT_GS}_fu" 0 --ratio $r --group-size $DEFAULT_GS --search fisher_uniform
done
for bits in 4 3 2; do
  add 0.5 $DEFAULT_GS fisher_uniform "$bits-bit" no "r50_g${DEFAULT_GS}_fisher_uniform" $bits \
    --ratio 0.5 --group-size $DEFAULT_GS --search fisher_uniform
done
for bits in 4 3 2; do
  add 0.5 $DEFAULT_GS fisher_uniform "$bits-bit" yes "r50_g${DEFAULT_GS}_fu_hadamard" $bits \
    --ratio 0.5 --group-size $DEFAULT_GS --search fisher_uniform --hadamard
done
# 2-bit latents with the newest 32 tokens also in f16 (DESIGN.md §1's option; the simulation
# gives each query its newest 32 positions unquantized, as the latent cache does).
add 0.5 $DEFAULT_GS fisher_uniform "2-bit + f16 window 32" no "r50_g${DEFAULT_GS}_fisher_uniform" 2:32 \
  --ratio 0.5 --group-size $DEFAULT_GS --search fisher_uniform
add 0.5 $DEFAULT_GS fisher_uniform "2-bit + f16 window 32" yes "r50_g${DEFAULT_GS}_fu_hadamard" 2:32 \
  --ratio 0.5 --group-size $DEFAULT_GS --search fisher_uniform --hadamard

if resumable && [ ! -s "$OUT" ]; then
  echo "| model | ratio | group size | search | latents | Hadamard | achieved ratio | ppl | × baseline |" >>"$OUT"
  echo "|---|---|---|---|---|---|---|---|---|" >>"$OUT"
fi

# The rows to do, first those behind the issue's targets and the group-size ordering (ratio
# 0.5, fisher_uniform: float latents, 3- and 2-bit Hadamard), so a run cut short has those; at most LIMIT
# of them when LIMIT is set (a later run does the rest).
first() { [ "$1" = 0.5 ] && [ "$3" = fisher_uniform ] && { [ "$4" = f32 ] || { [ "$5" = yes ] && [ "$4" != 4-bit ]; }; }; }
ORDERED=()
for pass in 1 2; do
  for c in "${CONFIGS[@]}"; do
    IFS='|' read -r r gs s lat h dir bits <<<"$c"
    have "$(key "$r" "$gs" "$s" "$lat" "$h")" && continue
    if first "$r" "$gs" "$s" "$lat" "$h"; then [ $pass = 1 ] || continue; else [ $pass = 2 ] || continue; fi
    [ -n "${LIMIT:-}" ] && [ "${#ORDERED[@]}" -ge "$LIMIT" ] && continue
    ORDERED+=("$c")
  done
done

# Phase 1: the baseline and every compressed model the rows to do need.
BASE_KEY="$(key "-" "-" "baseline (full cache)" "f32" "-")"
if ! have "$BASE_KEY"; then
  ( b=$(ppl "$MODEL") && echo "$BASE_KEY 1 | $b | 1.000 |" >>"$OUT" ) &
fi
declare -A STARTED
for c in "${ORDERED[@]}"; do
  IFS='|' read -r r gs s lat h dir bits <<<"$c"
  [ -n "${STARTED[$dir]:-}" ] && continue
  STARTED[$dir]=1
  throttle
  # shellcheck disable=SC2086
  compress "$dir" ${CARGS[$dir]} &
done
fail=0
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
wait || fail=1
have "$BASE_KEY" || { echo "quality.sh: the baseline perplexity failed" >&2; exit 1; }
[ $fail -eq 0 ] || { echo "quality.sh: a compression failed" >&2; exit 1; }
BASE=$(grep -F -- "$BASE_KEY" "$OUT" | head -1 | awk -F'|' '{gsub(/ /, "", $9); print $9}')

# Phase 2: the perplexity of every row to do.
for c in "${ORDERED[@]}"; do
  IFS='|' read -r r gs s lat h dir bits <<<"$c"
  k="$(key "$r" "$gs" "$s" "$lat" "$h")"
  have "$k" && continue
  throttle
  (
    extra=(--kv sim)
    win=0
    case "$bits" in *:*) win="${bits#*:}"; bits="${bits%%:*}" ;; esac
    [ "$bits" != 0 ] && extra+=(--kv-bits "$bits")
    [ "$win" != 0 ] && extra+=(--kv-window "$win")
    p=$(ppl "$WORK/$dir" "${extra[@]}")
    [ -n "$p" ] || { echo "quality.sh: palu-perplexity failed for $k" >&2; exit 1; }
    echo "$k $(achieved "$WORK/$dir") | $p | $(awk -v p="$p" -v b="$BASE" 'BEGIN{printf "%.3f", p/b}') |" >>"$OUT"
  ) &
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || fail=1; done
wait || fail=1

# Rows in configuration order (header and other models' rows first, as they were).
if [ -f "$OUT" ]; then
  tmp="$OUT.tmp.$$"
  grep -vF -- "| $NAME |" "$OUT" >"$tmp" || true
  grep -F -- "$BASE_KEY" "$OUT" | head -1 >>"$tmp"
  for c in "${CONFIGS[@]}"; do
    IFS='|' read -r r gs s lat h dir bits <<<"$c"
    grep -F -- "$(key "$r" "$gs" "$s" "$lat" "$h")" "$OUT" | head -1 >>"$tmp" || true
  done
  mv "$tmp" "$OUT"
fi
exit $fail
