#!/usr/bin/env bash
# Idempotent set-up of what building and testing hayloft needs on a fresh
# Debian machine. Safe to run again: it installs only what is missing.
set -euo pipefail

# System packages the build links against: Debian's RocksDB (the directory's
# database; linking it takes seconds where compiling the bundled C++ takes
# 17 minutes) and libclang (bindgen generates the RocksDB bindings with it).
APT_PACKAGES=(librocksdb-dev libclang-dev)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust 1.95+ (rustup)" >&2; exit 1; }
