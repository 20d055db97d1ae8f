#!/usr/bin/env bash
# Memory of hookrouter (release build), in two parts:
#   idle: hookrouter serving the example rules (`--rules rules/`, a fresh data
#         file, default flags otherwise); VmRSS and VmHWM after IDLE_SECS.
#   soak: hookrouter on the ingest bench rule with short retention, driven by
#         the open-loop load generator (bench/limit/src/load.rs) at RATE for
#         SOAK_SECS; RSS and the data file's size every SAMPLE_SECS, then the
#         first- against the last-minute RSS and the growth over the second
#         half (least-squares slope). See bench/README.md.
#
# usage: bench/memory.sh                  (RATE=2000 SOAK_SECS=600 by default)
#        SOAK_SECS=30 bench/memory.sh     a quick look
#        SKIP_SOAK=1 bench/memory.sh      idle only
#
# Settings (environment):
#   IDLE_SECS=2          wait after the port opens before reading idle memory
#   IDLE_LIMIT_MIB=30    the idle RSS hookrouter is checked against
#   RATE=2000            requests per second offered during the soak, fixed
#   SOAK_SECS=600        soak length
#   SAMPLE_SECS=10       sampling period
#   CONNS=64             the generator's keep-alive connections
#   RETENTION=60s        --retention and --dedup-window of the soak (retention
#                        is never shorter than the dedup window, so both are set)
#   LOG_LEVEL=warn       the soak's --log-level
#   FLAT_PCT=5           "flat": the second half grows by less than this (% of RSS)
#   SKIP_IDLE=1, SKIP_SOAK=1   leave a part out
#   BASE_PORT=19210      idle on BASE_PORT+1, soak on BASE_PORT+2
#   KEEP_WORK=1          keep the work folder (logs, samples, data files)
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IDLE_SECS=${IDLE_SECS:-2}
IDLE_LIMIT_MIB=${IDLE_LIMIT_MIB:-30}
RATE=${RATE:-2000}
SOAK_SECS=${SOAK_SECS:-600}
SAMPLE_SECS=${SAMPLE_SECS:-10}
CONNS=${CONNS:-64}
RETENTION=${RETENTION:-60s}
LOG_LEVEL=${LOG_LEVEL:-warn}
FLAT_PCT=${FLAT_PCT:-5}
BASE_PORT=${BASE_PORT:-19210}
IDLE_PORT=$((BASE_PORT + 1))
SOAK_PORT=$((BASE_PORT + 2))
SOAK_URL="http://127.0.0.1:$SOAK_PORT/hooks/github"
RULES="$BENCH_DIR/rules/github-bench.yaml"

make_work memory

ensure_tools
build_all
copy_loadgen
make_payload
for p in $IDLE_PORT $SOAK_PORT; do
    port_free "$p" || die "port $p is taken; set BASE_PORT"
done

file_kb() { local s; s=$(stat -c %s "$1" 2>/dev/null) || s=0; echo $((s / 1024)); }

# --- idle -------------------------------------------------------------------
if [[ -z ${SKIP_IDLE:-} ]]; then
    # From the repository, as in the README's first command (the example
    # rules' scripts are relative to it); only the address and data file differ.
    cd "$REPO_DIR"
    "$HOOKROUTER" check --rules rules/ >/dev/null || die "the example rules do not check"
    start_bg "$WORK/hookrouter-idle.log" "$HOOKROUTER" --rules rules/ \
        --listen "127.0.0.1:$IDLE_PORT" --data "$WORK/idle.redb"
    IDLE_PID=$LAST_PID
    wait_port "$IDLE_PORT"
    sleep "$IDLE_SECS"
    kill -0 "$IDLE_PID" 2>/dev/null || die "hookrouter exited: $(tail -5 "$WORK/hookrouter-idle.log")"
    IDLE_RSS=$(proc_kb "$IDLE_PID" VmRSS)
    IDLE_HWM=$(proc_kb "$IDLE_PID" VmHWM)
    IDLE_THREADS=$(awk '$1 == "Threads:" { print $2 }' "/proc/$IDLE_PID/status")
    IDLE_DATA=$(file_kb "$WORK/idle.redb")
    stop_pid "$IDLE_PID"
    IDLE_OK=$(awk -v k="$IDLE_RSS" -v l="$IDLE_LIMIT_MIB" 'BEGIN { print (k / 1024 <= l) ? "yes" : "NO" }')
    log "idle: VmRSS $IDLE_RSS kB, VmHWM $IDLE_HWM kB, $IDLE_THREADS threads"
