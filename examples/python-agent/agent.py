#!/usr/bin/env python3
"""A minimal Lockstep deploy agent in Python, written from proto/lockstep/v1/participant.proto.

It proves the contract from outside Rust: `lockstep conformance` checks it in the test
suite. Its "deploy" is a file: DATA_DIR/live holds the live version. Stubs are generated
from the proto at start (grpcio-tools), and the server runs on grpcio's default settings.

    python3 agent.py --project B --listen 127.0.0.1:7712 --data-dir /tmp/b \
        --coordinator http://127.0.0.1:7700 [--environment default] [--prepare-seconds 0]

--coordinator takes every instance of a coordinator on etcd, comma-separated, as
`lockstep-agent` does: GetDecision asks each in turn until one answers (standbys answer
UNAVAILABLE), the one that answered last first.

With mutual TLS, as the reference agent (`lockstep-agent`) takes it:

    python3 agent.py --project B --listen 127.0.0.1:7712 --data-dir /tmp/b \
        --tls-cert certs/agent-default-B.crt --tls-key certs/agent-default-B.key \
        --tls-client-ca certs/ca.crt --coordinator https://127.0.0.1:7700

Then every caller must present a certificate that chains to --tls-client-ca (the
handshake requires one) and carries exactly one spiffe://lockstep/ URI SAN; Prepare,
Commit, Abort and Preview are taken only from --coordinator-identity
(PERMISSION_DENIED otherwise), GetStatus from any such identity; and GetDecision is asked
over TLS with this agent's own certificate.

The rules it keeps (each a MUST of participant.proto): the vote is recorded with fsync
before it is answered; a PREPARED vote never decides alone (after a restart, and after
--ask-after seconds, it asks GetDecision); every call is idempotent per transaction id;
one transaction at a time; an Abort before its Prepare is remembered; Commit of an id it
never prepared is FAILED_PRECONDITION; orders from another coordinator incarnation never
touch a recorded transaction.
"""

import argparse
import functools
import json
import os
import re
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

SPIFFE = "spiffe://"
LOCKSTEP = "spiffe://lockstep/"
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")  # a project, environment or user name


def identity_error(uri):
    """Why `uri` is no Lockstep identity (coordinator, agent/<env>/<project>,
    user/<name>), or None when it is one."""
    if not uri.startswith(LOCKSTEP):
        return f"{uri!r} is not a {LOCKSTEP}... identity"
    parts = uri[len(LOCKSTEP):].split("/")
    if parts == ["coordinator"]:
        return None
    if len(parts) == 3 and parts[0] == "agent" and all(NAME.fullmatch(p) for p in parts[1:]):
        return None
    if len(parts) == 2 and parts[0] == "user" and NAME.fullmatch(parts[1]):
        return None
    return f"{uri!r} names no Lockstep identity (coordinator, agent/<env>/<project>, user/<name>)"


class Access:
    """Who may call the agent. Without TLS everyone may do everything. With TLS the
    handshake has already checked the caller's certificate against --tls-client-ca;
    here its one spiffe:// URI SAN must be a Lockstep identity, and orders (Prepare,
    Commit, Abort, Preview) must come from the coordinator identity alone. The refusals
    are the reference agent's (participant/src/access.rs)."""

    def __init__(self, coordinator_identity=None):
        self.coordinator = coordinator_identity  # None: plaintext, no authentication

    def caller(self, context):
        """The caller's identity (its certificate's URI), or aborts UNAUTHENTICATED."""
        auth = context.auth_context()
        names = auth.get("peer_uri") or auth.get("x509_subject_alternative_name") or []
        uris = sorted({n.decode() for n in names if n.decode().startswith(SPIFFE)})
        if not auth.get("x509_pem_cert"):
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                         "no credentials: present a client certificate issued by the deployment's CA")
        if not uris:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                         "client certificate not accepted: the certificate has no spiffe:// URI SAN")
        if len(uris) > 1:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                         "client certificate not accepted: the certificate has more than one spiffe:// URI SAN")
        wrong = identity_error(uris[0])
        if wrong:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, f"client certificate not accepted: {wrong}")
        return uris[0]

    def orders(self, context):
        if self.coordinator is None:
            return
        caller = self.caller(context)
        if caller != self.coordinator:
            self._refuse(
                context, grpc.StatusCode.PERMISSION_DENIED,
                "permission order (Prepare, Commit, Abort, Preview) is the coordinator's alone: "
                f"this agent takes orders from {self.coordinator} only, and the caller is {caller}")

    def reads(self, context):
        if self.coordinator is not None:
            self.caller(context)

    @staticmethod
    def _refuse(context, code, details):
        print(f"refused a call to the Participant API: {code.name}: {details}", file=sys.stderr, flush=True)
        context.abort(code, details)


