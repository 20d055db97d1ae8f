#!/usr/bin/env bash
# Bursts and budgets: what `debounce:` and `limit:` cost on the ingest path,
# as a ratio against the same rule without them.
#
# usage: bench/bursts.sh             (ROUNDS=3 WRK_SECS=6 WRK_CONNS=32)
#        KEEP_WORK=1 bench/bursts.sh
#
# The ingest scenario of bench/ingest.sh (the signed push, wrk, a durable
# store, one log action), with three rule files taking turns round by round:
#   plain     the rule as is;
#   bursts    the same rule with `debounce:` keyed by the delivery id (each
#             event starts a burst of its own), an `over: drop` limit keyed
#             the same way (5/h: never full) and a shared `over: delay`
#             limit (1000000/s): every decision is taken, none drops;
#   coalesce  `debounce:` on the repository, which every event shares: each
#             event takes the place of the previous one, which ends
#             `coalesced` in the same commit (the most a burst writes).
# The figures are medians of expected_rps (202 answers per second).
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-19290}
HR_PORT=$((BASE_PORT + 1))
URL="http://127.0.0.1:$HR_PORT/hooks/github"

make_work bursts
ensure_tools
make_payload
make_wrk_script
log "building hookrouter (release)"
(cd "$REPO_DIR" && cargo build --release --quiet --bin hookrouter) || die "cargo build --release failed"
cp "$HOOKROUTER" "$WORK/hookrouter"
HOOKROUTER="$WORK/hookrouter"
port_free "$HR_PORT" || die "port $HR_PORT is taken; set BASE_PORT"

# rules EXTRA: the ingest rule, with EXTRA lines (rule fields) added.
rules() {
    cat <<EOF
sources:
  - name: github
    provider: github
    secret: $SECRET
limits:
  - { name: api, rate: 1000000/s, over: delay }
rules:
  - name: push-main
    source: github
    event: push
    match:
      \$.ref: refs/heads/main
$1
    actions:
      - log: "push to {{ body.repository.full_name }}@{{ body.after[:7] }} by {{ body.pusher.name }}"
EOF
}
mkdir -p "$WORK/rules"
rules "" >"$WORK/rules/plain.yaml"
rules '    debounce: { key: "{{ headers[\"x-github-delivery\"] }}", quiet: 1s, max_wait: 5s }
    limit: [api, { key: "{{ headers[\"x-github-delivery\"] }}", rate: 5/h, over: drop }]' \
    >"$WORK/rules/bursts.yaml"
rules '    debounce: { key: "{{ body.repository.full_name }}", quiet: 1s, max_wait: 5s }' \
    >"$WORK/rules/coalesce.yaml"
for f in "$WORK"/rules/*.yaml; do
    "$HOOKROUTER" check --rules "$f" >/dev/null || die "$f does not check"
done

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
VARIANTS=(plain bursts coalesce)
measure() {
    local name=$1 round=$2 line
    start_hookrouter warn "r$round-$name" "$WORK/rules/$name.yaml"
    expect_status "$name" "$URL" 202
    line=$(run_wrk "$URL" 202)
    settle "$HR_PID" >/dev/null
    stop_hookrouter
    printf '%s\t%s\t%s\n' "$round" "$name" "$(field expected_rps "$line")" >>"$RESULTS"
    log "round $round  $name  $(field expected_rps "$line") req/s"
}
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order, so no variant always gets the warmer machine.
    for i in 0 1 2; do
        measure "${VARIANTS[$(((i + round) % 3))]}" "$round"
    done
done

med() { awk -F'\t' -v n="$1" '$2 == n { print $3 }' "$RESULTS" | median; }
plain=$(med plain) bursts=$(med bursts) coalesce=$(med coalesce)
echo
echo "bursts: wrk -t$WRK_THREADS -c$WRK_CONNS -d${WRK_SECS}s, $ROUNDS rounds, rotating (load=$(cut -d' ' -f1 /proc/loadavg))"
printf '%-44s %10s %8s\n' variant "req/s" "/ plain"
printf '%-44s %10.0f %8s\n' "plain" "$plain" "1.00"
printf '%-44s %10.0f %8s\n' "debounce + drop limit + delay limit" "$bursts" "$(ratio "$bursts" "$plain")"
printf '%-44s %10.0f %8s\n' "debounce, every event coalescing" "$coalesce" "$(ratio "$coalesce" "$plain")"
