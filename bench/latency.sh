#!/usr/bin/env bash
# Latency at a fixed request rate: hookrouter's durable ingest, adnanh/webhook's
# reject path (the peer) and the bare limit server, one after the other in one
# run, each driven by the same open-loop load generator
# (bench/limit/src/load.rs). Request i is due at start + i/RATE whatever the
# server does; its latency runs from that due time to the end of the answer,
# so a stall is charged to every request it delays. See bench/README.md.
#
# usage: bench/latency.sh                 (RATE=2000 SECS=30 CONNS=64 by default)
#        RATE=5000 SECS=10 bench/latency.sh
#        LEVELS=warn KEEP_WORK=1 bench/latency.sh
#
# Settings (environment):
#   RATE=2000          requests per second offered, fixed
#   SECS=30            measured seconds per system
#   WARMUP=3           seconds at RATE before measuring (sent, not counted)
#   CONNS=64           keep-alive connections; when all are busy, requests
#                      wait in the generator's queue (and their latency grows)
#   LEVELS="warn info" hookrouter's --log-level, one measurement each
#   TARGET_P99_MS=5    the p99 hookrouter is checked against
#   BASE_PORT=19200    hookrouter, the peer and the limit on BASE_PORT+1..+3
#   KEEP_WORK=1        keep the work folder (logs, generator output)
#   RESULTS_OUT=FILE   also copy the raw results (one RESULT line per system)
# With the defaults a run takes about 2.5 minutes plus the build.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATE=${RATE:-2000}
SECS=${SECS:-30}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-64}
LEVELS=${LEVELS:-warn info}
TARGET_P99_MS=${TARGET_P99_MS:-5}
BASE_PORT=${BASE_PORT:-19200}
HR_PORT=$((BASE_PORT + 1))
REJECT_PORT=$((BASE_PORT + 2))
LIMIT_PORT=$((BASE_PORT + 3))
HR_URL="http://127.0.0.1:$HR_PORT/hooks/github"
REJECT_URL="http://127.0.0.1:$REJECT_PORT/hooks/deploy"
LIMIT_URL="http://127.0.0.1:$LIMIT_PORT/hooks/github"
RULES="$BENCH_DIR/rules/github-bench.yaml"

make_work latency

ensure_tools
build_all
copy_loadgen
make_payload
"$HOOKROUTER" check --rules "$RULES" >/dev/null || die "the bench rules do not check: $RULES"
log "payload: $PAYLOAD_BYTES bytes, $SIGNATURE"

for p in $HR_PORT $REJECT_PORT $LIMIT_PORT; do
    port_free "$p" || die "port $p is taken; set BASE_PORT"
done

start_bg "$WORK/peer-reject.log" webhook -hooks "$BENCH_DIR/peer/hooks-reject.yaml" -ip 127.0.0.1 -port "$REJECT_PORT"
REJECT_PID=$LAST_PID
start_bg "$WORK/limit.log" "$LIMIT" --listen "127.0.0.1:$LIMIT_PORT" --secret "$SECRET"
LIMIT_PID=$LAST_PID
wait_port "$REJECT_PORT"
wait_port "$LIMIT_PORT"

expect_status peer-reject "$REJECT_URL" 200
grep -q 'Hook rules were not satisfied' "$WORK/curl.body" || die "peer-reject did not take its reject path"
expect_status limit "$LIMIT_URL" 202

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# One measurement: the generator at RATE, then wait until the server is idle.
measure() {
    local name=$1 url=$2 status=$3 pid=$4 line load
    load=$(cut -d' ' -f1 /proc/loadavg)
    load_args "$url" "$status" "$RATE" "$SECS" "$CONNS" "$WARMUP"
    "$LOADGEN" "${LOAD_ARGS[@]}" >"$WORK/load-$name.out" 2>&1 ||
        die "the load generator failed: $(cat "$WORK/load-$name.out")"
    line=$(grep '^RESULT ' "$WORK/load-$name.out") || die "no RESULT from the load generator: $(cat "$WORK/load-$name.out")"
    settle "$pid" >/dev/null
    printf '%s\t%s\t%s\n' "$name" "$load" "$line" >>"$RESULTS"
    log "$(printf '%-16s' "$name") p50 $(field p50_ms "$line") ms, p99 $(field p99_ms "$line") ms, max $(field max_ms "$line") ms, achieved $(field achieved "$line") req/s, unexpected $(field unexpected "$line") (load=$load)"
}

log "open loop: $RATE req/s, ${SECS}s after ${WARMUP}s warm-up, $CONNS connections"
for level in $LEVELS; do
    start_hookrouter "$level" "$level" "$RULES"
    expect_status "hookrouter-$level" "$HR_URL" 202
    measure "hookrouter-$level" "$HR_URL" 202 "$HR_PID"
    stop_hookrouter
    sleep 1
done
measure peer-reject "$REJECT_URL" 200 "$REJECT_PID"
sleep 1
measure limit "$LIMIT_URL" 202 "$LIMIT_PID"

get() { awk -F'\t' -v s="$1" '$1 == s { print $3 }' "$RESULTS"; }
row() {
    local label=$1 line
    line=$(get "$2")
    printf '%-36s %9s %8s %8s %8s %9s %8s %9s %6s\n' "$label" "$(field achieved "$line")" \
        "$(field p50_ms "$line")" "$(field p90_ms "$line")" "$(field p99_ms "$line")" \
        "$(field p999_ms "$line")" "$(field max_ms "$line")" "$(field queue_p99_ms "$line")" \
        "$(field unexpected "$line")"
}
echo
echo "latency: open loop, $RATE req/s for ${SECS}s after a ${WARMUP}s warm-up, $CONNS keep-alive connections,"
echo "${PAYLOAD_BYTES}-byte signed push, unique X-GitHub-Delivery; ms from each request's due time to its full answer"
echo "load average at the start of each measurement: $(cut -f2 "$RESULTS" | tr '\n' ' ')"
printf '%-36s %9s %8s %8s %8s %9s %8s %9s %6s\n' system "req/s" p50 p90 p99 p99.9 max "queue p99" "unexp"
for level in $LEVELS; do row "hookrouter durable (log $level)" "hookrouter-$level"; done
row "adnanh/webhook reject path" peer-reject
row "bare limit (hyper+hmac+serde_json)" limit
echo
echo "(queue p99: due time to written, i.e. the generator's pacing jitter plus waiting for a free connection;"
echo " unexp: measured requests without the expected status, including transport errors and unanswered ones)"
echo
for level in $LEVELS; do
    line=$(get "hookrouter-$level")
    p99=$(field p99_ms "$line")
    ok=$(awk -v a="$p99" -v b="$TARGET_P99_MS" 'BEGIN { print (a <= b) ? "yes" : "NO" }')
    [[ $(field unexpected "$line") == 0 ]] || ok="NO (unexpected answers)"
    echo "hookrouter (log $level) p99 $p99 ms <= $TARGET_P99_MS ms at $RATE req/s: $ok"
done
if [[ -n ${RESULTS_OUT:-} ]]; then cp "$RESULTS" "$RESULTS_OUT"; fi
