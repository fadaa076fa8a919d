#!/usr/bin/env python3
"""A minimal Lockstep deploy agent in Python, written from proto/lockstep/v1/participant.proto.

It proves the contract from outside Rust: `lockstep conformance` checks it in the test
suite. Its "deploy" is a file: DATA_DIR/live holds the live version. Stubs are generated
from the proto at start (grpcio-tools), and the server runs on grpcio's default settings.

    python3 agent.py --project B --listen 127.0.0.1:7712 --data-dir /tmp/b \
        --coordinator http://127.0.0.1:7700 [--environment default] [--prepare-seconds 0]

The rules it keeps (each a MUST of participant.proto): the vote is recorded with fsync
before it is answered; a PREPARED vote never decides alone (after a restart, and after
--ask-after seconds, it asks GetDecision); every call is idempotent per transaction id;
one transaction at a time; an Abort before its Prepare is remembered; Commit of an id it
never prepared is FAILED_PRECONDITION; orders from another coordinator incarnation never
touch a recorded transaction.
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.abspath(__file__))


def proto_dir():
    """Where the proto is: $LOCKSTEP_PROTO_DIR, else `proto/` beside this file, else the
    repository's (this file's place in it). A copy of the agent elsewhere says which."""
    given = os.environ.get("LOCKSTEP_PROTO_DIR")
    candidates = [given] if given else [os.path.join(ROOT, "proto"), os.path.join(ROOT, "..", "..", "proto")]
    for d in candidates:
        if os.path.isfile(os.path.join(d, "lockstep", "v1", "participant.proto")):
            return os.path.abspath(d)
    sys.exit(
        "no lockstep/v1/participant.proto under "
        + " or ".join(os.path.abspath(d) for d in candidates)
        + ": set LOCKSTEP_PROTO_DIR to the repository's proto/ directory, or copy it beside this file"
    )


def load_stubs():
    """Generates the Python stubs of the proto into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="lockstep-stubs-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    files = ["lockstep/v1/common.proto", "lockstep/v1/coordinator.proto", "lockstep/v1/participant.proto"]
    args = ["protoc", f"-I{proto_dir()}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + files) != 0:
        sys.exit("could not generate the stubs from the proto")
    sys.path.insert(0, out)
    from lockstep.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
    from lockstep.v1 import participant_pb2, participant_pb2_grpc
    return common_pb2, coordinator_pb2, coordinator_pb2_grpc, participant_pb2, participant_pb2_grpc


common, coord, coord_grpc, part, part_grpc = load_stubs()
PREPARED, REFUSED = common.VOTE_PREPARED, common.VOTE_REFUSED


class Store:
    """The ledger (one JSON file) and the live version (one file), each replaced atomically with fsync."""

    def __init__(self, data_dir):
        self.dir = data_dir
        os.makedirs(data_dir, exist_ok=True)
        self.ledger = self._read("ledger.json", "{}", json.loads)
        self.live = self._read("live", "", str)

    def _read(self, name, empty, parse):
        try:
            with open(os.path.join(self.dir, name)) as f:
                return parse(f.read())
        except FileNotFoundError:
            return parse(empty)

    def _write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        fd = os.open(self.dir, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    def record(self, tx, entry):
        self.ledger[tx] = entry
        self._write("ledger.json", json.dumps(self.ledger))

    def go_live(self, version):
        self.live = version
        self._write("live", version)


class Agent(part_grpc.ParticipantServicer):
    def __init__(self, args, store):
        self.args, self.store, self.lock = args, store, threading.Lock()

    def Prepare(self, request, context):
        print(f"Prepare {request.transaction_id}", file=sys.stderr, flush=True)
        env = request.environment or "default"
        if request.project != self.args.project or env != self.args.environment:
            return self._refused(f"this agent serves {self.args.project} in {self.args.environment}")
        with self.lock:
            answer = self._prepare_locked(request)
        if answer.vote == PREPARED:
            self._ask_later(request.transaction_id, self.args.ask_after)
        return answer

    def _prepare_locked(self, r):
        entry = self.store.ledger.get(r.transaction_id)
        if entry is not None:
            return self._again(r, entry)
        busy = [tx for tx, e in self.store.ledger.items() if e["phase"] == "prepared"]
        if busy:
            return self._record_refusal(r, f"busy: transaction {busy[0]} is prepared here")
        if r.from_version != self.store.live:
            return self._record_refusal(r, f"live here is {self.store.live!r}, not {r.from_version!r}")
        time.sleep(self.args.prepare_seconds)  # staging (a real agent fetches and verifies the build)
        self.store.record(r.transaction_id, self._entry(r, "prepared"))
        return part.PrepareResponse(vote=PREPARED)

    def _again(self, r, entry):
        same = (entry.get("version"), entry.get("from")) == (r.version, r.from_version)
        incarnations = {entry.get("incarnation"), r.coordinator_incarnation} - {"", None}
        if "version" in entry and (not same or len(incarnations) > 1):
            return self._refused(f"transaction {r.transaction_id} was prepared here with other content or by another coordinator")
        if entry["phase"] in ("prepared", "committed"):
            return part.PrepareResponse(vote=PREPARED)
        return self._refused(f"already {entry['phase']} here: {entry.get('reason', '')}")

    def _entry(self, r, phase, reason=""):
        return {"phase": phase, "version": r.version, "from": r.from_version,
                "incarnation": r.coordinator_incarnation, "reason": reason}

    def _record_refusal(self, r, reason):
        self.store.record(r.transaction_id, self._entry(r, "refused", reason))
        return self._refused(reason)

    def _refused(self, reason):
        return part.PrepareResponse(vote=REFUSED, reason=reason)

    def Commit(self, request, context):
        with self.lock:
            entry = self.store.ledger.get(request.transaction_id)
            if entry is None or self._other(entry, request) or entry["phase"] not in ("prepared", "committed"):
                state = "never prepared" if entry is None else entry["phase"]
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"transaction {request.transaction_id} is {state} here")
            if entry["phase"] == "prepared":
                self.store.go_live(entry["version"])
                self.store.record(request.transaction_id, dict(entry, phase="committed"))
            return part.CommitResponse(live_version=self.store.live)

    def Abort(self, request, context):
        with self.lock:
            entry = self.store.ledger.get(request.transaction_id)
            if entry is not None and self._other(entry, request):
                return part.AbortResponse(live_version=self.store.live)
            if entry is not None and entry["phase"] == "committed":
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"transaction {request.transaction_id} is committed here")
            entry = dict(entry or {}, phase="aborted", reason=request.reason)
            self.store.record(request.transaction_id, entry)
            return part.AbortResponse(live_version=self.store.live)

    def _other(self, entry, request):
        ours, theirs = entry.get("incarnation", ""), request.coordinator_incarnation
        return bool(ours) and bool(theirs) and ours != theirs

    def GetStatus(self, request, context):
        staged = [part.StagedTransaction(transaction_id=tx, version=e["version"], from_version=e["from"])
                  for tx, e in self.store.ledger.items() if e["phase"] == "prepared"]
        return part.ParticipantStatus(project=self.args.project, environment=self.args.environment,
                                      live_version=self.store.live, staged=staged)

    # Preview is left UNIMPLEMENTED (the servicer's default): dry runs then say "not allowed".

    def _ask_later(self, tx, after):
        threading.Thread(target=self._ask_until_decided, args=(tx, after), daemon=True).start()

    def _ask_until_decided(self, tx, after):
        """A PREPARED vote never decides alone: it asks GetDecision until COMMIT or ABORT."""
        time.sleep(after)
        target = self.args.coordinator.split("://", 1)[-1]
        stub = coord_grpc.CoordinatorStub(grpc.insecure_channel(target))
        delay = 0.1
        while self.store.ledger.get(tx, {}).get("phase") == "prepared":
            incarnation = self.store.ledger[tx].get("incarnation", "")
            request = coord.GetDecisionRequest(transaction_id=tx, project=self.args.project,
                                               coordinator_incarnation=incarnation)
            try:
                decision = stub.GetDecision(request, timeout=5).decision
            except grpc.RpcError as e:
                print(f"asking for {tx}: {e.code()}: {e.details()}", file=sys.stderr, flush=True)
                decision = None
            try:
                if decision == common.DECISION_COMMIT:
                    self.Commit(part.CommitRequest(transaction_id=tx), Refusing())
                elif decision == common.DECISION_ABORT:
                    self.Abort(part.AbortRequest(transaction_id=tx, reason="asked: ABORT"), Refusing())
            except RuntimeError:
                pass  # logged; asked again below
            time.sleep(delay)
            delay = min(delay * 2, 5)


class Refusing:
    """The context of a decision applied from GetDecision: a refusal is only logged."""

    def abort(self, code, details):
        print(f"applying the decision: {code}: {details}", file=sys.stderr, flush=True)
        raise RuntimeError(details)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", required=True)
    p.add_argument("--environment", default="default")
    p.add_argument("--listen", default="127.0.0.1:7712")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--coordinator", default="http://127.0.0.1:7700")
    p.add_argument("--ask-after", type=float, default=10.0)
    p.add_argument("--prepare-seconds", type=float, default=0.0)
    args = p.parse_args()
    agent = Agent(args, Store(args.data_dir))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))  # grpcio's default settings
    part_grpc.add_ParticipantServicer_to_server(agent, server)
    port = server.add_insecure_port(args.listen)
    server.start()
    print(f"listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    for tx, entry in list(agent.store.ledger.items()):
        if entry["phase"] == "prepared":
            agent._ask_later(tx, 0)  # after a restart: ask at once
    server.wait_for_termination()


if __name__ == "__main__":
    main()
