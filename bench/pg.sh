#!/usr/bin/env bash
# Durable ingest on PostgreSQL: one replica against the same load on redb,
# against the engine's own limit (a bare INSERT … ON CONFLICT DO NOTHING loop
# with the batching hookrouter's committer reached), and two replicas against
# one, in one run, alternating round by round. Starts a throwaway PostgreSQL
# with scripts/pg-test-cluster.sh (on this disk, fsync on) and stops it at
# the end. See bench/README.md.
#
# usage: bench/pg.sh            (ROUNDS=3 WRK_SECS=6 by default)
#        ROUNDS=5 KEEP_WORK=1 bench/pg.sh
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-19300}
HR_PORT=$((BASE_PORT + 1))
PG_A=$((BASE_PORT + 2))
PG_B=$((BASE_PORT + 3))
ADMIN_A=$((BASE_PORT + 4))
ADMIN_B=$((BASE_PORT + 5))
RULES="$BENCH_DIR/rules/github-bench.yaml"

make_work pg
PG_DIR=
stop_pg() {
    if [[ -n $PG_DIR ]]; then "$REPO_DIR/scripts/pg-test-cluster.sh" stop "$PG_DIR"; fi
}
trap 'cleanup; stop_pg' EXIT

ensure_tools
command -v pgbench >/dev/null || die "pgbench missing (Debian: postgresql-client)"
build_all
make_payload
make_wrk_script
[[ -f $RULES ]] || die "missing $RULES (bench/ingest.sh writes it)"
for p in $HR_PORT $PG_A $PG_B $ADMIN_A $ADMIN_B; do
    port_free "$p" || die "port $p is taken; set BASE_PORT"
done

eval "$("$REPO_DIR/scripts/pg-test-cluster.sh" start)"
PG_DIR=$HOOKROUTER_PG_DIR
PG_URL=$HOOKROUTER_TEST_PG
log "PostgreSQL at $PG_URL ($(psql "$PG_URL" -XAtqc 'SHOW server_version'), fsync=$(psql "$PG_URL" -XAtqc 'SHOW fsync'), synchronous_commit=$(psql "$PG_URL" -XAtqc 'SHOW synchronous_commit'))"

# A fresh schema per measurement, as redb gets a fresh file: tables that
# grew in an earlier round would make later rounds slower.
fresh_schema() {
    PGOPTIONS=-cclient_min_messages=warning psql "$PG_URL" -XAtqc "DROP SCHEMA IF EXISTS $1 CASCADE; CREATE SCHEMA $1" >/dev/null
    echo "$PG_URL?options=-csearch_path%3D$1"
}
drop_schema() { PGOPTIONS=-cclient_min_messages=warning psql "$PG_URL" -XAtqc "DROP SCHEMA IF EXISTS $1 CASCADE" >/dev/null; }

# start_replica PORT ADMIN URL TAG: hookrouter on PostgreSQL; pid in LAST_PID.
# Started in a folder of its own: on PostgreSQL, the shell actions' files
# directory is `hookrouter-files` in the working directory.
start_replica() {
    local port=$1 admin=$2 url=$3 tag=$4
    mkdir -p "$WORK/files-$tag"
    cd "$WORK/files-$tag" || die "cannot enter $WORK/files-$tag"
    start_bg "$WORK/hookrouter-$tag.log" "$HOOKROUTER" --rules "$RULES" \
        --listen "127.0.0.1:$port" --admin "127.0.0.1:$admin" --store "$url" \
        --log-level warn
    cd - >/dev/null || die "cannot return from $WORK/files-$tag"
    wait_port "$port"
}

# Events per commit the committer reached: the batch-size histogram's sum
# over its count, from /metrics.
batch_size() {
    curl -s "http://127.0.0.1:$1/metrics" | awk '
        /^hookrouter_store_commit_batch_size_sum / { s = $2 }
        /^hookrouter_store_commit_batch_size_count / { c = $2 }
        END { if (c > 0) printf "%.1f", s / c; else print "nan" }'
}

# The engine's limit: what hookrouter's committer writes per event (a dedup
# key with ON CONFLICT, the event row with a body of the push's size, a
# delivery row), BATCH events per transaction with synchronous_commit on,
# from one client, as one committer does.
cat >"$WORK/insert.sql" <<EOF
BEGIN;
SET LOCAL synchronous_commit = on;
WITH k AS (
    SELECT gen_random_uuid()::text AS key FROM generate_series(1, :batch)
), d AS (
    INSERT INTO hookrouter_dedup (key, event_key, until_ms)
    SELECT convert_to(key, 'UTF8'), key, 9000000000000 FROM k
    ON CONFLICT (key) DO NOTHING RETURNING event_key
), e AS (
    INSERT INTO hookrouter_events (key, received_ms, dedup_key, row_json)
    SELECT event_key, 0, convert_to(event_key, 'UTF8'), convert_to(repeat('x', $PAYLOAD_BYTES + 300), 'UTF8') FROM d
    RETURNING key
)
INSERT INTO hookrouter_deliveries (event_key, state, due_at_ms, created_ms, record)
SELECT key, 'pending', 0, 0, '{"rule":"push-main","action":0,"kind":"log","list":"actions"}'::json FROM e;
COMMIT;
EOF

