#!/usr/bin/env bash
# Groups: the cost of `group: {key, limit: 1, on_busy: queue}` on delivery
# throughput, and whether each key's deliveries run in arrival order.
#
# usage: bench/groups.sh           (EVENTS=1000 KEYS=100 SLEEP=0.01 WORKERS=64)
#        KEEP_WORK=1 bench/groups.sh
#
# The load: EVENTS signed pushes, event i carrying key `k(i mod KEYS)` and
# sequence number i, sent in order over one keep-alive connection. The
# action is `sh -c 'echo "$KEY $SEQ" >> order.txt; sleep $SLEEP'`, once with
# the group on the key and once without. Each variant has two phases on one
# data file, as in deliveries.sh:
#   1. load: the same rule name, action index and group, with the action
#      `/bin/sleep 3600` and one worker, so the events are stored (with their
#      group keys, which are rendered at ingest) and nothing is delivered;
#      then hookrouter stops, leaving every delivery in the store.
#   2. drain: hookrouter restarts on that file with the measured action.
#      The rate is (deliveries - 1) / (time from the first to the last
#      "Delivery done." log line), so the sender's speed is not measured.
# Per key, the sequence numbers in order.txt must ascend with the group.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

EVENTS=${EVENTS:-1000}
KEYS=${KEYS:-100}
SLEEP=${SLEEP:-0.01}
WORKERS=${WORKERS:-64}
BASE_PORT=${BASE_PORT:-19220}
HR_PORT=$((BASE_PORT + 1))
HR_URL="http://127.0.0.1:$HR_PORT/hooks/github"

make_work groups
command -v curl >/dev/null || die "curl is missing"
command -v openssl >/dev/null || die "openssl is missing"
log "building hookrouter (release)"
(cd "$REPO_DIR" && cargo build --release --quiet) || die "cargo build --release failed"
cp "$HOOKROUTER" "$WORK/hookrouter"
HOOKROUTER="$WORK/hookrouter"
port_free "$HR_PORT" || die "port $HR_PORT is taken; set BASE_PORT"

# The bodies, their signatures and one curl config sending them all in
# order on one connection.
log "signing $EVENTS bodies"
mkdir -p "$WORK/bodies"
: >"$WORK/send.curl"
for i in $(seq 0 $((EVENTS - 1))); do
    f="$WORK/bodies/$i.json"
    printf '{"ref":"refs/heads/main","k":"k%d","seq":%d}' $((i % KEYS)) "$i" >"$f"
    sig=$(openssl dgst -sha256 -hmac "$SECRET" -r <"$f" | cut -d' ' -f1)
    cat >>"$WORK/send.curl" <<EOF
url = "$HR_URL"
header = "Content-Type: application/json"
header = "X-GitHub-Event: push"
header = "X-Hub-Signature-256: sha256=$sig"
header = "X-GitHub-Delivery: groups-$i"
data-binary = "@$f"
output = "/dev/null"
write-out = "%{http_code}\n"
next
EOF
done
# A `next` ends each transfer but the last.
sed -i '$d' "$WORK/send.curl"

