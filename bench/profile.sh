#!/usr/bin/env bash
# Where hookrouter's ingest time goes: the ingest scenario of bench/ingest.sh
# (wrk -t1 -c32, unique delivery ids, fresh data file) against a release
# build with symbols and frame pointers, sampled with perf.
#
# usage: bench/profile.sh                 (LOG_LEVEL=warn SECS=8 by default)
#        LOG_LEVEL=info bench/profile.sh
#        NOMATCH=1 bench/profile.sh       (the rule never matches: ingest only)
# Needs perf (Debian: linux-perf). Output: top frames by self time, by
# inclusive time in hookrouter's own code, and the perf.data path.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LOG_LEVEL=${LOG_LEVEL:-warn}
SECS=${SECS:-8}
PORT=${PORT:-19171}
PROF_TARGET="$REPO_DIR/target/bench-prof"
PROF_BIN="$PROF_TARGET/release/hookrouter"

make_work profile

ensure_tools
if ! command -v perf >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
log "building hookrouter (release, symbols, frame pointers) in $PROF_TARGET"
(cd "$REPO_DIR" && CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    RUSTFLAGS="-C force-frame-pointers=yes" CARGO_TARGET_DIR="$PROF_TARGET" cargo build --release --quiet)
make_payload
make_wrk_script
RULES="$BENCH_DIR/rules/github-bench.yaml"
[[ -f $RULES ]] || die "run bench/ingest.sh once first (it writes $RULES)"
TAG=$LOG_LEVEL
if [[ -n ${NOMATCH:-} ]]; then
    mkdir -p "$WORK/rules"
    sed -e 's|\$.ref: refs/heads/main|$.ref: refs/heads/never|' -e '/^tests:/,$d' "$RULES" >"$WORK/rules/nomatch.yaml"
    RULES="$WORK/rules/nomatch.yaml"
    TAG="$TAG-nomatch"
fi

start_bg "$WORK/hookrouter.log" "$PROF_BIN" --rules "$RULES" \
    --listen "127.0.0.1:$PORT" --data "$WORK/hr.redb" --log-level "$LOG_LEVEL"
HR_PID=$LAST_PID
wait_port "$PORT"
PERF_DATA="$REPO_DIR/target/bench-profile-$TAG.perf.data"
# Sample the middle of the run: start after 1 s, stop 1 s before the end.
(sleep 1 && perf record -q -F 1999 -g -p "$HR_PID" -o "$PERF_DATA" -- sleep $((SECS - 2)) 2>"$WORK/perf.err") &
PERF_PID=$!
line=$(run_wrk "http://127.0.0.1:$PORT/hooks/github" 202 0 "$SECS")
wait "$PERF_PID" || die "perf record failed: $(cat "$WORK/perf.err")"
stop_pid "$HR_PID"
log "under perf: $(field expected_rps "$line") req/s, unexpected=$(field unexpected "$line")"

# head closes the pipe early; that is not a failure.
set +o pipefail
echo "== self time, top 40 (all threads of hookrouter) =="
perf report -i "$PERF_DATA" --no-children --sort sym --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9.]+%' | head -40
echo
echo "== inclusive time, top 60 =="
perf report -i "$PERF_DATA" --children --sort sym --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9.]+%' | head -60
echo
echo "== time by thread =="
perf report -i "$PERF_DATA" --no-children --sort comm --stdio -g none 2>/dev/null |
    grep -E '^ +[0-9.]+%' | head -10
echo
echo "perf data: $PERF_DATA (perf report -i $PERF_DATA)"
