#!/usr/bin/env bash
#! Run the static binary in a root that holds only what it needs, and prove
#! it works there: a signed event in, an HTTP action out (retried once, so
#! the retry jitter is drawn too), a clean stop.
#!
#!   sudo scripts/minimal-root.sh [BINARY]
#!
#! BINARY defaults to the musl build of scripts/build-static.sh, else the
#! glibc crt-static build. The root holds /hookrouter, /rules/hooks.yaml, an
#! empty writable /data, /proc, /dev/null and /dev/urandom: no /dev/random,
#! no libc, no /etc, no /tmp. It is built in a private mount namespace
#! (unshare -m), so its /proc mount goes away with the script. Needs root
#! (mknod, mount, chroot), python3 (the receiver, on the host's 127.0.0.1,
#! which the root shares) and curl; with strace installed it also checks that
#! the server never tries to open /dev/random. NO_GETRANDOM=1 (needs strace)
#! makes the getrandom system call fail with ENOSYS, as an old kernel or a
#! seccomp filter would, to exercise the /dev/urandom fallback.
#!
#! Exit 0 when the event was accepted (202), the receiver got the action
#! twice (a 503, then a 200), the log has no panic, and SIGTERM ends the
#! server with code 0.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${MINIMAL_ROOT_NS:-}" ]]; then
  [[ $(id -u) -eq 0 ]] || { echo "error: run as root (mknod, mount, chroot)" >&2; exit 2; }
  MINIMAL_ROOT_NS=1 exec unshare -m --propagation private "$0" "$@"
fi

bin=${1:-}
if [[ -z "$bin" ]]; then
  for b in target/x86_64-unknown-linux-musl/release/hookrouter \
           target/x86_64-unknown-linux-gnu/release/hookrouter; do
    [[ -x "$b" ]] && { bin=$b; break; }
  done
fi
[[ -n "$bin" && -x "$bin" ]] || { echo "error: no static binary; build one first (see README, A static binary)" >&2; exit 2; }
echo "binary: $bin"
command -v file >/dev/null && echo "  $(file -b "$bin" | grep -o 'static-pie linked\|statically linked\|dynamically linked')"

work=$(mktemp -d)
root=$work/root
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- the receiver: 503 to the first POST, 200 after; one line per request
cat >"$work/receiver.py" <<'EOF'
import http.server, sys
log, portfile = sys.argv[1], sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    n = 0
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        H.n += 1
        code = 503 if H.n == 1 else 200
        with open(log, "a") as f:
            f.write(f"{self.path} {code}\n")
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(portfile, "w").write(str(s.server_port))
s.serve_forever()
EOF
python3 "$work/receiver.py" "$work/received" "$work/rport" &
pids+=("$!")
for _ in $(seq 50); do [[ -s "$work/rport" ]] && break; sleep 0.1; done
rport=$(cat "$work/rport")

# --- the root
mkdir -p "$root"/{rules,data,proc,dev}
cp "$bin" "$root/hookrouter"
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 444 "$root/dev/urandom" c 1 9
mount -t proc proc "$root/proc"
cat >"$root/rules/hooks.yaml" <<EOF
sources:
  - name: github
    provider: github
    secret: minimal-root-secret
rules:
  - name: forward
    source: github
    event: push
    actions:
      - http:
          url: http://127.0.0.1:$rport/got
          json: { ref: "{{ body.ref }}" }
        retry: { attempts: 3, backoff: 200ms }
EOF
echo "root:"; (cd "$root" && find . -path ./proc -prune -print -o -print | sort | sed 's/^/  /')

# --- the server, in the root
trace=()
command -v strace >/dev/null && trace=(strace -f -qq -e trace=execve,open,openat,getrandom -o "$work/trace")
if [[ -n "${NO_GETRANDOM:-}" ]]; then
  [[ ${#trace[@]} -gt 0 ]] || { echo "error: NO_GETRANDOM needs strace" >&2; exit 2; }
  trace+=(-e inject=getrandom:error=ENOSYS)
  echo "getrandom system call: fails with ENOSYS"
fi
"${trace[@]}" chroot "$root" /hookrouter --rules /rules --data /data/h.redb \
  --listen 127.0.0.1:0 2>"$work/log" &
server=$!
pids+=("$server")
addr=
for _ in $(seq 100); do
  addr=$(sed -n 's/.*Listening for webhooks\. addr=\([^ ]*\).*/\1/p' "$work/log")
  [[ -n "$addr" ]] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
[[ -n "$addr" ]] || { echo "FAIL: the server did not start"; cat "$work/log"; exit 1; }
echo "server: $addr"

# --- a signed event
printf '{"ref":"refs/heads/main"}' >"$work/push.json"
mapfile -t H < <("$bin" sign --provider github --secret minimal-root-secret \
  --body "$work/push.json" --id "minimal-root-1")
code=$(curl -s -o "$work/answer" -w '%{http_code}' -X POST "http://$addr/hooks/github" \
  -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' "${H[@]/#/-H}" \
  --data-binary @"$work/push.json")
echo "answer: $code $(cat "$work/answer")"

touch "$work/received"
for _ in $(seq 100); do
  [[ $(wc -l <"$work/received") -ge 2 ]] && break
  sleep 0.1
done
echo "receiver got: $(tr '\n' ' ' <"$work/received")"

# chroot execs the server; under strace, the server is strace's child.
target=$server
[[ ${#trace[@]} -gt 0 ]] && target=$(pgrep -P "$server" | head -1)
kill -TERM "$target"
set +e
wait "$server"
rc=$?
set -e
echo "exit code after SIGTERM: $rc"

fail=0
[[ "$code" == 202 ]] || { echo "FAIL: the event was answered $code, not 202"; fail=1; }
[[ $(grep -c ' 503$' "$work/received") -eq 1 && $(grep -c ' 200$' "$work/received") -eq 1 ]] \
  || { echo "FAIL: the receiver did not get a 503 then a 200"; fail=1; }
grep -q panicked "$work/log" && { echo "FAIL: the log has a panic"; fail=1; }
[[ "$rc" -eq 0 ]] || { echo "FAIL: the server exited with $rc"; fail=1; }
if [[ -f "$work/trace" ]]; then
  # Only what the server opened, not the chroot program before its exec.
  awk '/execve\("\/hookrouter"/ { on = 1 } on && /open/' "$work/trace" >"$work/opened"
  if grep -q '"/dev/random"' "$work/opened"; then
    echo "FAIL: the server tried to open /dev/random:"; grep '"/dev/random"' "$work/opened"; fail=1
  else
    echo "strace: no attempt to open /dev/random; the server opened: $(grep -o '"/[^"]*"' "$work/opened" | sort -u | tr '\n' ' ')"
  fi
fi
if [[ $fail -ne 0 ]]; then
  echo "--- server log"; cat "$work/log"; exit 1
fi
echo "ok: served an event and ran its HTTP action in the minimal root"
