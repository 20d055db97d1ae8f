#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests that need one.
#
#   eval "$(scripts/pg-test-cluster.sh start)"   # prints export lines
#   cargo test
#   scripts/pg-test-cluster.sh stop "$HOOKROUTER_PG_DIR"
#
# `start` initialises a cluster in a new temporary folder (owned by the
# `postgres` user when run as root, since initdb refuses root), starts it on a
# free loopback port with trust authentication and no fsync of the initdb
# files, and prints `export HOOKROUTER_TEST_PG=…` and
# `export HOOKROUTER_PG_DIR=…`. `stop DIR` stops that cluster and deletes the
# folder. `halt DIR` stops the server (`-m fast`) and keeps the folder;
# `resume DIR` starts it again on the same port (tests of a database that
# goes away use them). Nothing outside the folder is touched.
set -euo pipefail

pgbin() {
    if command -v pg_ctl >/dev/null 2>&1 && [ -z "${PGBIN:-}" ]; then
        dirname "$(command -v pg_ctl)"
        return
    fi
    if [ -n "${PGBIN:-}" ]; then
        echo "$PGBIN"
        return
    fi
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$found" ]; then
        echo "no PostgreSQL binaries found (install the postgresql package or set PGBIN)" >&2
        exit 1
    fi
    echo "$found"
}

# Runs a PostgreSQL binary as the owner of the cluster folder.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 - <<'PY' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
PY
}

start() {
    local bin dir port
    bin=$(pgbin)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/hookrouter-pg.XXXXXX")
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        exit 1
    }
    port=$(free_port)
    echo "$port" >"$dir/port"
    serve "$bin" "$dir" || {
        cat "$dir/server.log" >&2 || true
        rm -rf "$dir"
        exit 1
    }
    echo "export HOOKROUTER_TEST_PG=postgres://postgres@127.0.0.1:$port/postgres"
    echo "export HOOKROUTER_PG_DIR=$dir"
}

# Starts the cluster in $2 on the port recorded in it.
serve() {
    as_owner "$1/pg_ctl" -D "$2/data" -l "$2/server.log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $(cat "$2/port") -k $2" start >/dev/null
}

made_by_start() {
    case "${1:-}" in
    */hookrouter-pg.*) [ -d "$1" ] ;;
    *) false ;;
    esac
}

halt() {
    made_by_start "${1:-}" || { echo "usage: $0 halt DIR" >&2; exit 1; }
    as_owner "$(pgbin)/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null
}

resume() {
    made_by_start "${1:-}" || { echo "usage: $0 resume DIR" >&2; exit 1; }
    serve "$(pgbin)" "$1" || { cat "$1/server.log" >&2; exit 1; }
}

stop() {
    local dir=${1:-${HOOKROUTER_PG_DIR:-}}
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        echo "usage: $0 stop DIR (the HOOKROUTER_PG_DIR printed by start)" >&2
        exit 1
    fi
    case "$dir" in
    */hookrouter-pg.*) ;;
    *)
        echo "refusing to delete $dir: not a folder made by start" >&2
        exit 1
        ;;
    esac
    as_owner "$(pgbin)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

case "${1:-}" in
start) start ;;
stop) stop "${2:-}" ;;
halt) halt "${2:-}" ;;
resume) resume "${2:-}" ;;
*)
    echo "usage: $0 start | stop DIR | halt DIR | resume DIR" >&2
    exit 2
    ;;
esac
