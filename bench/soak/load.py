#!/usr/bin/env python3
"""Load for bench/soak.sh: signed GitHub pushes with unique delivery ids, from
several threads, each retried (same id) until answered 2xx, as a webhook
sender does. Runs until FILE given by --stop exists, then writes the
acknowledged ids (--acked) and a JSON summary (--stats).

usage: load.py --url URL --secret S --senders N --rate R --stop FILE
               --acked FILE --stats FILE [--max-secs N]
"""

import argparse
import hashlib
import hmac
import http.client
import json
import os
import threading
import time
import urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--rate", type=float, default=0, help="events/s in all, 0 = unlimited")
    ap.add_argument("--stop", required=True)
    ap.add_argument("--acked", required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--max-secs", type=float, default=3600)
    args = ap.parse_args()
    url = urllib.parse.urlsplit(args.url)
    secret = args.secret.encode()
    run = f"soak{os.getpid()}x{int(time.time())}"
    started = time.monotonic()
    lock = threading.Lock()
    acked, unacked = [], []
    stats = {"sent": 0, "no_answer": 0, "statuses": {}, "retried_events": 0}
    per_thread = args.rate / args.senders if args.rate > 0 else 0

    def stopping():
        return os.path.exists(args.stop) or time.monotonic() - started > args.max_secs

    def connect():
        return http.client.HTTPConnection(url.hostname, url.port, timeout=15)

    def sender(tid):
        conn = connect()
        seq = 0
        next_at = time.monotonic()
        while not stopping():
            if per_thread:
                next_at += 1.0 / per_thread
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            event_id = f"{run}-{tid}-{seq}"
            seq += 1
            body = json.dumps({"ref": "refs/heads/main", "id": event_id}).encode()
            sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            headers = {
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": event_id,
                "X-Hub-Signature-256": sig,
            }
            tries = 0
            while True:
                tries += 1
                status = None
                try:
                    conn.request("POST", url.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                    if resp.getheader("connection", "").lower() == "close":
                        conn.close()
                        conn = connect()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = connect()
                with lock:
                    stats["sent"] += 1
                    if status is None:
                        stats["no_answer"] += 1
                    else:
                        k = str(status)
                        stats["statuses"][k] = stats["statuses"].get(k, 0) + 1
                if status is not None and 200 <= status < 300:
                    with lock:
                        acked.append(event_id)
                        if tries > 1:
                            stats["retried_events"] += 1
                    break
                if stopping():
                    with lock:
                        unacked.append(event_id)
                    break
                time.sleep(0.05)

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(args.senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(args.acked, "w", encoding="utf-8") as f:
        f.writelines(i + "\n" for i in acked)
    stats["acked"] = len(acked)
    stats["unacked_at_stop"] = len(unacked)
    stats["seconds"] = round(time.monotonic() - started, 1)
    with open(args.stats, "w", encoding="utf-8") as f:
        json.dump(stats, f)


if __name__ == "__main__":
    main()
