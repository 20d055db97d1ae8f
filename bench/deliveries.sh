#!/usr/bin/env bash
# Delivery throughput: how fast hookrouter works off a stored backlog of
# deliveries, for an HTTP action to a local keep-alive receiver and for a
# shell action running /bin/true; and adnanh/webhook's rate of /bin/true
# commands (one per request) in the same run. See bench/README.md.
#
# usage: bench/deliveries.sh        (ROUNDS=3 HTTP_EVENTS=50000 SHELL_EVENTS=20000)
#        ROUNDS=5 SHELL_EVENTS=10000 KEEP_WORK=1 bench/deliveries.sh
#
# Each hookrouter measurement has two phases on one data file:
#   1. load: hookrouter runs with a rule whose action is `/bin/sleep 3600` and
#      one worker, so nothing is delivered while wrk stores the events;
#      then it stops (SIGTERM), leaving every delivery in the store.
#   2. drain: hookrouter restarts on the same file with the measured action
#      under the same rule name, with nothing else arriving. The rate is
#      (deliveries - 1) / (time between the first and the last "Delivery
#      done." log line); for http the sink's count must reach the same number.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
HTTP_EVENTS=${HTTP_EVENTS:-50000}
SHELL_EVENTS=${SHELL_EVENTS:-20000}
WORKERS=${WORKERS:-64}
BASE_PORT=${BASE_PORT:-19190}
HR_PORT=$((BASE_PORT + 1))
EXEC_PORT=$((BASE_PORT + 2))
SINK_PORT=$((BASE_PORT + 5))
HR_URL="http://127.0.0.1:$HR_PORT/hooks/github"
EXEC_URL="http://127.0.0.1:$EXEC_PORT/hooks/deploy"

make_work deliveries

ensure_tools
build_all
make_payload
make_wrk_script

# Rule files: the same rule name and action index in all three, so stored
# deliveries of the load phase run with the drain phase's action.
rules() {
    local action=$1
    cat <<EOF
sources:
  - name: github
    provider: github
    secret: $SECRET
rules:
  - name: push-main
    source: github
    event: push
    match:
      \$.ref: refs/heads/main
    actions:
$action
EOF
}
# Rule files go in their own folder, away from the data files: the rule
# watcher would otherwise wake on every write to the data file.
mkdir -p "$WORK/rules"
rules '      - shell: ["/bin/sleep", "3600"]
        timeout: 2h' >"$WORK/rules/hold.yaml"
