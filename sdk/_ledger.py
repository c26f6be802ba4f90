"""Writing to the ledger from the SDK, the nodes and the orchestrator.

:class:`EntrySender` takes statements (kind, key, body), signs them with the
author organization's identity key and appends them to the network's log from
a background thread, in batches: whoever records an event never waits for the
log, nor for its fsync. A log that cannot be reached is retried with a
growing pause; what is still queued when the process exits is flushed for a
few seconds and then dropped with a warning (the queue lives in memory).

:func:`register_plan` is the synchronous path: the creator of a compute plan
signs a ``plan_registered`` entry with the spec's hash and the root of its
task tree (``airfed.sdk._membership``) and waits until the log holds it,
before the plan goes to the orchestrator.

Nothing here imports gRPC until a statement is actually sent, so code that
Airflow imports in every task process stays light; a task process that has
the orchestrator's relay (``airfed.sdk._ledger_relay``) never imports it.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from airfed.sdk.errors import AirfedError, ConfigError

if TYPE_CHECKING:
    from airfed.sdk.spec import PlanSpec

__all__ = [
    "EntrySender",
    "Statement",
    "plan_statement",
    "register_plan",
    "sign_statements",
]

logger = logging.getLogger(__name__)

_BATCH = 500
_MAX_QUEUED = 100_000
_MAX_PAUSE = 30.0
_FLUSH_AT_EXIT = 5.0


@dataclass(frozen=True)
class Statement:
    """What an entry says, before it is signed: kind, key and body.

    ``body`` may be a function that returns the body: it is called on the
    sending thread, so whatever it looks up costs the recorder nothing.
    """

    kind: str
    key: str
    body: Mapping[str, Any] | Callable[[], Mapping[str, Any]]


class EntrySender:
    """Signs statements as ``profile``'s organization and appends them in batches.

    ``profile`` is the author's folder (``DIR/<org>`` or
    ``DIR/orchestrator``): its ``identity.key`` signs, its TLS files open the
    mutual-TLS channel to ``address`` (the network's log by default).
    ``wait`` makes each batch wait until the log made it durable; the calling
    thread never does. With ``relay`` (the socket of the orchestrator's
    :class:`~airfed.sdk._ledger_relay.LedgerRelay`), statements go to the
    relay, which signs and appends them; a relay that does not answer is
    replaced by a channel of this sender's own.
    """

    def __init__(
        self,
        profile: Path,
        *,
        address: str | None = None,
        author: str | None = None,
        identity_key_file: Path | None = None,
        wait: bool = False,
        flush_at_exit: bool = True,
        relay: Path | None = None,
    ) -> None:
        self.profile = Path(profile)
        self.author = author or self.profile.name
        self._identity_key_file = identity_key_file or self.profile / "identity.key"
        self._address = address
        self._wait = wait
        self._relay = relay
        self._queue: queue.Queue[Statement] = queue.Queue(_MAX_QUEUED)
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0
        self._sent = 0
        self._thread = threading.Thread(
            target=self._run, name=f"ledger-sender-{self.author}", daemon=True
        )
        self._thread.start()
        if flush_at_exit:
            atexit.register(self.close, _FLUSH_AT_EXIT)

    @property
    def sent(self) -> int:
        """How many entries the log (or the relay) has accepted from this sender."""
        return self._sent

    def record(
        self,
        kind: str,
        key: str,
        body: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    ) -> None:
        """Queue one statement; returns at once (drops it if the queue is full)."""
        with self._idle:
            self._busy += 1
        try:
            self._queue.put_nowait(
                Statement(str(kind), key, body if callable(body) else dict(body))
            )
        except queue.Full:
            self._done(1)
            logger.warning("ledger queue full, entry dropped kind=%s key=%s", kind, key)

    def flush(self, timeout: float) -> bool:
        """Wait until every queued statement is sent; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = _FLUSH_AT_EXIT) -> None:
        """Flush for up to ``timeout`` seconds, then stop the sender."""
        if self._stop.is_set():
            return
        if not self.flush(timeout):
            logger.warning(
                "ledger entries not sent at exit author=%s pending=%d",
                self.author,
                self._busy,
            )
        self._stop.set()
        self._thread.join(timeout=1.0)

    # -- the sending thread

    def _run(self) -> None:
        transport: _Transport | None = None
        pause = 0.5
        batch: list[Statement] = []
        while not self._stop.is_set():
            if not batch:
                batch = self._next_batch()
                if not batch:
                    continue
            try:
                if transport is None:
                    transport = self._connect()
                self._sent += transport.send(batch)
            except _Unavailable as exc:
                logger.warning(
                    "ledger append failed, will retry author=%s entries=%d error=%s",
                    self.author,
                    len(batch),
                    exc,
                )
                if transport is not None:
                    transport.close()
                transport = None
                self._stop.wait(pause)
                pause = min(_MAX_PAUSE, pause * 2)
                continue
            except AirfedError as exc:
                logger.warning(
                    "ledger entries dropped author=%s entries=%d error=%s",
                    self.author,
                    len(batch),
                    exc,
                )
            except Exception:
                logger.exception("ledger entries dropped author=%s", self.author)
            self._done(len(batch))
            batch, pause = [], 0.5
        if transport is not None:
            transport.close()

    def _next_batch(self) -> list[Statement]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        while len(batch) < _BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _connect(self) -> _Transport:
        """The relay when one answers, else a channel of this sender's own."""
        if self._relay is not None:
            from airfed.sdk._ledger_relay import RelayClient, RelayUnavailable

            try:
                return _RelayTransport(RelayClient(self._relay))
            except RelayUnavailable as exc:
                logger.debug(
                    "ledger relay not used author=%s error=%s", self.author, exc
                )
        from airfed.ledger.client import LedgerClient
        from airfed.sdk.network import load_identity_key, load_network

        address = self._address or load_network(self.profile.parent).ledger_address
        identity = load_identity_key(self._identity_key_file)
        client = LedgerClient(address, self.profile, timeout=30.0)
        return _LogTransport(client, identity, self.author, self._wait)

    def _done(self, count: int) -> None:
        with self._idle:
            self._busy = max(0, self._busy - count)
            self._idle.notify_all()


