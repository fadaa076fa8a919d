#!/usr/bin/env python3
"""A staged ("green") instance for the reference agent's --serve-hook (blue/green).

    green.py serve STAGE_DIR VERSION    # from the agent: LOCKSTEP_PHASE=serve
    green.py stop STAGE_DIR             # LOCKSTEP_PHASE=stop (at Commit and Abort)

`serve` starts an HTTP server on 127.0.0.1 (a free port) in the background, writes its
pid to STAGE_DIR/green.pid and prints its URL (it also ends by itself once that file
is gone, e.g. with its stage directory): the agent sends it as the test URI in
its PREPARED vote, and the coordinator's http verify steps request it. The server
answers GET /health with 200 and the version, or 503 while the file named by
$GREEN_FAIL_FILE exists (a broken build, for the demo and the tests). `stop` ends it.

Use it as:
    lockstep-agent ... --serve-hook 'python3 examples/green.py $LOCKSTEP_PHASE "$LOCKSTEP_STAGE_DIR" "$LOCKSTEP_VERSION"'
"""

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def handler(version, fail_file):
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            broken = fail_file and os.path.exists(fail_file)
            status = 503 if broken else (200 if self.path.startswith("/health") else 404)
            body = f"{version}\n".encode()
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Health


def serve(stage_dir, version):
    os.makedirs(stage_dir, exist_ok=True)
    server = HTTPServer(("127.0.0.1", 0), handler(version, os.environ.get("GREEN_FAIL_FILE")))
    port = server.server_address[1]
    pid = os.fork()
    if pid == 0:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        threading.Thread(target=exit_without, args=(pid_file(stage_dir),), daemon=True).start()
        server.serve_forever()
        os._exit(0)
    server.socket.close()
    with open(pid_file(stage_dir), "w") as f:
        f.write(str(pid))
    print(f"http://127.0.0.1:{port}")


def pid_file(stage_dir):
    return os.path.join(stage_dir, "green.pid")


def exit_without(path):
    """Ends the server once its pid file is gone (stopped, or its stage directory
    removed), so that no green instance outlives what staged it."""
    seen, started = False, time.monotonic()
    while True:
        time.sleep(0.2)
        if os.path.exists(path):
            seen = True
        elif seen or time.monotonic() - started > 10:
            os._exit(0)


def stop(stage_dir):
    path = pid_file(stage_dir)
    try:
        with open(path) as f:
            pid = int(f.read().strip() or 0)
    except FileNotFoundError:
        return
    if pid > 0:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    os.remove(path)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "stop":
        stop(sys.argv[2])
    else:
        sys.exit(__doc__)
