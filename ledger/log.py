"""The log: queues verified entries and integrates them in signed batches.

Appends are checked (shape, canonical form, author's and receipt's
signatures) and queued; a single integrator thread takes what is queued at
least every ``batch_interval`` seconds (0.25 s by default), extends the
Merkle tree, signs a checkpoint of the new size with the log key and stores
entries, subtrees and checkpoint in one transaction. A caller that waits gets
each entry's index once its batch is durable; one that does not wait gets
only the leaf hash, and the entry is durable within about a second.
Appending an entry that is already in the log returns its index (safe
retries).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.ledger import merkle
from airfed.ledger.checkpoint import Checkpoint, SignedCheckpoint, sign_checkpoint
from airfed.ledger.entries import Entry, KeyRing, parse_entry, verify_entry
from airfed.ledger.errors import EntryError, LedgerError, LedgerStoreError
from airfed.ledger.store import LedgerStore, StoredEntry

__all__ = ["AppendResult", "LogWriter"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AppendResult:
    index: int
    leaf_hash: bytes
    checkpoint: SignedCheckpoint


@dataclass
class _Pending:
    entry: Entry
    leaf_hash: bytes
    future: Future[AppendResult]


class LogWriter:
    """The only writer of a log's store; thread-safe."""

    def __init__(
        self,
        store: LedgerStore,
        log_key: ed25519.Ed25519PrivateKey,
        origin: str,
        keys: KeyRing,
        *,
        batch_interval: float = 0.25,
        max_batch: int = 20000,
    ) -> None:
        self.store = store
        self.origin = origin
        self.keys = keys
        self._log_key = log_key
        self._interval = batch_interval
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._by_leaf: dict[bytes, _Pending] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._compact = store.compact_range()
        latest = store.checkpoint()
        if latest is None or latest.checkpoint.size != self._compact.size:
            self._store_checkpoint_only()
        self._latest = store.checkpoint()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> LogWriter:
        self._thread = threading.Thread(
            target=self._run, name="ledger-integrator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Integrate what is queued, then stop the integrator."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # --------------------------------------------------------------- reads

    @property
    def size(self) -> int:
        with self._cond:
            return int(self._compact.size)

    def latest_checkpoint(self) -> SignedCheckpoint:
        checkpoint = self.store.checkpoint()
        assert checkpoint is not None
        return checkpoint

    def wait_for_size(self, size: int, timeout: float) -> int:
        """Block until the log holds more than ``size`` entries or ``timeout``."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._compact.size > size or self._stopping, timeout
            )
            return int(self._compact.size)

    # -------------------------------------------------------------- appends

    def check(self, data: bytes, caller: str | None = None) -> Entry:
        """Parse and verify an entry; ``caller`` must be its author if given."""
        entry = parse_entry(data)
        if caller is not None and entry.author != caller:
            raise EntryError(
                f"organization {caller} may append only its own entries, "
                f"not entries by {entry.author}"
            )
        verify_entry(entry, self.keys)
        return entry

    def submit(self, entries: Sequence[Entry]) -> list[Future[AppendResult]]:
        """Queue verified entries; each future resolves once its batch is stored."""
        futures: list[Future[AppendResult]] = []
        leaves = [entry.leaf_hash for entry in entries]
        stored = self.store.indices_of(leaves)
        with self._cond:
            if self._stopping:
                raise LedgerError("the log is stopping; retry against the new log")
            for entry, leaf in zip(entries, leaves, strict=True):
                futures.append(self._queue(entry, leaf, stored.get(leaf)))
            self._cond.notify_all()
        return futures

    def _queue(
        self, entry: Entry, leaf: bytes, index: int | None
    ) -> Future[AppendResult]:
        pending = self._by_leaf.get(leaf)
        if pending is not None:
            return pending.future
        future: Future[AppendResult] = Future()
        if index is not None:
            future.set_result(AppendResult(index, leaf, self._latest_or_fail()))
            return future
        pending = _Pending(entry, leaf, future)
        self._pending.append(pending)
        self._by_leaf[leaf] = pending
        return future

    def _latest_or_fail(self) -> SignedCheckpoint:
        if self._latest is None:
            raise LedgerStoreError("the log has no checkpoint")
        return self._latest

    def append(
        self, entries: Sequence[Entry], timeout: float = 30.0
    ) -> list[AppendResult]:
        """Queue entries and wait until they are durable."""
        futures = self.submit(entries)
        deadline = time.monotonic() + timeout
        return [f.result(max(0.0, deadline - time.monotonic())) for f in futures]

    # ---------------------------------------------------------- integration

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending) or self._stopping)
                if self._stopping and not self._pending:
                    return
                stopping = self._stopping
            if not stopping:
                time.sleep(self._interval)
            self.integrate()

    def integrate(self) -> int:
        """Store everything queued now, in batches; returns how many."""
        done = 0
        while True:
            with self._cond:
                batch = self._pending[: self._max_batch]
                del self._pending[: len(batch)]
            if not batch:
                return done
            self._integrate_batch(batch)
            done += len(batch)

    def _integrate_batch(self, batch: list[_Pending]) -> None:
        compact = merkle.CompactRange(self._compact.size, self._compact.hashes)
        rows, nodes = [], []
        for pending in batch:
            entry = pending.entry
            rows.append(
                StoredEntry(
                    compact.size,
                    pending.leaf_hash,
                    str(entry.kind),
                    entry.author,
                    entry.key,
                    entry.data,
                )
            )
            nodes.extend(compact.append(pending.leaf_hash))
        checkpoint = sign_checkpoint(
            Checkpoint(self.origin, compact.size, compact.root()), self._log_key
        )
        try:
            self.store.append(rows, nodes, checkpoint)
        except LedgerStoreError as exc:
            logger.error("ledger batch failed entries=%d error=%s", len(batch), exc)
            self._settle(batch, exc)
            return
        self._settle(batch, None, rows, checkpoint)
        with self._cond:
            self._compact = compact
            self._latest = checkpoint
            self._cond.notify_all()
        logger.info(
            "ledger batch integrated entries=%d size=%d", len(batch), compact.size
        )

    def _settle(
        self,
        batch: list[_Pending],
        error: Exception | None,
        rows: Sequence[StoredEntry] = (),
        checkpoint: SignedCheckpoint | None = None,
    ) -> None:
        with self._cond:
            for pending in batch:
                self._by_leaf.pop(pending.leaf_hash, None)
        for position, pending in enumerate(batch):
            if error is not None or checkpoint is None:
                pending.future.set_exception(error or LedgerStoreError("not stored"))
            else:
                row = rows[position]
                pending.future.set_result(
                    AppendResult(row.index, row.leaf_hash, checkpoint)
                )

    def _store_checkpoint_only(self) -> None:
        checkpoint = sign_checkpoint(
            Checkpoint(self.origin, self._compact.size, self._compact.root()),
            self._log_key,
        )
        self.store.add_checkpoint(checkpoint)