class _Unavailable(AirfedError):  # type: ignore[misc,unused-ignore]
    """The log could not be reached; the batch is sent again later."""


def _materialized(batch: list[Statement]) -> list[tuple[Statement, Mapping[str, Any]]]:
    """Each statement with its body; one whose body cannot be made is dropped."""
    made = []
    for statement in batch:
        body = statement.body
        try:
            made.append((statement, body() if callable(body) else body))
        except (AirfedError, OSError, ValueError) as exc:
            logger.error(
                "ledger entry not made, dropped kind=%s key=%s error=%s",
                statement.kind,
                statement.key,
                exc,
            )
    return made


def sign_statements(
    statements: list[Statement], *, author: str, identity_key: Any
) -> list[Any]:
    """Signed entries for ``statements``, in order, as ``author``.

    A statement whose body cannot be made, or that the ledger's rules refuse,
    is dropped with an ERROR line that names it; the others are signed.
    """
    from airfed.ledger.entries import make_entry
    from airfed.ledger.errors import EntryError

    entries = []
    for statement, body in _materialized(statements):
        try:
            entries.append(
                make_entry(
                    statement.kind,
                    author=author,
                    key=statement.key,
                    body=body,
                    identity_key=identity_key,
                )
            )
        except (EntryError, ValueError) as exc:
            logger.error(
                "ledger entry not made, dropped kind=%s key=%s error=%s",
                statement.kind,
                statement.key,
                exc,
            )
    return entries


class _Transport(Protocol):
    def send(self, batch: list[Statement]) -> int:
        """Send ``batch``; returns how many entries were taken."""

    def close(self) -> None: ...