# Diagnostic: the same rows and batching, one statement per row and table
# (three round trips per event), as hookrouter's committer sent them
# before it sent a batch as one statement per table.
# write_row_script BATCH writes it to $WORK/insert-rows.sql.
write_row_script() {
    local i f="$WORK/insert-rows.sql"
    printf 'BEGIN;\nSET LOCAL synchronous_commit = on;\n' >"$f"
    for i in $(seq 1 "$1"); do
        cat >>"$f" <<EOF
\set r$i random(1, 1000000000000000)
INSERT INTO hookrouter_dedup (key, event_key, until_ms) VALUES (convert_to('k' || :r$i, 'UTF8'), 'k' || :r$i, 9000000000000) ON CONFLICT (key) DO NOTHING RETURNING 1;
INSERT INTO hookrouter_events (key, received_ms, dedup_key, row_json) VALUES ('k' || :r$i, 0, convert_to('k' || :r$i, 'UTF8'), convert_to(repeat('x', $PAYLOAD_BYTES + 300), 'UTF8'));
INSERT INTO hookrouter_deliveries (event_key, state, due_at_ms, created_ms, record) VALUES ('k' || :r$i, 'pending', 0, 0, '{"rule":"push-main","action":0,"kind":"log","list":"actions"}'::json) RETURNING id;
EOF
    done
    printf 'COMMIT;\n' >>"$f"
}

# run_insert_limit URL BATCH [SCRIPT]: events/s of the bare loop for WRK_SECS.
run_insert_limit() {
    local url=$1 batch=$2 script=${3:-$WORK/insert.sql} tps
    tps=$(pgbench -n -c1 -j1 -T "$WRK_SECS" -f "$script" -D batch="$batch" "$url" 2>&1 |
        sed -n 's/^tps = \([0-9.]*\) .*/\1/p')
    [[ -n $tps ]] || die "pgbench printed no tps"
    awk -v t="$tps" -v b="$batch" 'BEGIN { printf "%.1f", t * b }'
}

# run_wrk2 URL_A URL_B: wrk split over two replicas (half the connections
# each, at once); prints the summed expected req/s and the unexpected count.
run_wrk2() {
    local half=$((WRK_CONNS / 2)) nonce
    nonce="r$(date +%s%N)"
    wrk -t1 -c"$half" -d"${WRK_SECS}s" -s "$WORK/push.lua" "$1" -- "$nonce-a" 202 0 >"$WORK/wrk-a.out" 2>&1 &
    local a=$!
    wrk -t1 -c"$half" -d"${WRK_SECS}s" -s "$WORK/push.lua" "$2" -- "$nonce-b" 202 0 >"$WORK/wrk-b.out" 2>&1 &
    local b=$!
    wait "$a" || die "wrk failed: $(cat "$WORK/wrk-a.out")"
    wait "$b" || die "wrk failed: $(cat "$WORK/wrk-b.out")"
    local la lb
    la=$(grep '^BENCH ' "$WORK/wrk-a.out") || die "wrk printed no result"
    lb=$(grep '^BENCH ' "$WORK/wrk-b.out") || die "wrk printed no result"
    printf 'BENCH expected_rps=%s unexpected=%s a_rps=%s b_rps=%s\n' \
        "$(awk -v x="$(field expected_rps "$la")" -v y="$(field expected_rps "$lb")" 'BEGIN { printf "%.1f", x + y }')" \
        "$(($(field unexpected "$la") + $(field unexpected "$lb") + $(field socket_errors "$la") + $(field socket_errors "$lb")))" \
        "$(field expected_rps "$la")" "$(field expected_rps "$lb")"
}

# Each system answers one request with 202 before it is measured.
start_hookrouter warn check
expect_status redb "http://127.0.0.1:$HR_PORT/hooks/github" 202
stop_hookrouter
URL=$(fresh_schema bench_check)
start_replica "$PG_A" "$ADMIN_A" "$URL" check
PID=$LAST_PID
expect_status postgres "http://127.0.0.1:$PG_A/hooks/github" 202
stop_pid "$PID"
drop_schema bench_check

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
record() {
    printf '%s\t%s\t%s\t%s\n' "$round" "$1" "$(cut -d' ' -f1 /proc/loadavg)" "$2" >>"$RESULTS"
    log "round $round  $(printf '%-16s' "$1") $(field expected_rps "$2") /s  ($2)"
}

