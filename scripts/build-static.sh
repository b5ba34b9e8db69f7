#!/usr/bin/env bash
# Builds a fully static panorama-gateway (musl libc, no runtime dependencies) for copying onto
# any x86_64 (or aarch64) Linux host or into the VM guest image (vm-template/Dockerfile).
#
# Usage: scripts/build-static.sh [TARGET]      (default x86_64-unknown-linux-musl)
# Output: target/<TARGET>/release/panorama-gateway
# Needs: rustup (to add the musl target once) and a C compiler for ring's few C/asm files
# (musl-gcc from the musl-tools package is preferred; the system gcc usually works too).
set -euo pipefail

TARGET="${1:-x86_64-unknown-linux-musl}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  echo "adding the Rust standard library for $TARGET (rustup target add $TARGET)..." >&2
  if ! rustup target add "$TARGET"; then
    cat >&2 <<EOF
ERROR cannot install the $TARGET standard library: rustup could not reach
static.rust-lang.org (offline machine or blocked network).
Fix: run "rustup target add $TARGET" on a machine with network access (or copy
~/.rustup/toolchains/*/lib/rustlib/$TARGET into this toolchain), then run this script again.
EOF
    exit 1
  fi
fi

# ring compiles a little C and assembly: prefer the musl wrapper when it exists.
triple_env="$(echo "$TARGET" | tr 'a-z-' 'A-Z_')"
cc_var="CC_$(echo "$TARGET" | tr '-' '_')"
arch="${TARGET%%-*}"
if [ -z "${!cc_var:-}" ]; then
  if command -v "$arch-linux-musl-gcc" >/dev/null; then
    export "$cc_var=$arch-linux-musl-gcc"
  elif command -v musl-gcc >/dev/null && [ "$arch" = "$(uname -m)" ]; then
    export "$cc_var=musl-gcc"
  elif command -v cc >/dev/null && [ "$arch" = "$(uname -m)" ]; then
    # ring's C code needs almost nothing from libc headers: the host gcc works for musl.
    echo "note: no musl-gcc; compiling ring's C code with the host cc" >&2
    export "$cc_var=cc"
  else
    echo "ERROR no C compiler found for $TARGET: install musl-tools (apt-get install musl-tools) or a $arch-linux-musl cross gcc" >&2
    exit 1
  fi
fi
export "CARGO_TARGET_${triple_env}_RUSTFLAGS=-C target-feature=+crt-static"

echo "building panorama-gateway for $TARGET (release: lto, strip, opt-level z)..." >&2
cargo build --release --locked --target "$TARGET" --bin panorama-gateway

BIN="target/$TARGET/release/panorama-gateway"
if command -v file >/dev/null; then
  file "$BIN"
fi
if ldd "$BIN" 2>/dev/null | grep -q "=>"; then
  echo "ERROR $BIN is dynamically linked:" >&2
  ldd "$BIN" >&2
  exit 1
fi
"$BIN" --version
echo "OK static binary: $BIN ($(stat -c %s "$BIN") bytes)"