def order_from_coordinator(method):
    """An RPC only the coordinator may make."""
    @functools.wraps(method)
    def checked(self, request, context):
        self.access.orders(context)
        return method(self, request, context)
    return checked


def read_only(method):
    """An RPC any identity the CA vouches for may make."""
    @functools.wraps(method)
    def checked(self, request, context):
        self.access.reads(context)
        return method(self, request, context)
    return checked


class Store:
    """The ledger (one JSON file) and the live version (one file), each replaced atomically with fsync."""

    def __init__(self, data_dir):
        self.dir = data_dir
        os.makedirs(data_dir, exist_ok=True)
        self.ledger = self._read("ledger.json", "{}", json.loads)
        self.live = self._read("live", "", str)
        self.term = self._read("term", "0", int)  # the highest coordinator term seen

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
        # Durable first, then seen: a failed write must not leave memory ahead of the
        # disk (a repeated Prepare would answer PREPARED from a vote never stored). A
        # new dict, so readers iterating the old one (GetStatus) are never disturbed.
        ledger = dict(self.ledger)
        ledger[tx] = entry
        self._write("ledger.json", json.dumps(ledger))
        self.ledger = ledger

    def raise_term(self, term):
        self.term = term
        self._write("term", str(term))

    def go_live(self, version):
        self.live = version
        self._write("live", version)


