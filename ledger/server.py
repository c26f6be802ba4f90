"""The ledger's gRPC service over mutual TLS.

The orchestrator runs the log (``airfed ledger serve --network DIR``): it
accepts appends, integrates them and takes cosignatures. A witness's replica
can serve the same read-only API from its own database. Every caller presents
a certificate from the network's CA; its organization is the certificate's
common name, and it may append only entries it authored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc

from airfed.ledger import ledger_pb2 as pb
from airfed.ledger import ledger_pb2_grpc as pb_grpc
from airfed.ledger import merkle
from airfed.ledger._network import key_ring
from airfed.ledger.checkpoint import (
    NoteSignature,
    log_origin,
    verify_cosignature,
    witness_name,
)
from airfed.ledger.errors import (
    CheckpointError,
    EntryError,
    LedgerError,
    LedgerStoreError,
)
from airfed.ledger.log import LogWriter
from airfed.ledger.store import LedgerStore
from airfed.ledger.witness import Witness
from airfed.sdk.errors import ConfigError
from airfed.sdk.network import (
    ORCHESTRATOR_ID,
    Network,
    load_identity_key,
    load_network,
)

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_PAGE",
    "LedgerServer",
    "LedgerServicer",
    "serve_log",
    "serve_replica",
]

logger = logging.getLogger(__name__)

MAX_PAGE = 5000
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def _caller(context: grpc.ServicerContext) -> str:
    names = context.auth_context().get("x509_common_name") or []
    if not names:
        _fail(context, grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
    return bytes(names[0]).decode()


def _fail(context: grpc.ServicerContext, code: Any, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("grpc abort returned")  # abort always raises


def _abort(context: grpc.ServicerContext, exc: LedgerError) -> NoReturn:
    code = (
        grpc.StatusCode.UNAVAILABLE
        if isinstance(exc, LedgerStoreError)
        else grpc.StatusCode.INVALID_ARGUMENT
    )
    _fail(context, code, str(exc))


class LedgerServicer(pb_grpc.LedgerServicer):  # type: ignore[misc,unused-ignore]
    """The service over a store; ``writer`` is None on a read-only replica."""

    def __init__(
        self, network: Network, store: LedgerStore, writer: LogWriter | None
    ) -> None:
        self.network = network
        self.store = store
        self.writer = writer
        self._stopping = threading.Event()

    def stop_streams(self) -> None:
        self._stopping.set()

    # ---------------------------------------------------------------- writes

    def Append(
        self, request: pb.AppendRequest, context: grpc.ServicerContext
    ) -> pb.AppendResponse:
        caller = _caller(context)
        if self.writer is None:
            _fail(context, grpc.StatusCode.UNIMPLEMENTED, "this replica is read-only")
        if len(request.entries) > MAX_PAGE:
            _fail(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {MAX_PAGE} entries a call",
            )
        try:
            entries = [self.writer.check(data) for data in request.entries]
        except EntryError as exc:
            _fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        foreign = sorted({e.author for e in entries if e.author != caller})
        if foreign:
            _fail(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"organization {caller} may append only its own entries, "
                f"not entries by {', '.join(foreign)}",
            )
        try:
            pending = self.writer.submit(entries)
            if not request.wait:
                return pb.AppendResponse(leaf_hashes=[e.leaf_hash for e in entries])
            results = [f.result(timeout=60) for f in pending]
        except LedgerError as exc:
            _abort(context, exc)
        logger.info("ledger append caller=%s entries=%d", caller, len(entries))
        return pb.AppendResponse(
            leaf_hashes=[r.leaf_hash for r in results],
            indices=[r.index for r in results],
            checkpoint=results[-1].checkpoint.text() if results else "",
        )

    def AddCosignature(
        self, request: pb.AddCosignatureRequest, context: grpc.ServicerContext
    ) -> pb.CheckpointResponse:
        caller = _caller(context)
        try:
            org = self.network.organization(caller)
        except ConfigError as exc:
            _fail(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if org.role != "partner":
            _fail(context, grpc.StatusCode.PERMISSION_DENIED, "only partners cosign")
        signed = self.store.checkpoint(request.size)
        if signed is None:
            _fail(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"no checkpoint of size {request.size}",
            )
        try:
            line = request.signature_line
            signature = NoteSignature.parse_line(line.rstrip("\n"))
            verify_cosignature(
                signed.checkpoint,
                signature,
                witness_name(self.network.name, caller),
                key_ring(self.network).raw(caller),
            )
            self.store.add_cosignature(request.size, caller, signature.line()[:-1])
        except (CheckpointError, EntryError) as exc:
            _fail(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except LedgerError as exc:
            _abort(context, exc)
        logger.info("ledger cosignature witness=%s size=%d", caller, request.size)
        note = self.store.checkpoint(request.size)
        return pb.CheckpointResponse(note=note.text() if note else "")

    # ----------------------------------------------------------------- reads

    def GetEntries(
        self, request: pb.GetEntriesRequest, context: grpc.ServicerContext
    ) -> pb.GetEntriesResponse:
        _caller(context)
        end = min(request.end, request.start + MAX_PAGE)
        if request.start < 0 or end < request.start:
            _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "bad entry range")
        response = pb.GetEntriesResponse()
        add = response.entries.add  # fills the message in place, no copies
        for index, data in self.store.entry_datas(request.start, end):
            add(index=index, data=data)
        return response

    def FindEntries(
        self, request: pb.FindEntriesRequest, context: grpc.ServicerContext
    ) -> pb.GetEntriesResponse:
        _caller(context)
        limit = min(request.limit or 100, MAX_PAGE)
        rows = self.store.entries_by_key(request.key, limit)
        return pb.GetEntriesResponse(
            entries=[pb.Entry(index=r.index, data=r.data) for r in rows]
        )

    def GetLatestCheckpoint(
        self, request: pb.GetLatestCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.CheckpointResponse:
        _caller(context)
        size = None
        if request.final_only:
            size = self.store.latest_final_size(self.network.witness_quorum)
            if size is None:
                _fail(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    "no checkpoint is final yet: too few witnesses cosigned",
                )
        signed = self.store.checkpoint(size)
        if signed is None:
            _fail(context, grpc.StatusCode.NOT_FOUND, "the log has no checkpoint yet")
        return pb.CheckpointResponse(note=signed.text())

    def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.CheckpointResponse:
        _caller(context)
        signed = self.store.checkpoint(request.size)
        if signed is None:
            _fail(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"no checkpoint of size {request.size}",
            )
        return pb.CheckpointResponse(note=signed.text())

    def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> pb.InclusionProofResponse:
        _caller(context)
        index: int | None = request.index
        if request.index < 0:
            index = self.store.index_of(request.leaf_hash)
            if index is None:
                _fail(context, grpc.StatusCode.NOT_FOUND, "no entry with that hash")
        size = request.tree_size or self.store.size()
        try:
            hashes = merkle.inclusion_proof_from(self.store, int(index or 0), size)
        except (ValueError, LedgerStoreError) as exc:
            _fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.InclusionProofResponse(
            index=int(index or 0), tree_size=size, hashes=hashes
        )

    def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> pb.ConsistencyProofResponse:
        _caller(context)
        try:
            if request.new_size > self.store.size():
                raise ValueError(f"the log has fewer than {request.new_size} entries")
            hashes = merkle.consistency_proof_from(
                self.store, request.old_size, request.new_size
            )
        except (ValueError, LedgerStoreError) as exc:
            _fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.ConsistencyProofResponse(hashes=hashes)

    def StreamEntries(
        self, request: pb.StreamEntriesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Entry]:
        _caller(context)
        position = max(0, request.start)
        while context.is_active() and not self._stopping.is_set():
            rows = self.store.entry_datas(position, position + MAX_PAGE)
            for index, data in rows:
                yield pb.Entry(index=index, data=data)
            position += len(rows)
            if len(rows) < MAX_PAGE:
                self._wait_for_more(position)

    def _wait_for_more(self, size: int) -> None:
        if self.writer is not None:
            self.writer.wait_for_size(size - 1, timeout=0.5)
        else:
            self._stopping.wait(0.5)


# --------------------------------------------------------------------------
# Serving


def _server_credentials(profile: Path) -> grpc.ServerCredentials:
    tls = profile / "tls"
    try:
        return grpc.ssl_server_credentials(
            [((tls / "tls.key").read_bytes(), (tls / "tls.crt").read_bytes())],
            root_certificates=(tls / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS files in {tls}: {exc}") from exc


@dataclass
class LedgerServer:
    """A running gRPC server with its store and (on the log) its writer."""

    server: grpc.Server
    servicer: LedgerServicer
    address: str

    def stop(self, grace: float = 1.0) -> None:
        self.servicer.stop_streams()
        self.server.stop(grace).wait()
        if self.servicer.writer is not None:
            self.servicer.writer.stop()
        self.servicer.store.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start_server(
    servicer: LedgerServicer, profile: Path, address: str, workers: int = 16
) -> LedgerServer:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ledger"),
        options=_GRPC_OPTIONS,
    )
    pb_grpc.add_LedgerServicer_to_server(servicer, server)
    try:
        server.add_secure_port(address, _server_credentials(profile))
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc}") from exc
    server.start()
    logger.info("ledger serving address=%s", address)
    return LedgerServer(server, servicer, address)


def serve_log(
    network_dir: Path,
    database_url: str | None = None,
    *,
    address: str | None = None,
    batch_interval: float = 0.25,
) -> LedgerServer:
    """Start the orchestrator's log: store, integrator and gRPC service."""
    network = load_network(network_dir)
    home = network.root / ORCHESTRATOR_ID
    url = database_url or f"sqlite:///{home / 'ledger.db'}"
    store = LedgerStore(url)
    writer = LogWriter(
        store,
        load_identity_key(home / "log.key"),
        log_origin(network.name),
        key_ring(network),
        batch_interval=batch_interval,
    ).start()
    servicer = LedgerServicer(network, store, writer)
    return start_server(servicer, home, address or network.ledger_address)


def serve_replica(witness: Witness, address: str | None = None) -> LedgerServer:
    """Serve a witness's replica read-only (entries, checkpoints, proofs).

    Other partners can compare what it holds with what the log shows them.
    The default address is the organization's ``ledger_address``.
    """
    org = witness.network.organization(witness.organization)
    servicer = LedgerServicer(witness.network, witness.store, None)
    return start_server(servicer, witness.profile, address or org.ledger_address)
