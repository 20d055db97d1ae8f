#!/usr/bin/env bash
# Ingest throughput: hookrouter's durable ingest against adnanh/webhook (the
# peer), a bare hyper + hmac + serde_json server (the limit) and the same
# with a group-committed, fdatasync'd append of each body (the durable
# limit), in one run, alternating the systems round by round. See
# bench/README.md.
#
# usage: bench/ingest.sh            (ROUNDS=3 WRK_SECS=6 by default)
#        ROUNDS=5 KEEP_WORK=1 bench/ingest.sh
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-19180}
HR_PORT=$((BASE_PORT + 1))
EXEC_PORT=$((BASE_PORT + 2))
REJECT_PORT=$((BASE_PORT + 3))
LIMIT_PORT=$((BASE_PORT + 4))
DURABLE_PORT=$((BASE_PORT + 5))
HR_URL="http://127.0.0.1:$HR_PORT/hooks/github"
EXEC_URL="http://127.0.0.1:$EXEC_PORT/hooks/deploy"
REJECT_URL="http://127.0.0.1:$REJECT_PORT/hooks/deploy"
LIMIT_URL="http://127.0.0.1:$LIMIT_PORT/hooks/github"
DURABLE_URL="http://127.0.0.1:$DURABLE_PORT/hooks/github"

make_work ingest

ensure_tools
build_all
make_payload
make_wrk_script
mkdir -p "$BENCH_DIR/rules"
cat >"$BENCH_DIR/rules/github-bench.yaml" <<'EOF'
# Ingest benchmark: a signed GitHub push to main is stored and logs one line.
sources:
  - name: github
    provider: github
    secret: perfsecret

rules:
  - name: push-main
    source: github
    event: push
    match:
      $.ref: refs/heads/main
    actions:
      - log: "push to {{ body.repository.full_name }}@{{ body.after[:7] }} by {{ body.pusher.name }}"

tests:
  - name: a push to main is logged
    source: github
    headers: { X-GitHub-Event: push }
    body: { ref: refs/heads/main, after: 0123456789abcdef, repository: { full_name: acme/api }, pusher: { name: octocat } }
    expect: [push-main]
EOF
"$HOOKROUTER" check --rules "$BENCH_DIR/rules/github-bench.yaml" >/dev/null || die "the bench rules do not check"
# Diagnostic: the same rule with a ref that never matches, like the peer's
# reject path. hookrouter still verifies and durably stores every event, but
# plans no delivery, so nothing is leased, run or finished.
mkdir -p "$WORK/rules"
sed -e 's|\$.ref: refs/heads/main|$.ref: refs/heads/never|' -e '/^tests:/,$d' \
    "$BENCH_DIR/rules/github-bench.yaml" >"$WORK/rules/github-nomatch.yaml"
grep -q 'refs/heads/never' "$WORK/rules/github-nomatch.yaml" || die "could not write the no-match rules"
log "payload: $PAYLOAD_BYTES bytes, $SIGNATURE"

for p in $HR_PORT $EXEC_PORT $REJECT_PORT $LIMIT_PORT $DURABLE_PORT; do
    port_free "$p" || die "port $p is taken; set BASE_PORT"
done

# The peer and the limit are stateless: one process each for the whole run.
start_bg "$WORK/peer-exec.log" webhook -hooks "$BENCH_DIR/peer/hooks-exec.yaml" -ip 127.0.0.1 -port "$EXEC_PORT"
EXEC_PID=$LAST_PID
start_bg "$WORK/peer-reject.log" webhook -hooks "$BENCH_DIR/peer/hooks-reject.yaml" -ip 127.0.0.1 -port "$REJECT_PORT"
REJECT_PID=$LAST_PID
start_bg "$WORK/limit.log" "$LIMIT" --listen "127.0.0.1:$LIMIT_PORT" --secret "$SECRET"
LIMIT_PID=$LAST_PID
# Its append file is in $WORK, on the disk hookrouter's data file is on.
start_bg "$WORK/limit-durable.log" "$LIMIT" --listen "127.0.0.1:$DURABLE_PORT" --secret "$SECRET" --durable "$WORK/durable-append.bin"
DURABLE_PID=$LAST_PID
wait_port "$DURABLE_PORT"
wait_port "$EXEC_PORT"
wait_port "$REJECT_PORT"
wait_port "$LIMIT_PORT"

# hookrouter gets a fresh data file per measurement.
start_hookrouter warn check
expect_status hookrouter "$HR_URL" 202
stop_hookrouter
start_hookrouter warn check-nomatch "$WORK/rules/github-nomatch.yaml"
expect_status hookrouter-nomatch "$HR_URL" 202
stop_hookrouter
expect_status peer-exec "$EXEC_URL" 200
grep -q 'satisfied' "$WORK/curl.body" && die "peer-exec did not run its command"
expect_status peer-reject "$REJECT_URL" 200
grep -q 'Hook rules were not satisfied' "$WORK/curl.body" || die "peer-reject did not take its reject path"
expect_status limit "$LIMIT_URL" 202
expect_status limit-durable "$DURABLE_URL" 202

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# After wrk ends, wait until the measured server is idle before going on, so
# work it queued (the peer's commands, hookrouter's actions) does not run
# during the next measurement; the wait is reported as its tail.
measure() {
    local name=$1 url=$2 status=$3 pid=$4 line load tail
    load=$(cut -d' ' -f1 /proc/loadavg)
    line=$(run_wrk "$url" "$status")
    tail=$(settle "$pid")
    line="$line tail_s=$tail"
    printf '%s\t%s\t%s\t%s\n' "$round" "$name" "$load" "$line" >>"$RESULTS"
    log "round $round  $(printf '%-18s' "$name") $(field expected_rps "$line") req/s  (unexpected=$(field unexpected "$line"), socket_errors=$(field socket_errors "$line"), statuses=$(field statuses "$line"), p99=$(field p99_ms "$line")ms, busy ${tail}s after wrk, load=$load)"
}