class Agent(part_grpc.ParticipantServicer):
    def __init__(self, args, store, access, coordinators):
        self.args, self.store, self.lock = args, store, threading.Lock()
        self.access = access
        # One function per coordinator instance, each making a channel to it.
        self.coordinators = coordinators
        self.answered_last = 0  # the instance asked first: the leader, as a rule

    def _answered_in_term(self, tx, answer):
        """coordinator.proto: a decision answered in an older coordinator term than one
        seen here comes from a deposed leader, which may presume aborted a transaction its
        successor is committing: ask again. A higher term is remembered, as from an order."""
        print(f"asked for {tx}: {decision_name(answer.decision)} (term {answer.coordinator_term})",
              file=sys.stderr, flush=True)
        if not answer.HasField("coordinator_term"):
            return answer.decision  # a coordinator older than stop 60 does not say
        with self.lock:
            if answer.coordinator_term < self.store.term:
                print(f"passed over: term {self.store.term} already seen here", file=sys.stderr, flush=True)
                return None
            if answer.coordinator_term > self.store.term:
                self.store.raise_term(answer.coordinator_term)
        return answer.decision

    def _admit_term(self, request, context):
        """participant.proto: refuse an order from a lower coordinator term than one seen
        (its sender was deposed); remember a higher one, synced, before acting on it."""
        with self.lock:
            term = request.coordinator_term
            if term < self.store.term:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"this order comes with coordinator term {term}, older than term "
                              f"{self.store.term} already seen here: its sender no longer leads; refused")
            if term > self.store.term:
                self.store.raise_term(term)

    @order_from_coordinator
    def Prepare(self, request, context):
        print(f"Prepare {request.transaction_id}", file=sys.stderr, flush=True)
        self._admit_term(request, context)
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

    @order_from_coordinator
    def Commit(self, request, context):
        self._admit_term(request, context)
        self._check_project(request, context)
        return self._commit(request, context)

    def _check_project(self, request, context):
        """An order naming another project (its endpoint registered for the wrong one) is
        refused: acting on it would go live, or undo, in another project's wave."""
        if request.project and request.project != self.args.project:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"project: this agent serves project {self.args.project}, not {request.project}")

    def _commit(self, request, context):
        with self.lock:
            entry = self.store.ledger.get(request.transaction_id)
            if entry is None or self._other(entry, request) or entry["phase"] not in ("prepared", "committed"):
                state = "never prepared" if entry is None else entry["phase"]
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"transaction {request.transaction_id} is {state} here")
            if entry["phase"] == "prepared":
                self.store.go_live(entry["version"])
                self.store.record(request.transaction_id, dict(entry, phase="committed"))
            return part.CommitResponse(live_version=self.store.live)

    @order_from_coordinator
    def Abort(self, request, context):
        self._admit_term(request, context)
        self._check_project(request, context)
        return self._abort(request, context)

    def _abort(self, request, context):
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

    @read_only
    def GetStatus(self, request, context):
        staged = [part.StagedTransaction(transaction_id=tx, version=e["version"], from_version=e["from"])
                  for tx, e in self.store.ledger.items() if e["phase"] == "prepared"]
        return part.ParticipantStatus(project=self.args.project, environment=self.args.environment,
                                      live_version=self.store.live, staged=staged)

    @order_from_coordinator
    def Preview(self, request, context):
        # Left UNIMPLEMENTED (the servicer's default): dry runs then say "not allowed".
        return super().Preview(request, context)

    def _ask_later(self, tx, after):
        threading.Thread(target=self._ask_until_decided, args=(tx, after), daemon=True).start()

    def _ask_each(self, stubs, tx, request):
        """Asks each instance in turn, the one that answered last first, until one
        answers in a term not older than one seen here; None when none does."""
        first = self.answered_last % len(stubs)
        for i in list(range(first, len(stubs))) + list(range(first)):
            try:
                decision = self._answered_in_term(tx, stubs[i].GetDecision(request, timeout=5))
            except grpc.RpcError as e:
                print(f"asking instance {i} for {tx}: {e.code()}: {e.details()}", file=sys.stderr, flush=True)
                continue
            if decision is not None:
                self.answered_last = i
                return decision
        return None

    def _ask_until_decided(self, tx, after):
        """A PREPARED vote never decides alone: it asks GetDecision until COMMIT or ABORT."""
        time.sleep(after)
        stubs = [coord_grpc.CoordinatorStub(make()) for make in self.coordinators]
        delay = 0.1
        while self.store.ledger.get(tx, {}).get("phase") == "prepared":
            incarnation = self.store.ledger[tx].get("incarnation", "")
            request = coord.GetDecisionRequest(transaction_id=tx, project=self.args.project,
                                               environment=self.args.environment,
                                               coordinator_incarnation=incarnation)
            decision = self._ask_each(stubs, tx, request)
            # Whatever goes wrong applying it (a refusal, a full disk), this thread is the
            # only one that will ask again: it never ends before the vote is resolved.
            try:
                if decision == common.DECISION_COMMIT:
                    self._commit(part.CommitRequest(transaction_id=tx), Refusing())
                elif decision == common.DECISION_ABORT:
                    self._abort(part.AbortRequest(transaction_id=tx, reason="asked: ABORT"), Refusing())
            except Exception as e:  # noqa: BLE001 - logged; asked again below
                print(f"applying the decision for {tx}: {e!r}; asking again", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 5)


def decision_name(decision):
    """DECISION_COMMIT, ...; the number for a value newer than these stubs."""
    try:
        return common.Decision.Name(decision)
    except ValueError:
        return str(decision)


class Refusing:
    """The context of a decision applied from GetDecision: a refusal is only logged."""

    def abort(self, code, details):
        print(f"applying the decision: {code}: {details}", file=sys.stderr, flush=True)
        raise RuntimeError(details)


