#!/usr/bin/env bash
# Installs what building pingpost needs besides the Rust toolchain: xgboost-rs compiles
# XGBoost's C++ from source with cmake and generates its bindings with bindgen, which
# needs libclang's headers (libclang-dev; libclang1 alone is not enough). Part of both of
# the README's commands (and so of .ci/run), before anything is compiled. Nothing to do
# when both are installed; otherwise apt-get as root (or through sudo), without
# recommended packages. See docs/AI.md ("Build").
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
# make: cmake's generator for XGBoost, and the jemalloc allocator's own build.
command -v make >/dev/null 2>&1 || need+=(make)
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
if [ "${#need[@]}" -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
echo "build-deps.sh: installing ${need[*]} (apt-get install --no-install-recommends)"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends "${need[@]}"; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends "${need[@]}"
fi
command -v cmake >/dev/null 2>&1 || { echo "build-deps.sh: cmake is still missing" >&2; exit 1; }
command -v make >/dev/null 2>&1 || { echo "build-deps.sh: make is still missing" >&2; exit 1; }
dpkg -s libclang-dev >/dev/null 2>&1 || { echo "build-deps.sh: libclang-dev is still missing" >&2; exit 1; }
