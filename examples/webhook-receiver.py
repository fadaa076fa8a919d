#!/usr/bin/env python3
"""A minimal CloudEvents webhook receiver for `lockstep notify`: prints one line per
event it receives (sequence, type, subject, ticket, message) and answers 204.

    examples/webhook-receiver.py --port 8099 [--secret-file hook.key]
    lockstep notify add driver --url http://127.0.0.1:8099/ [--secret-file hook.key]

It takes both modes (structured: the CloudEvent is the JSON body; binary: attributes in
`ce-` headers, the data is the body), drops redeliveries by id (delivery is at least
once) and, with --secret-file, checks the `x-lockstep-signature-256` HMAC.
"""
import argparse
import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

seen = set()


def event_of(headers, body):
    """The CloudEvent's attributes and data, from either mode."""
    if headers.get("content-type", "").startswith("application/cloudevents+json"):
        event = json.loads(body)
        return event, event.get("data") or {}
    attrs = {k[3:]: v for k, v in headers.items() if k.startswith("ce-")}
    return attrs, json.loads(body or b"{}")


def handler(secret):
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if secret is not None:
                want = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
                if not hmac.compare_digest(want, headers.get("x-lockstep-signature-256", "")):
                    print("rejected: bad signature", flush=True)
                    self.send_response(401)
                    self.end_headers()
                    return
            event, data = event_of(headers, body)
            if event.get("id") not in seen:
                seen.add(event.get("id"))
                ticket = data.get("ticket", "")
                print(
                    f"{event.get('sequence', '-'):>20} {event.get('type', '?'):<40} "
                    f"{event.get('subject', '-'):<8} {('ticket ' + ticket) if ticket else ''}\n"
                    f"{'':>20} {data.get('message', '')}",
                    flush=True,
                )
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    return Receiver


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--secret-file")
    args = parser.parse_args()
    secret = None
    if args.secret_file:
        with open(args.secret_file, "rb") as f:
            secret = f.read().rstrip(b"\r\n")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(secret))
    print(f"receiving on http://127.0.0.1:{args.port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
