#!/usr/bin/env bash
# Crash soak: signed events stream into hookrouter (release build) while it is
# killed with `kill -9` at random moments and restarted on the same data file,
# KILLS times. Each event's rule calls a local receiver (bench/soak/receiver.py)
# that records every delivered event id. When the load stops and the queue has
# drained, every event that was answered 2xx must have been delivered at least
# once: lost must be 0. Duplicate deliveries (actions cut off by a kill run
# again) are counted and reported.
#
# usage: bench/soak.sh
#        KILLS=5 MIN_GAP=2 MAX_GAP=4 bench/soak.sh          a quick run
#
# Settings (environment):
#   KILLS=20          kill -9 / restart cycles
#   MIN_GAP=6 MAX_GAP=12   seconds of load between kills (random in between)
#   SENDERS=8         sender threads; each retries an event until it gets 2xx
#   RATE=400          events per second offered in all (0 = as fast as possible)
#   DRAIN_SECS=180    how long the last process may take to deliver the rest
#   PORT=19480        hookrouter's port; the receiver listens on PORT+1
#   SKIP_BUILD=1      use the existing target/release/hookrouter
#   KEEP_WORK=1       keep the work folder (logs, ids, data file)
# With the defaults a run takes about 3 to 5 minutes.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
HOOKROUTER="$REPO_DIR/target/release/hookrouter"
SOAK_DIR="$BENCH_DIR/soak"

KILLS=${KILLS:-20}
MIN_GAP=${MIN_GAP:-6}
MAX_GAP=${MAX_GAP:-12}
SENDERS=${SENDERS:-8}
RATE=${RATE:-400}
DRAIN_SECS=${DRAIN_SECS:-180}
PORT=${PORT:-19480}
RECV_PORT=$((PORT + 1))
SECRET=soak-secret

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v python3 >/dev/null || die "python3 is required"
command -v curl >/dev/null || die "curl is required"
((MAX_GAP >= MIN_GAP)) || die "MAX_GAP must be at least MIN_GAP"

# On the repository's file system (not a tmpfs): fsync costs what it costs.
mkdir -p "$REPO_DIR/target"
WORK=$(mktemp -d "$REPO_DIR/target/bench-soak.XXXXXX")
HR_PID=""
RECV_PID=""
LOAD_PID=""

cleanup() {
    local pid
    for pid in "$LOAD_PID" "$HR_PID" "$RECV_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ -n "${KEEP_WORK:-}" ]]; then
        log "work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# Wait (up to $2 seconds) until something answers HTTP on port $1.
wait_http() {
    local port=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

start_hookrouter() {
    "$HOOKROUTER" serve --rules "$WORK/rules.yaml" --listen "127.0.0.1:$PORT" \
        --data "$WORK/data.redb" --log-level warn >>"$WORK/hookrouter.log" 2>&1 &
    HR_PID=$!
    wait_http "$PORT" 30 || die "hookrouter did not start; see $WORK/hookrouter.log"
}

# A random number of tenths of a second in [$1, $2] seconds, as "S.T".
random_secs() {
    local tenths=$((($1 * 10) + RANDOM % (($2 - $1) * 10 + 1)))
    printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "building hookrouter (release)"
    (cd "$REPO_DIR" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x "$HOOKROUTER" ]] || die "$HOOKROUTER is missing"

cat >"$WORK/rules.yaml" <<EOF
# Crash soak: every push is delivered to the local receiver with its id.
sources:
  - name: soak
    provider: github
    secret: $SECRET

rules:
  - name: deliver
    source: soak
    event: push
    actions:
      - http:
          url: http://127.0.0.1:$RECV_PORT/deliver
          json: { id: "{{ event.id }}" }
        retry: { attempts: 100, backoff: 100ms, max_backoff: 2s }
EOF

python3 "$SOAK_DIR/receiver.py" --port "$RECV_PORT" --out "$WORK/delivered.txt" &
RECV_PID=$!
wait_http "$RECV_PORT" 10 || die "the receiver did not start"
start_hookrouter

log "load: $SENDERS senders, rate ${RATE}/s; $KILLS kills every ${MIN_GAP}-${MAX_GAP}s"
STARTED=$SECONDS
python3 "$SOAK_DIR/load.py" --url "http://127.0.0.1:$PORT/hooks/soak" --secret "$SECRET" \
    --senders "$SENDERS" --rate "$RATE" --stop "$WORK/stop" \
    --acked "$WORK/acked.txt" --stats "$WORK/load.json" \
    --max-secs $(((KILLS + 1) * MAX_GAP + 60)) &
LOAD_PID=$!

for ((k = 1; k <= KILLS; k++)); do
    sleep "$(random_secs "$MIN_GAP" "$MAX_GAP")"
    kill -0 "$LOAD_PID" 2>/dev/null || die "the load generator stopped early"
    kill -9 "$HR_PID"
    wait "$HR_PID" 2>/dev/null || true
    log "kill $k/$KILLS after $((SECONDS - STARTED))s; $(curl -s "http://127.0.0.1:$RECV_PORT/count" | tr -d '\n') deliveries so far"
    sleep "$(random_secs 0 1)"
    start_hookrouter
done
sleep "$(random_secs "$MIN_GAP" "$MAX_GAP")"
touch "$WORK/stop"
wait "$LOAD_PID" || die "the load generator failed"
LOAD_PID=""
LOAD_SECS=$((SECONDS - STARTED))

log "load stopped after ${LOAD_SECS}s; waiting for the queue to drain (up to ${DRAIN_SECS}s)"
set +e
python3 "$SOAK_DIR/check.py" --acked "$WORK/acked.txt" --delivered "$WORK/delivered.txt" \
    --wait "$DRAIN_SECS" --json "$WORK/result.json" >"$WORK/check.out"
VERDICT=$?
set -e

kill -TERM "$HR_PID" 2>/dev/null || true
wait "$HR_PID" 2>/dev/null || true
HR_PID=""
PANICS=$(grep -c "panicked" "$WORK/hookrouter.log" || true)

python3 - "$WORK/load.json" "$WORK/result.json" "$KILLS" "$LOAD_SECS" "$PANICS" <<'EOF'
import json, sys
load = json.load(open(sys.argv[1]))
res = json.load(open(sys.argv[2]))
kills, secs, panics = sys.argv[3], sys.argv[4], sys.argv[5]
print()
print("crash soak")
print(f"  kills (kill -9, restart)     {kills} over {secs}s of load")
print(f"  requests sent                {load['sent']} ({load['no_answer']} without an answer; statuses {load['statuses']})")
print(f"  events acknowledged (2xx)    {res['acknowledged']} ({load['retried_events']} needed a retry; {load['unacked_at_stop']} unacknowledged at stop)")
print(f"  events delivered             {res['delivered_ids']} in {res['deliveries']} deliveries")
print(f"  lost (acknowledged, never delivered)  {res['lost']}")
print(f"  duplicate deliveries         {res['duplicates']} ({res['duplicate_pct']}%)")
print(f"  delivered, never acknowledged {res['delivered_not_acknowledged']}")
print(f"  panics in the log            {panics}")
if res["lost"]:
    print(f"  lost ids (first 20): {res['lost_sample']}")
EOF
((PANICS == 0)) || die "hookrouter panicked; see the log (KEEP_WORK=1)"
((VERDICT == 0)) || die "acknowledged events were lost"
log "ok: no acknowledged event lost"
