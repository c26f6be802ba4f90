"""``LedgerClient``: the ledger's gRPC API over mutual TLS, from a profile.

::

    with LedgerClient("127.0.0.1:7400", Path("net/a")) as ledger:
        ledger.append([entry])                 # waits until durable
        note = ledger.latest_checkpoint(final_only=True)

Transport and server errors become ``LedgerUnavailable`` (could not reach
or the log failed) or ``LedgerError`` (the log refused the request), raised
from the gRPC error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from airfed.ledger import ledger_pb2 as pb
from airfed.ledger import ledger_pb2_grpc as pb_grpc
from airfed.ledger.entries import Entry
from airfed.ledger.errors import LedgerError, LedgerUnavailable, NotRecordedError
from airfed.sdk.errors import ConfigError
from airfed.sdk.network import Network, load_network

__all__ = ["AppendOutcome", "InclusionProof", "LedgerClient"]

_T = TypeVar("_T")
_UNAVAILABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
}
_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class AppendOutcome:
    leaf_hashes: list[bytes]
    indices: list[int]  # empty unless the append waited
    checkpoint: str  # the signed note covering the entries, when waited


@dataclass(frozen=True)
class InclusionProof:
    index: int
    tree_size: int
    hashes: list[bytes]


def _credentials(profile: Path) -> grpc.ChannelCredentials:
    tls = Path(profile) / "tls"
    try:
        return grpc.ssl_channel_credentials(
            root_certificates=(tls / "ca.crt").read_bytes(),
            private_key=(tls / "tls.key").read_bytes(),
            certificate_chain=(tls / "tls.crt").read_bytes(),
        )
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS files in {tls}: {exc}") from exc


class LedgerClient:
    """A connection to a ledger service (the log or a replica)."""

    def __init__(self, address: str, profile: Path, *, timeout: float = 60.0) -> None:
        self.address = address
        self.profile = Path(profile)
        self.timeout = timeout
        self._channel = grpc.secure_channel(address, _credentials(profile), _OPTIONS)
        self._stub = pb_grpc.LedgerStub(self._channel)

    @classmethod
    def for_profile(cls, profile: Path, **kwargs: Any) -> LedgerClient:
        """A client of the network's log, as the organization of ``profile``."""
        network = load_network(Path(profile).parent)
        return cls(network.ledger_address, Path(profile), **kwargs)

    @functools.cached_property
    def network(self) -> Network:
        """The network of the client's profile (``DIR`` of ``DIR/<org>``)."""
        return load_network(self.profile.parent)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: Callable[..., _T], request: Any) -> _T:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise _mapped(exc, self.address) from exc

    # -------------------------------------------------------------- writes

    def append(
        self, entries: Sequence[Entry | bytes], *, wait: bool = True
    ) -> AppendOutcome:
        datas = [e.data if isinstance(e, Entry) else e for e in entries]
        reply = self._call(
            self._stub.Append, pb.AppendRequest(entries=datas, wait=wait)
        )
        return AppendOutcome(
            list(reply.leaf_hashes), list(reply.indices), reply.checkpoint
        )

    def add_cosignature(self, size: int, signature_line: str) -> str:
        request = pb.AddCosignatureRequest(size=size, signature_line=signature_line)
        return str(self._call(self._stub.AddCosignature, request).note)

    # --------------------------------------------------------------- reads

    def entries(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """Entries [start, end), fetched page by page."""
        found: list[tuple[int, bytes]] = []
        while start < end:
            page = self._call(
                self._stub.GetEntries, pb.GetEntriesRequest(start=start, end=end)
            )
            if not page.entries:
                break
            found.extend((e.index, e.data) for e in page.entries)
            start = page.entries[-1].index + 1
        return found

    def entries_page(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """One page of entries from ``start`` (the server caps its length)."""
        page = self._call(
            self._stub.GetEntries, pb.GetEntriesRequest(start=start, end=end)
        )
        return [(e.index, e.data) for e in page.entries]

    def find(self, key: str, limit: int = 100) -> list[tuple[int, bytes]]:
        page = self._call(
            self._stub.FindEntries, pb.FindEntriesRequest(key=key, limit=limit)
        )
        return [(e.index, e.data) for e in page.entries]

    def latest_checkpoint(self, *, final_only: bool = False) -> str:
        request = pb.GetLatestCheckpointRequest(final_only=final_only)
        return str(self._call(self._stub.GetLatestCheckpoint, request).note)

    def checkpoint(self, size: int) -> str:
        request = pb.GetCheckpointRequest(size=size)
        return str(self._call(self._stub.GetCheckpoint, request).note)

    def inclusion_proof(
        self,
        index: int | None = None,
        *,
        leaf_hash: bytes = b"",
        tree_size: int = 0,
    ) -> InclusionProof:
        request = pb.GetInclusionProofRequest(
            index=-1 if index is None else index,
            leaf_hash=leaf_hash,
            tree_size=tree_size,
        )
        reply = self._call(self._stub.GetInclusionProof, request)
        return InclusionProof(reply.index, reply.tree_size, list(reply.hashes))

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        request = pb.GetConsistencyProofRequest(old_size=old_size, new_size=new_size)
        return list(self._call(self._stub.GetConsistencyProof, request).hashes)

    def stream(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        """Every entry from ``start``, then new ones as the log integrates them.

        The iterator runs until the caller stops iterating (or the server
        stops); breaking out of the loop cancels the stream.
        """
        call = self._stub.StreamEntries(pb.StreamEntriesRequest(start=start))
        try:
            for entry in call:
                yield entry.index, entry.data
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise _mapped(exc, self.address) from exc
        finally:
            call.cancel()


def _mapped(exc: grpc.RpcError, address: str) -> LedgerError:
    code = exc.code()
    detail = exc.details() or str(code)
    if code in _UNAVAILABLE:
        return LedgerUnavailable(
            f"the ledger at {address} cannot be reached ({detail}); "
            "check that it runs and that the network's TLS files match"
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return NotRecordedError(detail)
    return LedgerError(f"the ledger refused the request: {detail}")
