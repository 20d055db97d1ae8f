#!/usr/bin/env python3
"""The verdict of bench/soak.sh: waits (up to --wait seconds) until every
acknowledged id has been delivered, then prints lost and duplicate counts.
Exit status 1 when an acknowledged event was never delivered.

usage: check.py --acked FILE --delivered FILE --wait SECS [--json FILE]
"""

import argparse
import collections
import json
import time


def read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--acked", required=True)
    ap.add_argument("--delivered", required=True)
    ap.add_argument("--wait", type=float, default=120)
    ap.add_argument("--json")
    args = ap.parse_args()
    acked = set(read_lines(args.acked))
    deadline = time.monotonic() + args.wait
    while True:
        delivered = collections.Counter(read_lines(args.delivered))
        lost = acked - delivered.keys()
        if not lost or time.monotonic() > deadline:
            break
        time.sleep(1)
    time.sleep(2)  # stragglers: late redeliveries count as duplicates
    delivered = collections.Counter(read_lines(args.delivered))
    lost = sorted(acked - delivered.keys())
    deliveries = sum(delivered.values())
    duplicates = deliveries - len(delivered)
    unexpected = sorted(delivered.keys() - acked)
    result = {
        "acknowledged": len(acked),
        "delivered_ids": len(delivered),
        "deliveries": deliveries,
        "duplicates": duplicates,
        "duplicate_pct": round(100.0 * duplicates / max(len(delivered), 1), 3),
        "lost": len(lost),
        "delivered_not_acknowledged": len(unexpected),
        "lost_sample": lost[:20],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f)
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
