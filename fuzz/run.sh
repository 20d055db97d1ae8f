#!/bin/sh
# Run the fuzz targets one after another, each for SECONDS (default 120).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# New inputs go to fuzz/work/<target>/ (git-ignored); the committed seeds in
# fuzz/corpus/<target>/ are read, never written. Crashes land in
# fuzz/artifacts/<target>/.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
seconds="${1:-120}"
[ $# -gt 0 ] && shift
targets="${*:-rules_yaml condition template body signature_headers}"
for t in $targets; do
    mkdir -p "$root/fuzz/work/$t"
    dict=""
    [ -f "$root/fuzz/dict/$t.dict" ] && dict="-dict=$root/fuzz/dict/$t.dict"
    echo "== $t: ${seconds}s"
    # shellcheck disable=SC2086
    cargo +nightly fuzz run "$t" "$root/fuzz/work/$t" "$root/fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 $dict
done