class _LogTransport:
    """Signs the statements here and appends them over a channel to the log."""

    def __init__(self, client: Any, identity: Any, author: str, wait: bool) -> None:
        self._client = client
        self._identity = identity
        self._author = author
        self._wait = wait

    def send(self, batch: list[Statement]) -> int:
        entries = sign_statements(
            batch, author=self._author, identity_key=self._identity
        )
        return self._append(entries) if entries else 0

    def _append(self, entries: list[Any]) -> int:
        """Append; an entry the log refuses is dropped, the others are kept."""
        from airfed.ledger.errors import LedgerError, LedgerUnavailable

        try:
            self._client.append(entries, wait=self._wait)
            return len(entries)
        except LedgerUnavailable as exc:
            raise _Unavailable(str(exc)) from exc
        except LedgerError as exc:
            if len(entries) == 1:
                logger.error(
                    "ledger refused entry kind=%s key=%s error=%s",
                    entries[0].kind,
                    entries[0].key,
                    exc,
                )
                return 0
        return sum(self._append([entry]) for entry in entries)

    def close(self) -> None:
        self._client.close()


class _RelayTransport:
    """Hands the statements to the orchestrator's relay, which signs them."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def send(self, batch: list[Statement]) -> int:
        from airfed.sdk._ledger_relay import RelayUnavailable

        made = [
            {"kind": statement.kind, "key": statement.key, "body": dict(body)}
            for statement, body in _materialized(batch)
        ]
        if not made:
            return 0
        try:
            refused = self._client.send(made)
        except RelayUnavailable as exc:
            raise _Unavailable(str(exc)) from exc
        for refusal in refused:
            statement = made[int(refusal.get("index", 0))]
            logger.error(
                "ledger relay refused entry kind=%s key=%s error=%s",
                statement["kind"],
                statement["key"],
                refusal.get("error"),
            )
        return len(made) - len(refused)

    def close(self) -> None:
        self._client.close()


def plan_statement(spec: PlanSpec) -> Statement:
    """The ``plan_registered`` statement of a compiled plan.

    Besides the spec's hash it records the root of the plan's task tree and
    the task count: a node runs a task only with a proof that the task is
    one of these.
    """
    from airfed.sdk._membership import tasks_root
    from airfed.sdk.spec import spec_hash

    return Statement(
        "plan_registered",
        spec.key,
        {
            "spec_hash": spec_hash(spec),
            "tasks_root": tasks_root(spec),
            "task_count": len(spec.tasks),
            "creator": spec.creator,
            "name": spec.name[:200],
            "organizations": sorted(
                {*spec.organizations, *(task.worker for task in spec.tasks)}
            ),
        },
    )


def register_plan(profile: Path, spec: PlanSpec, *, timeout: float = 30.0) -> int:
    """Sign the plan's registration as the creator and wait until it is logged.

    ``profile`` is the creator organization's folder (``DIR/<org>``).
    Registering the same spec again is harmless: the ledger already holds
    it, and no second entry is written. Returns the entry's index.
    """
    from airfed.ledger.client import LedgerClient
    from airfed.ledger.entries import EntryKind, make_entry, parse_entry
    from airfed.sdk.network import load_identity_key, load_network

    profile = Path(profile)
    organization = profile.name
    if spec.creator.split("/")[0] != organization:
        raise ConfigError(
            f"plan {spec.key} was created by {spec.creator}; register it with "
            f"that organization's profile, not {organization}'s"
        )
    statement = plan_statement(spec)
    body = dict(statement.body) if isinstance(statement.body, Mapping) else {}
    network = load_network(profile.parent)
    with LedgerClient(network.ledger_address, profile, timeout=timeout) as client:
        for index, data in client.find(spec.key):
            entry = parse_entry(data)
            if (
                entry.kind is EntryKind.PLAN_REGISTERED
                and entry.author == organization
                and entry.body.get("spec_hash") == body["spec_hash"]
                and entry.body.get("tasks_root") == body["tasks_root"]
            ):
                return int(index)
        entry = make_entry(
            statement.kind,
            author=organization,
            key=statement.key,
            body=body,
            identity_key=load_identity_key(profile / "identity.key"),
        )
        outcome = client.append([entry], wait=True)
    logger.info("plan registered on the ledger plan=%s", spec.key)
    return int(outcome.indices[0]) if outcome.indices else -1