fi

# --- soak -------------------------------------------------------------------
if [[ -z ${SKIP_SOAK:-} ]]; then
    "$HOOKROUTER" check --rules "$RULES" >/dev/null || die "the bench rules do not check: $RULES"
    rm -f "$WORK/soak.redb"
    start_bg "$WORK/hookrouter-soak.log" "$HOOKROUTER" --rules "$RULES" \
        --listen "127.0.0.1:$SOAK_PORT" --data "$WORK/soak.redb" --log-level "$LOG_LEVEL" \
        --retention "$RETENTION" --dedup-window "$RETENTION"
    HR_PID=$LAST_PID
    wait_port "$SOAK_PORT"
    got=$(curl_status "$SOAK_URL" "check-soak-$RANDOM$RANDOM")
    [[ $got == 202 ]] || die "hookrouter answered $got, expected 202: $(cat "$WORK/curl.body")"
    sleep 1

    SAMPLES="$WORK/samples.tsv" # t_s rss_kb hwm_kb data_kb sent ok max_ms
    printf '0\t%s\t%s\t%s\t0\t0\t-\n' "$(proc_kb "$HR_PID" VmRSS)" "$(proc_kb "$HR_PID" VmHWM)" \
        "$(file_kb "$WORK/soak.redb")" >"$SAMPLES"
    log "soak: $RATE req/s for ${SOAK_SECS}s, --retention $RETENTION --dedup-window $RETENTION, --log-level $LOG_LEVEL; sample every ${SAMPLE_SECS}s"
    load_args "$SOAK_URL" 202 "$RATE" "$SOAK_SECS" "$CONNS" 0 --progress 1
    T0=$(date +%s%N)
    start_bg "$WORK/load-soak.out" "$LOADGEN" "${LOAD_ARGS[@]}"
    LOAD_PID=$LAST_PID
    printf '%8s %9s %9s %10s %10s %10s\n' "t (s)" "RSS MiB" "HWM MiB" "data MiB" "sent" "max ms" >&2
    k=1
    while ((k * SAMPLE_SECS <= SOAK_SECS)); do
        now=$(date +%s%N)
        wait_s=$(awk -v t="$T0" -v n="$now" -v s="$((k * SAMPLE_SECS))" 'BEGIN { w = s - (n - t) / 1e9; printf "%.3f", (w > 0) ? w : 0 }')
        sleep "$wait_s"
        kill -0 "$HR_PID" 2>/dev/null || die "hookrouter exited during the soak: $(tail -5 "$WORK/hookrouter-soak.log")"
        rss=$(proc_kb "$HR_PID" VmRSS)
        hwm=$(proc_kb "$HR_PID" VmHWM)
        data=$(file_kb "$WORK/soak.redb")
        # Counts from the generator's last progress line (at most 1 s old);
        # the largest latency of the answers since the previous sample.
        prog=$(grep '^PROGRESS ' "$WORK/load-soak.out" | tail -1 || true)
        sent=$(field sent "$prog")
        ok=$(field ok "$prog")
        max=$(awk -v from="$(((k - 1) * SAMPLE_SECS))" -v to="$((k * SAMPLE_SECS))" '
            /^PROGRESS / { t = $2; sub("t=", "", t); m = $6; sub("max_ms=", "", m)
                           if (t + 0 > from && t + 0 <= to + 0.5 && m + 0 > max) max = m + 0 }
            END { printf "%.1f", max }' "$WORK/load-soak.out")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$((k * SAMPLE_SECS))" "$rss" "$hwm" "$data" "${sent:-0}" "${ok:-0}" "$max" >>"$SAMPLES"
        printf '%8s %9s %9s %10s %10s %10s\n' "$((k * SAMPLE_SECS))" "$(mib "$rss")" "$(mib "$hwm")" "$(mib "$data")" "${sent:-0}" "$max" >&2
        k=$((k + 1))
    done
    wait "$LOAD_PID" || die "the load generator failed: $(cat "$WORK/load-soak.out")"
    LOAD_LINE=$(grep '^RESULT ' "$WORK/load-soak.out") || die "no RESULT from the load generator: $(cat "$WORK/load-soak.out")"
    kill -0 "$HR_PID" 2>/dev/null || die "hookrouter exited at the end of the soak"
    END_RSS=$(proc_kb "$HR_PID" VmRSS)
    END_HWM=$(proc_kb "$HR_PID" VmHWM)
    END_DATA=$(file_kb "$WORK/soak.redb")
    stop_pid "$HR_PID"
    STOPPED_DATA=$(file_kb "$WORK/soak.redb")
fi

# --- report -----------------------------------------------------------------
echo
if [[ -z ${SKIP_IDLE:-} ]]; then
    echo "idle: hookrouter --rules rules/ (the examples), fresh data file, ${IDLE_SECS}s after the port opened"
    printf '  VmRSS %s MiB (%s kB), VmHWM %s MiB, %s threads, data file %s MiB\n' \
        "$(mib "$IDLE_RSS")" "$IDLE_RSS" "$(mib "$IDLE_HWM")" "$IDLE_THREADS" "$(mib "$IDLE_DATA")"
    echo "  idle RSS <= $IDLE_LIMIT_MIB MiB: $IDLE_OK"
fi
if [[ -z ${SKIP_SOAK:-} ]]; then
    echo
    echo "soak: $RATE req/s (open loop, $CONNS connections) for ${SOAK_SECS}s, ${PAYLOAD_BYTES}-byte signed push,"
    echo "unique X-GitHub-Delivery, --retention $RETENTION --dedup-window $RETENTION --log-level $LOG_LEVEL"
    echo "(sent, 2xx: the generator's counts at most 1 s before the sample; max ms: the largest latency"
    echo " of the answers since the previous sample)"
    printf '%8s %9s %9s %10s %10s %10s %8s\n' "t (s)" "RSS MiB" "HWM MiB" "data MiB" "sent" "2xx" "max ms"
    while IFS=$'\t' read -r t rss hwm data sent ok max; do
        printf '%8s %9s %9s %10s %10s %10s %8s\n' "$t" "$(mib "$rss")" "$(mib "$hwm")" "$(mib "$data")" "$sent" "$ok" "$max"
    done <"$SAMPLES"
    printf '%8s %9s %9s %10s\n' end "$(mib "$END_RSS")" "$(mib "$END_HWM")" "$(mib "$END_DATA")"
    echo
    # First and last minute (means of the samples in them; t=0, before the
    # load, is left out), and the least-squares slope over the second half.
    awk -F'\t' -v T="$SOAK_SECS" -v flat="$FLAT_PCT" '
        $1 > 0 && $1 <= 60 { fs += $2; fn++ }
        $1 > 0 && $1 >= T - 60 { ls += $2; ln++ }
        $1 > 0 && $1 >= T / 2 { n++; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2 }
        END {
            if (fn) printf "first minute   RSS %.1f MiB (mean of %d samples)\n", fs / fn / 1024, fn
            if (ln) printf "last minute    RSS %.1f MiB (mean of %d samples)\n", ls / ln / 1024, ln
            if (n < 2 || n * sxx - sx * sx == 0) { print "second half: too few samples for a slope"; exit }
            b = (n * sxy - sx * sy) / (n * sxx - sx * sx)   # kB per second
            a = (sy - b * sx) / n
            half = T - T / 2
            start = a + b * (T / 2)
            pct = (start > 0) ? 100 * b * half / start : 0
            printf "second half    slope %+.3f MiB/min over %d samples; growth %+.1f%% of %.1f MiB over %ds\n", b * 60 / 1024, n, pct, start / 1024, half
            printf "flat (second-half growth < %s%%): %s\n", flat, (pct < flat) ? "yes" : "NO"
        }' "$SAMPLES"
    printf 'data file      %s MiB at the end of the load, %s MiB after a clean stop (largest sample %s MiB)\n' \
        "$(mib "$END_DATA")" "$(mib "$STOPPED_DATA")" "$(mib "$(cut -f4 "$SAMPLES" | sort -n | tail -1)")"
    printf 'generator      sent %s, 2xx %s, unexpected %s, achieved %s req/s, latency p50 %s ms, p99 %s ms, max %s ms\n' \
        "$(field sent "$LOAD_LINE")" "$(field ok "$LOAD_LINE")" \
        "$(field unexpected "$LOAD_LINE")" "$(field achieved "$LOAD_LINE")" \
        "$(field p50_ms "$LOAD_LINE")" "$(field p99_ms "$LOAD_LINE")" "$(field max_ms "$LOAD_LINE")"
fi
