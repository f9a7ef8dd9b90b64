#!/usr/bin/env bash
# Installs the Debian 12 packages palu needs. Idempotent: does nothing when all are present.
set -euo pipefail
PKGS=(cmake ninja-build g++ pkg-config git
      libdnnl-dev ocl-icd-opencl-dev libsentencepiece-dev libprotobuf-dev protobuf-compiler libboost-dev
      nlohmann-json3-dev libcli11-dev libeigen3-dev libpcre2-dev libxxhash-dev
      libgtest-dev libgmock-dev
      clang libclang-rt-14-dev libomp-14-dev
      libvulkan-dev glslc mesa-vulkan-drivers)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} Debian packages are present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