rules "      - http:
          url: http://127.0.0.1:$SINK_PORT/deliveries
          json: { repo: \"{{ body.repository.full_name }}\", after: \"{{ body.after }}\" }" >"$WORK/rules/http.yaml"
rules '      - shell: ["/bin/true"]' >"$WORK/rules/shell.yaml"
for f in hold http shell; do
    "$HOOKROUTER" check --rules "$WORK/rules/$f.yaml" >/dev/null || die "$f.yaml does not check"
done

for p in $HR_PORT $EXEC_PORT $SINK_PORT; do
    port_free "$p" || die "port $p is taken; set BASE_PORT"
done
start_bg "$WORK/peer-exec.log" webhook -hooks "$BENCH_DIR/peer/hooks-exec.yaml" -ip 127.0.0.1 -port "$EXEC_PORT"
EXEC_PID=$LAST_PID
start_bg "$WORK/sink.log" "$LIMIT" --sink --listen "127.0.0.1:$SINK_PORT"
wait_port "$EXEC_PORT"
wait_port "$SINK_PORT"
got=$(curl_status "$EXEC_URL" "check-$RANDOM")
[[ $got == 200 ]] || die "peer-exec answered $got"

# The sink's count, without starting a process per look.
sink_count() {
    local line n=""
    exec 5<>"/dev/tcp/127.0.0.1/$SINK_PORT" || return 1
    printf 'GET /count HTTP/1.0\r\nHost: sink\r\n\r\n' >&5
    while IFS= read -r line <&5 || [[ -n $line ]]; do n=$line; line=; done
    exec 5<&-
    printf '%s' "${n//$'\r'/}"
}
done_count() { grep -c 'Delivery done\.' "$1" || true; }
now() { date +%s.%N; }

# Phase 1: store $3 events whose deliveries wait.
load_backlog() {
    local data=$1 tag=$2 events=$3 line pid kids
    rm -f "$data"
    start_bg "$WORK/load-$tag.log" "$HOOKROUTER" --rules "$WORK/rules/hold.yaml" --listen "127.0.0.1:$HR_PORT" \
        --data "$data" --log-level warn --workers 1 --grace 1s
    pid=$LAST_PID
    wait_port "$HR_PORT"
    line=$(run_wrk "$HR_URL" 202 "$events" 60)
    LOADED=$(field expected "$line")
    kids=$(pgrep -P "$pid" || true)
    stop_pid "$pid"
    # kill_on_drop ends the held /bin/sleep; make sure of it.
    for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
    ((LOADED >= events)) || die "only $LOADED events stored: $line"
}

# Phase 2: drain with the action under test; sets DRAIN_N and DRAIN_SECS.
drain() {
    local data=$1 rules=$2 tag=$3 counter=$4 pid t0 last_change n prev=-1 now_t
    local log="$WORK/drain-$tag.log"
    start_bg "$log" "$HOOKROUTER" --rules "$rules" --listen "127.0.0.1:$HR_PORT" --data "$data" \
        --log-level info --workers "$WORKERS"
    pid=$LAST_PID
    wait_port "$HR_PORT"
    t0=$(now)
    last_change=$t0
    while :; do
        sleep 0.1
        if [[ $counter == sink ]]; then n=$(( $(sink_count) - SINK_BASE )); else n=$(done_count "$log"); fi
        now_t=$(now)
        if ((n != prev)); then prev=$n; last_change=$now_t; fi
        # Done when everything loaded is delivered and nothing moved for 1.5 s.
        if ((n >= LOADED)) && awk -v a="$now_t" -v b="$last_change" 'BEGIN { exit !(a - b > 1.5) }'; then break; fi
        if awk -v a="$now_t" -v b="$last_change" 'BEGIN { exit !(a - b > 30) }'; then
            log "drain $tag stalled at $n of $LOADED"
            break
        fi
    done
    stop_pid "$pid"
    DONE_IN_LOG=$(done_count "$log")
    FAILED_IN_LOG=$(grep -c 'Delivery failed\|Delivery dead' "$log" || true)
    DRAIN_N=$DONE_IN_LOG
    DRAIN_OBSERVED=$n
    # The clock: from the first to the last "Delivery done." line, by the
    # log's own timestamps (the polling above only tells when it is over).
    DRAIN_SECS=$(grep 'Delivery done\.' "$log" | awk '
        { split($1, a, "T"); split(a[2], t, ":"); s = t[1] * 3600 + t[2] * 60 + t[3]
          if (NR == 1) first = s; last = s }
        END { if (last < first) last += 86400; printf "%.3f", last - first }')
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$round" "$1" "$2" "$3" >>"$RESULTS"; }

for round in $(seq 1 "$ROUNDS"); do
    # hookrouter, http action to the sink.
    load_backlog "$WORK/http.redb" "r$round-http" "$HTTP_EVENTS"
    SINK_BASE=$(sink_count)
    drain "$WORK/http.redb" "$WORK/rules/http.yaml" "r$round-http" sink
    n=$DRAIN_N secs=$DRAIN_SECS
    rate=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.1f", (n - 1) / s }')
    record hookrouter-http "$rate" "delivered=$n loaded=$LOADED secs=$secs sink_count=$DRAIN_OBSERVED failed_lines=$FAILED_IN_LOG"
    ((DRAIN_OBSERVED == n)) || log "odd: the sink counted $DRAIN_OBSERVED requests for $n deliveries done"
    log "round $round  hookrouter http   $rate deliveries/s ($n of $LOADED in ${secs}s, load=$(cut -d' ' -f1 /proc/loadavg))"
    sleep 1

    # hookrouter, shell action /bin/true.
    load_backlog "$WORK/shell.redb" "r$round-shell" "$SHELL_EVENTS"
    drain "$WORK/shell.redb" "$WORK/rules/shell.yaml" "r$round-shell" log
    n=$DRAIN_N secs=$DRAIN_SECS
    rate=$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.1f", (n - 1) / s }')
    record hookrouter-shell "$rate" "delivered=$n loaded=$LOADED secs=$secs failed_lines=$FAILED_IN_LOG"
    log "round $round  hookrouter shell  $rate deliveries/s ($n of $LOADED in ${secs}s, load=$(cut -d' ' -f1 /proc/loadavg))"
    sleep 1

    # adnanh/webhook: one /bin/true per request. It answers before the
    # command ends, so commands keep running after wrk stops: its command
    # rate is the requests over the time until it is idle again.
    settle "$EXEC_PID" >/dev/null
    line=$(run_wrk "$EXEC_URL" 200)
    tail=$(settle "$EXEC_PID")
    cmds=$(field expected "$line")
    rate=$(awk -v n="$cmds" -v d="$WRK_SECS" -v t="$tail" 'BEGIN { printf "%.1f", n / (d + t) }')
    record peer-exec "$rate" "answered_rps=$(field expected_rps "$line") commands=$cmds busy_after_s=$tail unexpected=$(field unexpected "$line")"
    record peer-exec-answers "$(field expected_rps "$line")" ""
    log "round $round  peer exec         $rate commands/s ($cmds answered at $(field expected_rps "$line")/s, busy ${tail}s after wrk; unexpected=$(field unexpected "$line"), load=$(cut -d' ' -f1 /proc/loadavg))"
    sleep 1
done

med() { awk -F'\t' -v s="$1" '$2 == s { print $3 }' "$RESULTS" | median; }
HTTP=$(med hookrouter-http)
SHELL_RATE=$(med hookrouter-shell)
PEER=$(med peer-exec)
PEER_ANS=$(med peer-exec-answers)
echo
echo "deliveries: backlog of $HTTP_EVENTS (http) and $SHELL_EVENTS (shell) events, hookrouter --workers $WORKERS, $ROUNDS rounds"
printf '%-44s %10s\n' "system (median of $ROUNDS)" "per s"
printf '%-44s %10.0f\n' "hookrouter http action -> keep-alive sink" "$HTTP"
printf '%-44s %10.0f\n' "hookrouter shell action /bin/true" "$SHELL_RATE"
printf '%-44s %10.0f\n' "adnanh/webhook /bin/true, commands done" "$PEER"
printf '%-44s %10.0f\n' "adnanh/webhook exec path, answers (req/s)" "$PEER_ANS"
echo
printf '%-44s %6s\n' "hookrouter http / peer /bin/true" "$(ratio "$HTTP" "$PEER")"
printf '%-44s %6s\n' "hookrouter shell / peer /bin/true" "$(ratio "$SHELL_RATE" "$PEER")"
printf '%-44s %6s\n' "hookrouter shell / peer answers (req/s)" "$(ratio "$SHELL_RATE" "$PEER_ANS")"
echo
echo "per round:"
awk -F'\t' '{ printf "  round %s  %-17s %8.0f  %s\n", $1, $2, $3, $4 }' "$RESULTS"
if [[ -n ${RESULTS_OUT:-} ]]; then cp "$RESULTS" "$RESULTS_OUT"; fi
