#!/usr/bin/env bash
# Installs what dynmoe needs to build and test on a fresh Debian/Ubuntu machine
# (as root or with sudo). Safe to run again: it installs only what is missing.
set -euo pipefail

pkgs=(build-essential cmake ninja-build pkg-config git
      libopenblas-openmp-dev libgtest-dev libopenmpi-dev openmpi-bin python3 python3-pip python3-venv
      libdnnl-dev ocl-icd-opencl-dev)  # oneDNN: the packed CPU experts (optional in the build:
                                       # -DDYNMOE_ONEDNN=AUTO); Debian's dnnl-config.cmake needs
                                       # the OpenCL loader's dev files, only Recommended by libdnnl-dev
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python side: the package's build backend and the test runner.
py=${PYTHON:-python3}
need=()
for m in numpy pytest scikit_build_core; do
  "$py" -c "import $m" >/dev/null 2>&1 || need+=("${m//_/-}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: pip install ${need[*]}"
  "$py" -m pip install -q "${need[@]}" 2>/dev/null || "$py" -m pip install -q --break-system-packages "${need[@]}"
fi

# CUDA is optional: when nvcc exists but is not on PATH, CMake is pointed at it.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: nvcc found at /usr/local/cuda/bin (the CUDA backend will be built)"
fi