BATCH=
for round in $(seq 1 "$ROUNDS"); do
    # redb, the default store.
    start_hookrouter warn "r$round-redb"
    line=$(run_wrk "http://127.0.0.1:$HR_PORT/hooks/github" 202)
    settle "$HR_PID" >/dev/null
    stop_hookrouter
    record redb "$line"
    sleep 1

    # One replica on PostgreSQL.
    URL=$(fresh_schema "bench_r${round}_one")
    start_replica "$PG_A" "$ADMIN_A" "$URL" "r$round-one"
    PID=$LAST_PID
    line=$(run_wrk "http://127.0.0.1:$PG_A/hooks/github" 202)
    settle "$PID" >/dev/null
    BATCH=$(batch_size "$ADMIN_A")
    stop_pid "$PID"
    record pg-one "$line batch=$BATCH"
    drop_schema "bench_r${round}_one"
    sleep 1

    # The engine's limit, at the batch size the replica just reached.
    URL=$(fresh_schema "bench_r${round}_limit")
    "$HOOKROUTER" migrate --store "$URL" >/dev/null
    B=$(awk -v b="$BATCH" 'BEGIN { b = int(b + 0.5); print (b < 1 ? 1 : b) }')
    rate=$(run_insert_limit "$URL" "$B")
    record pg-insert-limit "BENCH expected_rps=$rate batch=$B"
    drop_schema "bench_r${round}_limit"
    sleep 1
    URL=$(fresh_schema "bench_r${round}_rows")
    "$HOOKROUTER" migrate --store "$URL" >/dev/null
    write_row_script "$B"
    rate=$(run_insert_limit "$URL" "$B" "$WORK/insert-rows.sql")
    record pg-insert-rows "BENCH expected_rps=$rate batch=$B"
    drop_schema "bench_r${round}_rows"
    sleep 1

    # Two replicas on one database, the load split between them.
    URL=$(fresh_schema "bench_r${round}_two")
    start_replica "$PG_A" "$ADMIN_A" "$URL" "r$round-two-a"
    PA=$LAST_PID
    start_replica "$PG_B" "$ADMIN_B" "$URL" "r$round-two-b"
    PB=$LAST_PID
    line=$(run_wrk2 "http://127.0.0.1:$PG_A/hooks/github" "http://127.0.0.1:$PG_B/hooks/github")
    settle "$PA" >/dev/null
    settle "$PB" >/dev/null
    line="$line batch_a=$(batch_size "$ADMIN_A") batch_b=$(batch_size "$ADMIN_B")"
    stop_pid "$PA"
    stop_pid "$PB"
    record pg-two "$line"
    drop_schema "bench_r${round}_two"
    sleep 1
done

med() { awk -F'\t' -v s="$1" '$2 == s' "$RESULTS" | while IFS=$'\t' read -r _ _ _ line; do field expected_rps "$line"; done | median; }
bad() { awk -F'\t' -v s="$1" '$2 == s' "$RESULTS" | while IFS=$'\t' read -r _ _ _ line; do field unexpected "$line"; done | awk '{s+=$1} END {print s+0}'; }
REDB=$(med redb)
ONE=$(med pg-one)
LIM=$(med pg-insert-limit)
TWO=$(med pg-two)
ROWS=$(med pg-insert-rows)
echo
echo "pg: wrk -t$WRK_THREADS -c$WRK_CONNS -d${WRK_SECS}s (two replicas: two wrk -t1 -c$((WRK_CONNS / 2)) at once), $ROUNDS rounds, ${PAYLOAD_BYTES}-byte signed push, log action, --log-level warn"
echo "load average at start of each measurement: $(cut -f3 "$RESULTS" | tr '\n' ' ')"
printf '%-46s %10s %12s\n' "system (median of $ROUNDS)" "events/s" "non-expected"
printf '%-46s %10.0f %12s\n' "hookrouter on redb" "$REDB" "$(bad redb)"
printf '%-46s %10.0f %12s\n' "hookrouter on PostgreSQL, one replica" "$ONE" "$(bad pg-one)"
printf '%-46s %10.0f %12s\n' "hookrouter on PostgreSQL, two replicas" "$TWO" "$(bad pg-two)"
printf '%-46s %10.0f\n' "bare INSERT ... ON CONFLICT loop, same batch" "$LIM"
printf '%-46s %10.0f\n' "diag: the same, one statement per row" "$ROWS"
echo
printf '%-40s %6s\n' "PostgreSQL one replica / redb" "$(ratio "$ONE" "$REDB")"
printf '%-40s %6s\n' "PostgreSQL one replica / INSERT limit" "$(ratio "$ONE" "$LIM")"
printf '%-40s %6s\n' "two replicas / one replica" "$(ratio "$TWO" "$ONE")"
printf '%-40s %6s\n' "diag: one replica / per-row statements" "$(ratio "$ONE" "$ROWS")"
echo
echo "per round:"
while IFS=$'\t' read -r r s l line; do
    printf '  round %s  %-16s load %-5s %s\n' "$r" "$s" "$l" "$line"
done <"$RESULTS"
if [[ -n ${RESULTS_OUT:-} ]]; then cp "$RESULTS" "$RESULTS_OUT"; fi