SYSTEMS=(hookrouter hookrouter-info peer-reject peer-exec limit limit-durable hookrouter-nomatch)
for round in $(seq 1 "$ROUNDS"); do
    for sys in "${SYSTEMS[@]}"; do
        case $sys in
        hookrouter)
            start_hookrouter warn "r$round-warn"
            measure "$sys" "$HR_URL" 202 "$HR_PID"
            stop_hookrouter
            ;;
        hookrouter-info)
            start_hookrouter info "r$round-info"
            measure "$sys" "$HR_URL" 202 "$HR_PID"
            stop_hookrouter
            ;;
        hookrouter-nomatch)
            start_hookrouter warn "r$round-nomatch" "$WORK/rules/github-nomatch.yaml"
            measure "$sys" "$HR_URL" 202 "$HR_PID"
            stop_hookrouter
            ;;
        peer-reject) measure "$sys" "$REJECT_URL" 200 "$REJECT_PID" ;;
        peer-exec) measure "$sys" "$EXEC_URL" 200 "$EXEC_PID" ;;
        limit) measure "$sys" "$LIMIT_URL" 202 "$LIMIT_PID" ;;
        limit-durable) measure "$sys" "$DURABLE_URL" 202 "$DURABLE_PID" ;;
        esac
        sleep 1
    done
done

# Medians over the rounds, counting only responses with the expected status.
med() { awk -F'\t' -v s="$1" '$2 == s' "$RESULTS" | while IFS=$'\t' read -r _ _ _ line; do field expected_rps "$line"; done | median; }
tail_med() { awk -F'\t' -v s="$1" '$2 == s' "$RESULTS" | while IFS=$'\t' read -r _ _ _ line; do field tail_s "$line"; done | median; }
bad() { awk -F'\t' -v s="$1" '$2 == s' "$RESULTS" | while IFS=$'\t' read -r _ _ _ line; do echo $(($(field unexpected "$line") + $(field socket_errors "$line"))); done | awk '{s+=$1} END {print s+0}'; }

HR=$(med hookrouter)
HRI=$(med hookrouter-info)
REJ=$(med peer-reject)
EXE=$(med peer-exec)
LIM=$(med limit)
DUR=$(med limit-durable)
NOM=$(med hookrouter-nomatch)
echo
echo "ingest: wrk -t$WRK_THREADS -c$WRK_CONNS -d${WRK_SECS}s, $ROUNDS rounds, ${PAYLOAD_BYTES}-byte signed push, unique X-GitHub-Delivery"
echo "load average at start of each measurement: $(cut -f3 "$RESULTS" | tr '\n' ' ')"
printf '%-34s %10s %12s %12s\n' "system (median of $ROUNDS)" "req/s" "non-expected" "busy after"
printf '%-34s %10.0f %12s %11ss\n' "hookrouter durable (log warn)" "$HR" "$(bad hookrouter)" "$(tail_med hookrouter)"
printf '%-34s %10.0f %12s %11ss\n' "hookrouter durable (log info)" "$HRI" "$(bad hookrouter-info)" "$(tail_med hookrouter-info)"
printf '%-34s %10.0f %12s %11ss\n' "adnanh/webhook reject path" "$REJ" "$(bad peer-reject)" "$(tail_med peer-reject)"
printf '%-34s %10.0f %12s %11ss\n' "adnanh/webhook exec path" "$EXE" "$(bad peer-exec)" "$(tail_med peer-exec)"
printf '%-34s %10.0f %12s %11ss\n' "bare limit (hyper+hmac+serde_json)" "$LIM" "$(bad limit)" "$(tail_med limit)"
printf '%-34s %10.0f %12s %11ss\n' "durable limit (+ fdatasync'd append)" "$DUR" "$(bad limit-durable)" "$(tail_med limit-durable)"
printf '%-34s %10.0f %12s %11ss\n' "diag: hookrouter, no rule matches" "$NOM" "$(bad hookrouter-nomatch)" "$(tail_med hookrouter-nomatch)"
echo
printf '%-40s %6s %6s\n' ratio "warn" "info"
printf '%-40s %6s %6s\n' "hookrouter / peer-reject" "$(ratio "$HR" "$REJ")" "$(ratio "$HRI" "$REJ")"
printf '%-40s %6s %6s\n' "hookrouter / peer-exec" "$(ratio "$HR" "$EXE")" "$(ratio "$HRI" "$EXE")"
printf '%-40s %6s %6s\n' "hookrouter / limit" "$(ratio "$HR" "$LIM")" "$(ratio "$HRI" "$LIM")"
printf '%-40s %6s %6s\n' "hookrouter / durable limit" "$(ratio "$HR" "$DUR")" "$(ratio "$HRI" "$DUR")"
printf '%-40s %6s\n' "durable limit / limit" "$(ratio "$DUR" "$LIM")"
printf '%-40s %6s\n' "diag: hookrouter no-match / peer-reject" "$(ratio "$NOM" "$REJ")"
printf '%-40s %6s\n' "diag: hookrouter no-match / limit" "$(ratio "$NOM" "$LIM")"
echo
echo "per round (req/s with the expected status):"
awk -F'\t' '{print $1 "\t" $2 "\t" $4}' "$RESULTS" | while IFS=$'\t' read -r r s line; do
    printf '  round %s  %-19s %8.0f\n' "$r" "$s" "$(field expected_rps "$line")"
done
if [[ -n ${RESULTS_OUT:-} ]]; then cp "$RESULTS" "$RESULTS_OUT"; fi