# rules ACTION GROUP: the rule file; GROUP is a `group:` line or empty.
rules() {
    cat <<EOF
sources:
  - name: github
    provider: github
    secret: $SECRET
rules:
  - name: work
    source: github
    event: push
    actions:
      - shell: $1
        timeout: 2h
$2
EOF
}
GROUP='        group: { key: "{{ body.k }}", limit: 1, on_busy: queue }'
HOLD='["/bin/sleep", "3600"]'
RUN="['/bin/sh', '-c', 'echo \"\$0 \$1\" >> $WORK/order.txt; sleep $SLEEP', '{{ body.k }}', '{{ body.seq }}']"
mkdir -p "$WORK/rules"
rules "$HOLD" "$GROUP" >"$WORK/rules/hold-groups.yaml"
rules "$RUN" "$GROUP" >"$WORK/rules/run-groups.yaml"
rules "$HOLD" "" >"$WORK/rules/hold-plain.yaml"
rules "$RUN" "" >"$WORK/rules/run-plain.yaml"
for f in "$WORK"/rules/*.yaml; do
    "$HOOKROUTER" check --rules "$f" >/dev/null || die "$f does not check"
done

done_count() { grep -c 'Delivery done\.' "$1" || true; }

# variant TAG: load, then drain; sets RATE, SECS and DONE.
variant() {
    local tag=$1 data="$WORK/$1.redb" pid kids codes n prev=-1 still=0
    rm -f "$data" "$WORK/order.txt"
    start_bg "$WORK/load-$tag.log" "$HOOKROUTER" --rules "$WORK/rules/hold-$tag.yaml" \
        --listen "127.0.0.1:$HR_PORT" --data "$data" --log-level warn --workers 1 --grace 1s
    pid=$LAST_PID
    wait_port "$HR_PORT"
    codes=$(curl -s -K "$WORK/send.curl" | sort | uniq -c | tr -s ' ' | tr '\n' ',')
    [[ $codes == " $EVENTS 202," ]] || die "$tag: answers were $codes"
    kids=$(pgrep -P "$pid" || true)
    stop_pid "$pid"
    # The held /bin/sleep is hookrouter's child: end it by its pid.
    for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done

    : >"$WORK/order.txt"
    local log="$WORK/drain-$tag.log"
    start_bg "$log" "$HOOKROUTER" --rules "$WORK/rules/run-$tag.yaml" --listen "127.0.0.1:$HR_PORT" \
        --data "$data" --log-level info --workers "$WORKERS"
    pid=$LAST_PID
    # Done when every delivery is done, or nothing moved for 30 s.
    while :; do
        sleep 0.2
        n=$(done_count "$log")
        ((n >= EVENTS)) && break
        if ((n == prev)); then still=$((still + 1)); else still=0; prev=$n; fi
        ((still < 150)) || { log "$tag: stalled at $n of $EVENTS"; break; }
    done
    stop_pid "$pid"
    DONE=$(done_count "$log")
    SECS=$(grep 'Delivery done\.' "$log" | awk '
        { split($1, a, "T"); split(a[2], t, ":"); s = t[1] * 3600 + t[2] * 60 + t[3]
          if (NR == 1) first = s; last = s }
        END { if (last < first) last += 86400; printf "%.3f", last - first }')
    RATE=$(awk -v n="$DONE" -v s="$SECS" 'BEGIN { printf "%.1f", (n - 1) / s }')
    log "$tag: $DONE of $EVENTS done in ${SECS}s: $RATE deliveries/s (load=$(cut -d' ' -f1 /proc/loadavg))"
}

# Per key, the sequence numbers as order.txt lists them must ascend.
# Prints how many keys saw one out of order.
out_of_order() {
    awk '{ if (($1 in last) && $2 < last[$1]) bad[$1] = 1; last[$1] = $2 }
         END { n = 0; for (k in bad) n++; print n }' "$WORK/order.txt"
}

variant groups
GROUPS_RATE=$RATE GROUPS_SECS=$SECS GROUPS_DONE=$DONE
GROUPS_LINES=$(wc -l <"$WORK/order.txt")
GROUPS_BAD=$(out_of_order)
cp "$WORK/order.txt" "$WORK/order-groups.txt"
sleep 1
variant plain
PLAIN_RATE=$RATE PLAIN_SECS=$SECS PLAIN_DONE=$DONE
PLAIN_LINES=$(wc -l <"$WORK/order.txt")
PLAIN_BAD=$(out_of_order)

echo
echo "groups: $EVENTS events on $KEYS keys, shell action with sleep $SLEEP, --workers $WORKERS"
printf '%-34s %8s %8s %8s %14s\n' variant "per s" secs done "keys disorder"
printf '%-34s %8.0f %8s %8s %14s\n' "group {key, limit: 1, queue}" "$GROUPS_RATE" "$GROUPS_SECS" "$GROUPS_DONE" "$GROUPS_BAD"
printf '%-34s %8.0f %8s %8s %14s\n' "no group" "$PLAIN_RATE" "$PLAIN_SECS" "$PLAIN_DONE" "$PLAIN_BAD"
printf '%-34s %8s\n' "throughput groups / no groups" "$(ratio "$GROUPS_RATE" "$PLAIN_RATE")"
((GROUPS_LINES == EVENTS)) || die "the group run wrote $GROUPS_LINES lines for $EVENTS events"
((PLAIN_LINES == EVENTS)) || die "the plain run wrote $PLAIN_LINES lines for $EVENTS events"
((GROUPS_BAD == 0)) || die "$GROUPS_BAD keys ran out of order with the group"
