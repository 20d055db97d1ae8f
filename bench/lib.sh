# Shared helpers of bench/ingest.sh and bench/deliveries.sh (sourced, not run).
# shellcheck shell=bash

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
HOOKROUTER="$REPO_DIR/target/release/hookrouter"
LIMIT="$BENCH_DIR/limit/target/release/hookrouter-bench-limit"
SECRET=perfsecret

# wrk settings of the scenario (see bench/README.md).
WRK_THREADS=${WRK_THREADS:-1}
WRK_CONNS=${WRK_CONNS:-32}
WRK_SECS=${WRK_SECS:-6}

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Install wrk and webhook (adnanh/webhook) from Debian if missing.
ensure_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    command -v webhook >/dev/null || missing+=(webhook)
    command -v curl >/dev/null || missing+=(curl)
    command -v openssl >/dev/null || missing+=(openssl)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Build both, then run copies from $WORK: a later build into target/ (by
# anyone) must not swap the binary between rounds of one run.
build_all() {
    log "building hookrouter (release)"
    (cd "$REPO_DIR" && cargo build --release --quiet) || die "cargo build --release failed"
    log "building bench/limit (release)"
    (cd "$BENCH_DIR/limit" && cargo build --release --quiet) || die "building bench/limit failed"
    cp "$HOOKROUTER" "$WORK/hookrouter"
    cp "$LIMIT" "$WORK/limit"
    HOOKROUTER="$WORK/hookrouter"
    LIMIT="$WORK/limit"
    local rev
    rev=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)
    git -C "$REPO_DIR" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || rev="$rev+local changes"
    log "hookrouter at $rev"
}

# The compact GitHub push payload (~1.9 KB: repository, pusher, 5 commits)
# in $WORK/push.json and its signature in $WORK/signature.
make_payload() {
    local f="$WORK/push.json" i sha commits="" sep=""
    for i in 1 2 3 4 5; do
        sha=$(printf 'commit-%d' "$i" | sha1sum | cut -c1-40)
        commits+="$sep"'{"id":"'"$sha"'","message":"Fix the parser for case '"$i"'","timestamp":"2025-01-0'"$i"'T10:00:00Z","url":"https://github.com/acme/api/commit/'"$sha"'","author":{"name":"Octo Cat","email":"octocat@example.com"},"added":[],"removed":[],"modified":["src/parser.rs"]}'
        sep=","
    done
    printf '%s' '{"ref":"refs/heads/main","before":"'"$(printf before | sha1sum | cut -c1-40)"'","after":"'"$sha"'","repository":{"id":123456,"name":"api","full_name":"acme/api","private":false,"owner":{"login":"acme","id":4242},"html_url":"https://github.com/acme/api","default_branch":"main"},"pusher":{"name":"octocat","email":"octocat@example.com"},"commits":['"$commits"']}' >"$f"
    SIGNATURE="sha256=$(openssl dgst -sha256 -hmac "$SECRET" -r <"$f" | cut -d' ' -f1)"
    printf '%s\n' "$SIGNATURE" >"$WORK/signature"
    PAYLOAD_BYTES=$(wc -c <"$f")
}

