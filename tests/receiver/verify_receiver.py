#!/usr/bin/env python3
"""A real webhook receiver that checks jobwatch's deliveries with the reference
`standardwebhooks` package, used unchanged: if it verifies here, any receiver built on
the reference library accepts jobwatch's signatures.

Usage:
    python3 tests/receiver/verify_receiver.py --secret whsec_... --port-file PATH \
        --out PATH [--fail-first N]

Binds 127.0.0.1 on a free port and writes the port to --port-file once listening (written
to a temporary name and renamed, so a reader never sees a partial file). For each POST it
appends one JSON line to --out, flushed at once:
    {"webhook_id", "webhook_timestamp", "type", "verified", "status", "body",
     "received_unix_ms"}  plus "error" when verification failed.
A verified request is answered 204, except that the first N verified requests are answered
500 (--fail-first) so retries can be observed; a failed verification is answered 400.
Deliveries are therefore the lines with "status": 204. Exits on SIGTERM or SIGINT.
Only the standard library besides standardwebhooks.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

# Bodies are small JSON documents; refuse anything absurd rather than read it.
MAX_BODY = 1 << 20


class State:
    """Shared by the handler threads: the verifier, the output file and the fail budget."""

    def __init__(self, webhook, out, fail_first):
        self.webhook = webhook
        self.out = out
        self.fail_left = fail_first
        self.lock = threading.Lock()

    def take_failure(self):
        with self.lock:
            if self.fail_left > 0:
                self.fail_left -= 1
                return True
            return False

    def record(self, line):
        text = json.dumps(line, separators=(",", ":")) + "\n"
        with self.lock:
            self.out.write(text)
            self.out.flush()


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so a sender's keep-alive connection is exercised as with a real receiver.
    protocol_version = "HTTP/1.1"
    state = None  # set in main()

    def do_POST(self):
        received_unix_ms = int(time.time() * 1000)
        try:
            length = int(self.headers.get("content-length", ""))
        except ValueError:
            self.answer(411, b"content-length required\n")
            return
        if length < 0 or length > MAX_BODY:
            self.answer(413, b"body too large\n")
            return
        body = self.rfile.read(length)
        headers = {k: v for k, v in self.headers.items()}
        line = {
            "webhook_id": self.headers.get("webhook-id"),
            "webhook_timestamp": self.headers.get("webhook-timestamp"),
            "type": None,
            "verified": False,
            "status": 400,
            "body": None,
            "received_unix_ms": received_unix_ms,
        }
        try:
            # The reference verification, unchanged. It raises on a bad or missing
            # header, a stale timestamp or no matching signature; any exception (its own
            # parsing of malformed input raises ValueError and friends too) is a refusal.
            parsed = self.state.webhook.verify(body, headers)
        except Exception as e:  # noqa: BLE001 - every failure is reported, none is fatal
            line["error"] = f"{type(e).__name__}: {e}"
            try:
                line["body"] = json.loads(body)
            except ValueError:
                line["body"] = body.decode("utf-8", "replace")
            self.state.record(line)
            self.answer(400, b"verification failed\n")
            return
        line["verified"] = True
        line["body"] = parsed
        if isinstance(parsed, dict):
            line["type"] = parsed.get("type")
        line["status"] = 500 if self.state.take_failure() else 204
        self.state.record(line)
        if line["status"] == 500:
            self.answer(500, b"failing on purpose (--fail-first)\n")
        else:
            self.answer(204, b"")

    def answer(self, status, payload):
        self.send_response(status)
        if status != 204:
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(payload)))
        self.end_headers()
        if payload and status != 204:
            self.wfile.write(payload)

    def log_message(self, format, *args):
        sys.stderr.write("verify_receiver: %s\n" % (format % args))


def write_port(path, port):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret", required=True, help="whsec_... secret of the endpoint")
    parser.add_argument("--port-file", required=True, help="where to write the bound port")
    parser.add_argument("--out", required=True, help="JSON-lines file to append to")
    parser.add_argument("--fail-first", type=int, default=0, metavar="N",
                        help="answer the first N verified requests with 500")
    args = parser.parse_args()

    webhook = Webhook(args.secret)
    out = open(args.out, "a", encoding="utf-8")
    Handler.state = State(webhook, out, args.fail_first)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        # Raised in the main thread, which is inside serve_forever: this unwinds it.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    # The socket is bound and listening once the constructor returns: connections made
    # from now on wait in the backlog until serve_forever accepts them.
    write_port(args.port_file, server.server_address[1])
    try:
        server.serve_forever()
    finally:
        server.server_close()
        out.close()


if __name__ == "__main__":
    main()
