#!/usr/bin/env python3
"""The receiving end of bench/soak.sh: answers 200 to every POST and appends
the delivered event id (the JSON body's "id") to a file, one per line, before
answering. GET /count returns the number of deliveries so far.

usage: receiver.py --port PORT --out FILE
"""

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = open(args.out, "a", encoding="utf-8")
    lock = threading.Lock()
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def answer(self, status, text):
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            with lock:
                n = count[0]
            self.answer(200, f"{n}\n")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            try:
                event_id = str(json.loads(body)["id"])
            except (ValueError, KeyError, TypeError):
                self.answer(400, "no id\n")
                return
            with lock:
                out.write(event_id + "\n")
                out.flush()
                count[0] += 1
            self.answer(200, "ok\n")

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            # A sender killed mid-request resets its connection; expected here.
            pass

    server = Server(("127.0.0.1", args.port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
