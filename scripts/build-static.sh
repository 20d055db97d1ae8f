#!/usr/bin/env bash
# Build the single static release binary (musl) and prove it is static.
#
#   scripts/build-static.sh            -> target/x86_64-unknown-linux-musl/release/hookrouter
#
# Needs the musl target and a musl C compiler (ring, used by rustls, has C
# parts): `rustup target add x86_64-unknown-linux-musl` and the Debian
# package `musl-tools`. Where the musl target cannot be had, the fallback is
# a glibc build with crt-static:
#   RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
command -v musl-gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq musl-tools; }
cargo build --release --target "$target"
bin="target/$target/release/hookrouter"
file "$bin"
if ldd "$bin" 2>&1 | grep -q "not a dynamic executable\|statically linked"; then
  echo "ok: $bin is static ($(du -h "$bin" | cut -f1))"
else
  echo "error: $bin is not static" >&2
  ldd "$bin" >&2 || true
  exit 1
fi
