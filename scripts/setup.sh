#!/usr/bin/env bash
# Idempotent set-up of what building and testing hayloft needs on a fresh
# Debian machine. Safe to run again: it installs only what is missing.
set -euo pipefail

# System packages the build links against: Debian's RocksDB (the directory's
# database; linking it takes seconds where compiling the bundled C++ takes
# 17 minutes) and libclang (bindgen generates the RocksDB bindings with it).
# python3-venv: the cold-tier tests run against moto, a real S3-compatible
# server from PyPI (it emulates Glacier restores), installed below.
# nginx with njs: the CDN edge configuration (deploy/nginx/) is tested in a
# real nginx (the tests start their own on loopback ports). prometheus: its
# promtool checks and unit-tests the alert rules (deploy/prometheus/).
# systemd: systemd-analyze verifies the units of deploy/systemd/.
# chromium: the operator page is tested in a real headless browser.
APT_PACKAGES=(librocksdb-dev libclang-dev python3 python3-venv nginx libnginx-mod-http-js prometheus systemd chromium)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  # (A package removed but not purged still has a status: ask for "installed".)
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  # Packages must not start services (nginx would take port 80): a
  # policy-rc.d that refuses, for the time of the install.
  POLICY=/usr/sbin/policy-rc.d
  if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    trap '$SUDO rm -f "$POLICY"' EXIT
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust 1.95+ (rustup)" >&2; exit 1; }

# moto (S3 server for the cold-tier tests) in a venv inside the checkout;
# tests start it on loopback themselves (tests/support/mod.rs).
MOTO_VENV="${HAYLOFT_MOTO_VENV:-.ci/venv}"
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  echo "setup: installing moto[server] into $MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q 'moto[server]==5.2.5'
fi