# The wrk script: fixed body and signature, a fresh X-GitHub-Delivery per
# request, statuses counted. Arguments after `--`: a nonce for the ids, the
# expected status, and optionally a request count after which wrk stops.
make_wrk_script() {
    cat >"$WORK/push.lua" <<EOF
local f = assert(io.open("$WORK/push.json", "rb"))
local payload = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = payload
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "GitHub-Hookshot/bench"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "$SIGNATURE"

local threads = {}
local n_thread = 0
function setup(thread)
  n_thread = n_thread + 1
  thread:set("tid", n_thread)
  table.insert(threads, thread)
end

local prefix, expected, stop_after
local seq, got, other = 0, 0, 0
function init(args)
  prefix = string.format("%s-%d-", args[1] or "run", tid)
  expected = tonumber(args[2] or "200")
  stop_after = tonumber(args[3] or "0")
  statuses = {}
end

function request()
  seq = seq + 1
  wrk.headers["X-GitHub-Delivery"] = prefix .. seq
  return wrk.format()
end

function response(status, headers, body)
  local k = tostring(status)
  statuses[k] = (statuses[k] or 0) + 1
  if status == expected then got = got + 1 else other = other + 1 end
  ok_count, other_count = got, other
  if stop_after > 0 and got >= stop_after then
    -- Tell run_wrk to end the run now (wrk would otherwise sleep out -d).
    local m = io.open("$WORK/wrk.stopped", "w")
    if m then m:close() end
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local ok, bad, hist = 0, 0, {}
  for _, t in ipairs(threads) do
    ok = ok + (t:get("ok_count") or 0)
    bad = bad + (t:get("other_count") or 0)
    for k, v in pairs(t:get("statuses") or {}) do hist[k] = (hist[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(hist) do table.insert(parts, k .. ":" .. v) end
  table.sort(parts)
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH rps=%.1f expected_rps=%.1f requests=%d expected=%d unexpected=%d socket_errors=%d statuses=%s p50_ms=%.2f p99_ms=%.2f\n",
    summary.requests / secs, ok / secs, summary.requests, ok, bad,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(parts, ","), latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
EOF
}

# One request with curl; prints the status code.
curl_status() {
    local url=$1 id=$2
    curl -s -o "$WORK/curl.body" -w '%{http_code}' -X POST "$url" \
        -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
        -H "X-Hub-Signature-256: $SIGNATURE" -H "X-GitHub-Delivery: $id" \
        --data-binary @"$WORK/push.json"
}

# Wait until something listens on a local TCP port.
wait_port() {
    local port=$1 i
    for i in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    die "nothing listens on port $port"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Start a process in the background; its pid goes to the global LAST_PID.
PIDS=()
start_bg() {
    local out=$1
    shift
    "$@" >"$out" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            return 0
        fi
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local p
    set +e
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [[ -n ${KEEP_WORK:-} ]]; then log "work files kept in $WORK"; else rm -rf "$WORK"; fi
}

# make_work NAME: a fresh work folder $WORK under target/, on the
# repository's file system rather than a tmpfs, so hookrouter's fsync costs
# what it costs on this disk; `cleanup` removes it on exit unless KEEP_WORK
# is set.
make_work() {
    mkdir -p "$REPO_DIR/target"
    WORK=$(mktemp -d "$REPO_DIR/target/bench-$1.XXXXXX")
    trap cleanup EXIT
}

# Run wrk against a URL; prints the BENCH line. Args: url expected_status [stop_after] [secs]
run_wrk() {
    local url=$1 expected=$2 stop_after=${3:-0} secs=${4:-$WRK_SECS}
    local nonce
    nonce="r$(date +%s%N)"
    rm -f "$WORK/wrk.stopped"
    wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${secs}s" -s "$WORK/push.lua" "$url" \
        -- "$nonce" "$expected" "$stop_after" >"$WORK/wrk.out" 2>&1 &
    local pid=$!
    if ((stop_after > 0)); then
        # With a request count, end wrk (SIGINT: it still reports) once reached.
        while kill -0 "$pid" 2>/dev/null && [[ ! -e $WORK/wrk.stopped ]]; do sleep 0.05; done
        kill -INT "$pid" 2>/dev/null || true
    fi
    wait "$pid" || die "wrk failed: $(cat "$WORK/wrk.out")"
    grep '^BENCH ' "$WORK/wrk.out" || die "wrk printed no result: $(cat "$WORK/wrk.out")"
}

# CPU ticks used by a process and its reaped children.
cpu_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Wait until a process has gone idle (at most 1 tick of CPU in 0.5 s), at
# most 120 s; prints how long after the call it was last busy, in seconds.
# A server that answers before its work is done (adnanh/webhook's exec path
# answers before the command ends) keeps working after wrk stops.
settle() {
    local pid=$1 t0 last prev cur now_ns idle=0
    t0=$(date +%s%N)
    last=$t0
    prev=$(cpu_ticks "$pid")
    # Idle: five looks in a row (0.5 s) that each saw at most 1 tick (10 ms).
    while ((idle < 5)); do
        sleep 0.1
        cur=$(cpu_ticks "$pid")
        now_ns=$(date +%s%N)
        if ((cur - prev > 1)); then
            last=$now_ns
            idle=0
        else
            idle=$((idle + 1))
        fi
        prev=$cur
        ((now_ns - t0 < 120000000000)) || break
    done
    awk -v a="$last" -v b="$t0" 'BEGIN { printf "%.2f", (a - b) / 1e9 }'
}

# field NAME LINE: the value of NAME=... in a BENCH line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<" $2"; }

# median of numbers on stdin.
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "nan"} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "nan" }'; }

# The open-loop load generator (bench/limit, binary hookrouter-bench-load),
# used by bench/latency.sh and bench/memory.sh. build_all builds it with the
# limit; copy_loadgen puts a copy into $WORK like the other binaries.
LOADGEN="$BENCH_DIR/limit/target/release/hookrouter-bench-load"
copy_loadgen() {
    [[ -x $LOADGEN ]] || die "missing $LOADGEN: build bench/limit"
    cp "$LOADGEN" "$WORK/load"
    LOADGEN="$WORK/load"
}

# load_args URL EXPECTED RATE SECS CONNS WARMUP [more generator args]: the
# generator's arguments for the signed push of make_payload at a fixed rate,
# with a fresh X-GitHub-Delivery per request, into the array LOAD_ARGS.
load_args() {
    local url=$1 expected=$2 rate=$3 secs=$4 conns=$5 warmup=$6
    shift 6
    # shellcheck disable=SC2034 # read by the scripts that source this file
    LOAD_ARGS=(--url "$url" --rate "$rate" --duration "$secs" --connections "$conns"
        --warmup "$warmup" --expect "$expected" --body "$WORK/push.json"
        -H 'Content-Type: application/json' -H 'User-Agent: GitHub-Hookshot/bench'
        -H 'X-GitHub-Event: push' -H "X-Hub-Signature-256: $SIGNATURE"
        --unique-header X-GitHub-Delivery "$@")
}

# proc_kb PID FIELD: a field of /proc/PID/status in kB (VmRSS, VmHWM, ...).
proc_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null; }

# mib KB: kB as MiB with one decimal.
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# start_hookrouter LEVEL TAG [RULES]: hookrouter on $HR_PORT with a fresh
# data file in $WORK, log in $WORK/hookrouter-TAG.log; its pid in HR_PID.
HR_PID=
start_hookrouter() {
    local level=$1 tag=$2 rules=${3:-$BENCH_DIR/rules/github-bench.yaml}
    rm -f "$WORK/hr.redb"
    start_bg "$WORK/hookrouter-$tag.log" "$HOOKROUTER" --rules "$rules" \
        --listen "127.0.0.1:$HR_PORT" --data "$WORK/hr.redb" --log-level "$level"
    HR_PID=$LAST_PID
    wait_port "$HR_PORT"
}
stop_hookrouter() { stop_pid "$HR_PID"; HR_PID=; }

# expect_status NAME URL STATUS: each system must answer what it answers on
# its success path, once, before it is measured.
expect_status() {
    local name=$1 url=$2 want=$3 got
    got=$(curl_status "$url" "check-$name-$RANDOM$RANDOM")
    [[ $got == "$want" ]] || die "$name answered $got, expected $want: $(cat "$WORK/curl.body")"
    log "check: $name answers $got $(head -c 80 "$WORK/curl.body")"
}
