#!/usr/bin/env bash
# Prints one SHA-256 over the sources the GPU binaries are built from (Rust,
# CUDA and C++ files, manifests and the lock file), without git: the device
# machine gets a copy of the working tree but no repository.
# build_gpu_binaries.sh records it in the bundle; gpu_checks.sh compares.
set -euo pipefail
cd "$(dirname "$0")/../.."
find Cargo.toml Cargo.lock src examples crates \
    -type f \( -name '*.rs' -o -name '*.cu' -o -name '*.cpp' -o -name '*.h' \
    -o -name '*.cuh' -o -name 'Cargo.toml' -o -name 'Cargo.lock' \) \
    -not -path '*/target/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
