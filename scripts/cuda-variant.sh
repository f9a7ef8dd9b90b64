#!/usr/bin/env bash
# Builds a measurement variant of palu-cuda-attention-bench: the sm_90a kernel file
# (backends/cuda/latent_attention_sm90.cu) compiled with extra nvcc flags (e.g. -DNAME=1), the
# rest as the build directory has it. The build directory is left as it was.
#
# Why not "run nvcc with the extra flag, then ninja to link": ninja finds the object's stored
# dependency info out of date and recompiles it with its own flags before linking, so such a
# variant is the default kernel (docs/perf/cuda.md, round 15). Here the variant's object goes into
# a copy of libpalu_cuda.a, and the bench is linked against that copy by hand.
#
# usage: scripts/cuda-variant.sh BUILD_DIR OUTPUT_BINARY [NVCC_FLAG...]
#   e.g. scripts/cuda-variant.sh build-cuda /tmp/bench-x -DPALU_SOME_SWITCH=1
# PALU_VARIANT_TARGET=tests/cuda_tests builds the GPU test binary that way instead (the same
# switch's effect on the conformance suite).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 BUILD_DIR OUTPUT_BINARY [NVCC_FLAG...]" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
out=$2
shift 2
target=${PALU_VARIANT_TARGET:-tools/palu-cuda-attention-bench}
command -v ninja > /dev/null || { echo "$0: needs ninja (the build directory's generator)" >&2; exit 1; }
[[ -f "$build/build.ninja" ]] || { echo "$0: $build has no build.ninja (configure with -G Ninja and -DPALU_CUDA=ON)" >&2; exit 1; }
ninja -C "$build" "$target" > /dev/null
cmds=$(ninja -C "$build" -t commands "$target")
compile=$(grep -F 'latent_attention_sm90.cu' <<< "$cmds" | grep -F -- ' -c ' | tail -1)
link=$(tail -1 <<< "$cmds")
[[ -n "$compile" ]] || { echo "$0: no nvcc command for latent_attention_sm90.cu in $build (PALU_CUDA off?)" >&2; exit 1; }
grep -q -- "-o $target" <<< "$link" || { echo "$0: the last command for $target is not its link" >&2; exit 1; }
lib=$(grep -o '[^ ]*libpalu_cuda\.a' <<< "$link" | head -1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
obj=$tmp/latent_attention_sm90.cu.o
# the same nvcc command with the extra flags, its object (and no dependency file) in $tmp
variant=$(sed -E "s# -MD -MT [^ ]+ -MF [^ ]+##; s# -o [^ ]+latent_attention_sm90\.cu\.o# -o $obj#" <<< "$compile")
extra=""
for f in "$@"; do extra+=" $(printf '%q' "$f")"; done
variant=${variant/ -c / $extra -c }
(cd "$build" && eval "$variant")
cp "$build/$lib" "$tmp/libpalu_cuda.a"
ar r "$tmp/libpalu_cuda.a" "$obj"
linkv=${link//$lib/$tmp/libpalu_cuda.a}
linkv=${linkv/-o $target/-o $tmp/bench}
(cd "$build" && eval "$linkv")
mkdir -p "$(dirname "$out")"
cp "$tmp/bench" "$out"
echo "$out: $target with$extra (its sm_90a object: md5 $(md5sum < "$obj" | cut -c1-12))"
