#!/usr/bin/env python3
"""A real HTTP webhook receiver for the end-to-end tests (Python 3 standard library only).

    receiver.py --port-file F --log F [--port P] [--fail-first N] [--throttle-once]
                [--hang-once SECONDS] [--gone-after K] [--delay SECONDS]
                [--verify-secret-file F] [--busy-for SECONDS]

It listens on 127.0.0.1 (port 0, or --port P to come back on the same port after a
restart), writes the port to --port-file (atomically) once it accepts connections, and
answers every POST, in this order of precedence:

1. 500 while fewer than N requests were answered with it (--fail-first N);
2. once, 429 with `Retry-After: 1` (--throttle-once); 503 with `Retry-After: 0`
   until SECONDS after its first request (--busy-for: a load balancer saying "now");
3. once, no answer at all: it waits SECONDS, then closes the connection (--hang-once);
4. 410 Gone for good once K requests were answered with 200 (--gone-after K);
5. 200.

Before answering, it appends one JSON line to --log (flushed and fsynced):
`{"n": 1.., "status": 500|429|0 (hung)|410|200, "path": the request target (path and
query), "headers": {lowercased name: value}, "body": the body as text}`, plus, with
--verify-secret-file, `"signature_ok": true|false` (the `x-lockstep-signature-256:
sha256=<hex>` header checked against the HMAC-SHA256 of the exact body bytes, keyed
with the file's content less its trailing newline) and `"standard_signature_ok":
true|false` (the Standard Webhooks check: some `v1,<base64>` entry of
`webhook-signature` is the HMAC-SHA256 of `{webhook-id}.{webhook-timestamp}.{body}`,
keyed with the base64-decoded rest of a `whsec_` secret, else with the secret's bytes,
and `webhook-timestamp` is within five minutes of now). --delay SECONDS waits that long after logging, before each
answer: a slow receiver, so that requests are in flight when a test kills the sender.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--throttle-once", action="store_true")
    p.add_argument("--hang-once", type=float, default=None)
    p.add_argument("--gone-after", type=int, default=None)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--verify-secret-file", default=None)
    p.add_argument("--busy-for", type=float, default=None)
    return p.parse_args()


class State:
    """What has been answered so far; every decision and log line under one lock, so
    the log's order is the order in which requests were decided."""

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.n = 0
        self.failed = 0
        self.throttled = False
        self.hung = False
        self.ok = 0
        self.first = None
        self.log = open(args.log, "a", encoding="utf-8")
        self.key = None
        if args.verify_secret_file is not None:
            with open(args.verify_secret_file, "rb") as f:
                key = f.read()
            if key.endswith(b"\r\n"):
                key = key[:-2]
            elif key.endswith(b"\n"):
                key = key[:-1]
            self.key = key
            self.standard_key = standard_key(key)

    def decide(self):
        """The status to answer (0: hang), and the request's number."""
        a = self.args
        self.n += 1
        if self.failed < a.fail_first:
            self.failed += 1
            return 500
        if a.throttle_once and not self.throttled:
            self.throttled = True
            return 429
        if self.first is None:
            self.first = time.monotonic()
        if a.busy_for is not None and time.monotonic() - self.first < a.busy_for:
            return 503
        if a.hang_once is not None and not self.hung:
            self.hung = True
            return 0
        if a.gone_after is not None and self.ok >= a.gone_after:
            return 410
        self.ok += 1
        return 200

    def record(self, path, headers, body):
        with self.lock:
            status = self.decide()
            line = {
                "n": self.n,
                "status": status,
                "path": path,
                "headers": headers,
                "body": body.decode("utf-8", errors="replace"),
            }
            if self.key is not None:
                sent = headers.get("x-lockstep-signature-256", "")
                want = "sha256=" + hmac.new(self.key, body, hashlib.sha256).hexdigest()
                line["signature_ok"] = hmac.compare_digest(sent, want)
                line["standard_signature_ok"] = standard_ok(self.standard_key, headers, body)
            self.log.write(json.dumps(line, sort_keys=True) + "\n")
            self.log.flush()
            os.fsync(self.log.fileno())
            return status


def standard_key(secret):
    """The Standard Webhooks HMAC key: a `whsec_` secret's base64 rest, else as is."""
    if secret.startswith(b"whsec_"):
        return base64.b64decode(secret[len(b"whsec_"):])
    return secret


def standard_ok(key, headers, body):
    """Whether the Standard Webhooks headers sign this body, sent within five minutes."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit() or abs(time.time() - int(stamp)) > 300:
        return False
    signed = msg_id.encode() + b"." + stamp.encode() + b"." + body
    want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    entries = headers.get("webhook-signature", "").split(" ")
    return any(
        e.startswith("v1,") and hmac.compare_digest(e[3:], want) for e in entries
    )


def handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "lockstep-test-receiver"

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        # Trailers, up to the empty line.
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def answer(self, status, extra=()):
            body = b"ok\n" if status == 200 else b"no\n"
            self.send_response(status)
            for name, value in extra:
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def do_POST(self):
            body = self.read_body()
            headers = {}
            for name, value in self.headers.items():
                name = name.lower()
                headers[name] = headers[name] + ", " + value if name in headers else value
            status = state.record(self.path, headers, body)
            if status == 0:
                time.sleep(state.args.hang_once)
                self.close_connection = True
                return
            if state.args.delay > 0:
                time.sleep(state.args.delay)
            if status == 429:
                self.answer(429, [("Retry-After", "1")])
            elif status == 503:
                self.answer(503, [("Retry-After", "0")])
            elif status == 410:
                self.answer(410, [("Connection", "close")])
                self.close_connection = True
            else:
                self.answer(status)

        def do_GET(self):
            self.answer(405)

        do_PUT = do_GET
        do_DELETE = do_GET

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # Quiet: a sender that gave up (timed out, was killed) is part of the tests.
        pass


def main():
    args = parse_args()
    state = State(args)
    server = Server(("127.0.0.1", args.port), handler(state))
    port = server.server_address[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{port}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.port_file)
    try:
        server.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
