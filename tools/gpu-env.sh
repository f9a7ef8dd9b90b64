#!/usr/bin/env bash
# Sourced by the GPU-machine scripts (tools/gpu-check.sh, tools/gpu-daemon-check.sh): the CUDA path, the shared data
# (.carry/shared) and the carried sysroot (.carry/sys: headers and static libraries of Debian
# -dev packages the GPU machine lacks), then `palu_gpu_configure` makes build-gpu (the same
# configuration as tools/gpu-check.sh, so the two share its objects).
export PATH=/usr/local/cuda/bin:$PATH
if [ -z "${PALU_SHARED_DIR:-}" ] && [ -d .carry/shared ]; then export PALU_SHARED_DIR="$PWD/.carry/shared"; fi
PALU_GPU_EXTRA=()
if [ -d .carry/sys ]; then
  S="$PWD/.carry/sys"
  mkdir -p "$S/lib/pkgconfig"
  printf 'Name: libxxhash\nDescription: xxHash\nVersion: 0.8.1\nCflags: -I%s/include\nLibs: -L%s/lib -lxxhash\n' "$S" "$S" >"$S/lib/pkgconfig/libxxhash.pc"
  printf 'Name: libpcre2-8\nDescription: PCRE2\nVersion: 10.42\nCflags: -I%s/include\nLibs: -L%s/lib -lpcre2-8\n' "$S" "$S" >"$S/lib/pkgconfig/libpcre2-8.pc"
  export PKG_CONFIG_PATH="$S/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  PALU_GPU_EXTRA+=("-DCMAKE_INCLUDE_PATH=$S/include")
  export CPATH="$S/include${CPATH:+:$CPATH}"
fi
palu_gpu_configure() {
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DPALU_CUDA=ON -DPALU_VULKAN=OFF -DPALU_ONEDNN=AUTO \
    -DCMAKE_CUDA_ARCHITECTURES=90 "${PALU_GPU_EXTRA[@]}" >"$1/configure.log" 2>&1 || { tail -30 "$1/configure.log"; return 1; }
}
