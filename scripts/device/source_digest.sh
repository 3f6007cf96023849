#!/usr/bin/env bash
# Prints one SHA-256 over the sources the GPU binaries are built from (Rust,
# CUDA and C++ files, manifests, the lock file, and the files the code
# compiles in: the demo's tokenizer), without git: the device machine gets a
# copy of the working tree but no repository.
# build_gpu_binaries.sh records it in the bundle; gpu_checks.sh compares.
set -euo pipefail
cd "$(dirname "$0")/../.."
{
    find Cargo.toml Cargo.lock src examples crates -name target -prune -o \
        -type f \( -name '*.rs' -o -name '*.cu' -o -name '*.cpp' -o -name '*.h' \
        -o -name '*.cuh' -o -name 'Cargo.toml' -o -name 'Cargo.lock' \) -print0
    # include_bytes!/include_str! of non-Rust files outside the tests.
    printf '%s\0' crates/clip-moe/tests/fixtures/tiny_clip/tokenizer.json
} | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1
