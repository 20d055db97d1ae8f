#!/usr/bin/env bash
# Ingest throughput of two revisions of hookrouter, in one run: the ingest
# scenario of bench/ingest.sh (signed push, durable store, one log action),
# alternating the two binaries round by round so both see the same machine.
# Use it to show that a change leaves throughput where it was.
#
# usage: bench/ab.sh BASE [HEAD]     (git revisions; HEAD defaults to HEAD)
#        ROUNDS=6 WRK_SECS=6 bench/ab.sh 65215d0
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BASE=${1:?usage: bench/ab.sh BASE [HEAD]}
HEAD_REV=${2:-HEAD}
ROUNDS=${ROUNDS:-6}
BASE_PORT=${BASE_PORT:-19280}
HR_PORT=$((BASE_PORT + 1))
URL="http://127.0.0.1:$HR_PORT/hooks/github"

make_work ab
ensure_tools
make_payload
make_wrk_script

# Each revision is built from a detached worktree; both share one target
# folder so the dependencies are compiled once.
AB_TARGET="$REPO_DIR/target/bench-ab"
build_rev() {
    local rev=$1 name=$2 tree
    tree="$WORK/tree-$name"
    git -C "$REPO_DIR" worktree add --quiet --detach "$tree" "$rev"
    log "building $name ($(git -C "$tree" rev-parse --short HEAD), release)"
    (cd "$tree" && CARGO_TARGET_DIR="$AB_TARGET" cargo build --release --quiet --bin hookrouter) ||
        die "building $rev failed"
    cp "$AB_TARGET/release/hookrouter" "$WORK/hookrouter-$name"
    git -C "$REPO_DIR" worktree remove --force "$tree"
}
build_rev "$BASE" base
build_rev "$HEAD_REV" head

mkdir -p "$WORK/rules"
cat >"$WORK/rules/github-bench.yaml" <<'EOF'
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
EOF

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
measure() {
    local name=$1 round=$2 line
    HOOKROUTER="$WORK/hookrouter-$name"
    start_hookrouter warn "r$round-$name" "$WORK/rules/github-bench.yaml"
    expect_status "$name" "$URL" 202
    line=$(run_wrk "$URL" 202)
    settle "$HR_PID" >/dev/null
    stop_hookrouter
    printf '%s\t%s\t%s\n' "$round" "$name" "$(field expected_rps "$line")" >>"$RESULTS"
    log "round $round  $name  $(field expected_rps "$line") req/s"
}
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which goes first, so neither always gets the warmer machine.
    if ((round % 2)); then measure base "$round"; measure head "$round"
    else measure head "$round"; measure base "$round"; fi
done

base_med=$(awk -F'\t' '$2 == "base" { print $3 }' "$RESULTS" | median)
head_med=$(awk -F'\t' '$2 == "head" { print $3 }' "$RESULTS" | median)
echo "ab: wrk -t$WRK_THREADS -c$WRK_CONNS -d${WRK_SECS}s, $ROUNDS rounds, alternating"
echo "  base $(git -C "$REPO_DIR" rev-parse --short "$BASE"): median $base_med req/s"
echo "  head $(git -C "$REPO_DIR" rev-parse --short "$HEAD_REV"): median $head_med req/s"
echo "  head / base: $(ratio "$head_med" "$base_med")"
echo "per round head/base:"
for r in $(seq 1 "$ROUNDS"); do
    b=$(awk -F'\t' -v r="$r" '$1 == r && $2 == "base" { print $3 }' "$RESULTS")
    h=$(awk -F'\t' -v r="$r" '$1 == r && $2 == "head" { print $3 }' "$RESULTS")
    echo "  round $r: $(ratio "$h" "$b")"
done