def read_file(flag, path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        sys.exit(f"{flag} {path}: cannot read: {e.strerror}")


def security(args):
    """The server's credentials, who may call, and how to dial the coordinator, as the
    flags say: all three TLS files, or none of them (plaintext, with a warning)."""
    given = [args.tls_cert, args.tls_key, args.tls_client_ca]
    urls = [u.strip() for u in args.coordinator.split(",")]
    if not all(urls):
        sys.exit(f"--coordinator {args.coordinator!r}: an empty URL in the list")
    parsed = [(url,) + url.rpartition("://")[::2] for url in urls]
    targets = [target.rstrip("/") for _, _, target in parsed]
    if args.insecure and any(given):
        sys.exit("--insecure: give it without --tls-cert, --tls-key and --tls-client-ca")
    if not all(given) and any(given):
        sys.exit("TLS: give --tls-cert, --tls-key and --tls-client-ca together (`lockstep certs init DIR` "
                 "makes a development set), or none of them for plaintext without authentication")
    if not all(given):
        for url, scheme, _ in parsed:
            if scheme == "https":
                sys.exit(f"--coordinator {url}: an https:// URL needs the CA that signed its "
                         "certificate (--tls-client-ca), and this agent's certificate (--tls-cert, --tls-key)")
        print("plaintext: every caller may do everything; for local experiments only "
              "(--tls-cert, --tls-key and --tls-client-ca give mutual TLS)", file=sys.stderr, flush=True)
        return None, Access(), [functools.partial(grpc.insecure_channel, t) for t in targets]
    for url, scheme, _ in parsed:
        if scheme != "https":
            sys.exit(f"--coordinator {url}: TLS is configured, so use an https:// URL "
                     "(plaintext would send credentials in the clear)")
    wrong = identity_error(args.coordinator_identity)
    if wrong:
        sys.exit(f"--coordinator-identity: {wrong}")
    cert, key = read_file("--tls-cert", args.tls_cert), read_file("--tls-key", args.tls_key)
    ca = read_file("--tls-client-ca", args.tls_client_ca)
    # The handshake requires a client certificate that chains to the CA (grpcio cannot
    # ask for one without requiring it); the identity in it is checked per call.
    server = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    client = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    channels = [functools.partial(grpc.secure_channel, t, client) for t in targets]
    return server, Access(args.coordinator_identity), channels


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", required=True)
    p.add_argument("--environment", default="default")
    p.add_argument("--listen", default="127.0.0.1:7712")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--coordinator", default="http://127.0.0.1:7700",
                   help="the coordinator's URL; every instance's, comma-separated, on etcd")
    p.add_argument("--ask-after", type=float, default=10.0)
    p.add_argument("--prepare-seconds", type=float, default=0.0)
    env = os.environ.get
    p.add_argument("--tls-cert", default=env("LOCKSTEP_TLS_CERT"),
                   help="this agent's certificate (PEM): its server certificate, and its client "
                        "certificate towards the coordinator")
    p.add_argument("--tls-key", default=env("LOCKSTEP_TLS_KEY"), help="the private key of --tls-cert (PEM)")
    p.add_argument("--tls-client-ca", default=env("LOCKSTEP_TLS_CLIENT_CA"),
                   help="the deployment's CA (PEM): callers' certificates and the coordinator's must chain to it")
    p.add_argument("--coordinator-identity", default="spiffe://lockstep/coordinator",
                   help="the identity orders are taken from (the coordinator's certificate URI SAN)")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext, and anyone who can reach the agent may give it orders "
                        "(also the default without the TLS flags)")
    args = p.parse_args()
    credentials, access, coordinators = security(args)
    agent = Agent(args, Store(args.data_dir), access, coordinators)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))  # grpcio's default settings
    part_grpc.add_ParticipantServicer_to_server(agent, server)
    if credentials is None:
        port = server.add_insecure_port(args.listen)
    else:
        port = server.add_secure_port(args.listen, credentials)
    server.start()
    print(f"listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)
    for tx, entry in list(agent.store.ledger.items()):
        if entry["phase"] == "prepared":
            agent._ask_later(tx, 0)  # after a restart: ask at once
    server.wait_for_termination()


if __name__ == "__main__":
    main()
