"""A partner's witness: a replica of the log that cosigns what it has checked.

Each sync (``Witness.sync``), in order:

1. fetch the log's latest checkpoint and check the log's signature;
2. compare it with the replica: a checkpoint for a size the replica already
   holds must have the replica's root there (else: split view);
3. check the log's consistency proof from the last checkpoint this witness
   cosigned to the new one (RFC 9162 section 2.1.4.2);
4. fetch the new entries, check every author's (and receipt's) signature and
   append them to the replica's own tree;
5. recompute the root at the new size: it must be the checkpoint's root;
6. only then cosign (c2sp.org/tlog-cosignature) and send the cosignature.

Any failure of 2, 3 or 5 is an alarm: logged at ERROR, stored in the
replica's database, shown by ``health()``, and the witness refuses to cosign
from then on. A checkpoint is *final* once ``witness_quorum`` partners have
cosigned it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airfed.ledger import merkle
from airfed.ledger._network import checkpoint_verifier, key_ring
from airfed.ledger.checkpoint import (
    SignedCheckpoint,
    VerifiedCheckpoint,
    cosign,
    witness_name,
)
from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import Entry, verify_entries
from airfed.ledger.errors import (
    CheckpointError,
    EntryError,
    LedgerError,
    LedgerUnavailable,
    SplitViewError,
)
from airfed.ledger.store import LedgerStore, StoredEntry
from airfed.sdk.network import load_identity_key, load_network

__all__ = ["SyncResult", "Witness"]

logger = logging.getLogger(__name__)

_PAGE = 5000
_COMMIT_EVERY = 50000


@dataclass(frozen=True)
class SyncResult:
    size: int
    fetched: int
    cosigned: bool
    note: str


class Witness:
    """The witness of the organization whose profile is ``profile``."""

    def __init__(
        self,
        profile: Path,
        client: LedgerClient,
        *,
        database_url: str | None = None,
        workers: int | None = None,
    ) -> None:
        profile = Path(profile).resolve()
        self.profile = profile
        self.network = load_network(profile.parent)
        self.organization = profile.name
        self.network.organization(self.organization)
        self.client = client
        self.store = LedgerStore(
            database_url or f"sqlite:///{profile / 'ledger-replica.db'}"
        )
        self.name = witness_name(self.network.name, self.organization)
        self._key = load_identity_key(profile / "identity.key")
        self._verifier = checkpoint_verifier(self.network)
        self._keys = key_ring(self.network)
        self._workers = workers
        self._compact = self.store.compact_range()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- health

    def health(self) -> dict[str, Any]:
        """What the node's /health shows: ``status`` is "alarm" on a split view."""
        alarms = self.store.alarms()
        cosigned = self.store.cosigned_sizes(self.organization)
        return {
            "status": "alarm" if alarms else "ok",
            "organization": self.organization,
            "replica_size": self._compact.size,
            "cosigned_size": cosigned[-1] if cosigned else None,
            "alarms": [
                {"time": a.time.isoformat(), "kind": a.kind, "message": a.message}
                for a in alarms
            ],
        }

    def _alarm(self, kind: str, message: str) -> SplitViewError:
        logger.error("ledger witness alarm kind=%s detail=%s", kind, message)
        self.store.record_alarm(kind, message)
        return SplitViewError(f"{kind}: {message}")

    # ------------------------------------------------------------------ sync

    def sync(self) -> SyncResult:
        """Catch up with the log and cosign its latest checkpoint (see above)."""
        with self._lock:
            alarms = self.store.alarms()
            if alarms:
                raise SplitViewError(
                    f"witness {self.organization} is in alarm and will not cosign: "
                    f"{alarms[0].message}"
                )
            # (1): the latest checkpoint, signed by the log.
            note = self.client.latest_checkpoint()
            try:
                verified = self._verifier.verify(note)
            except CheckpointError as exc:
                raise self._alarm("bad checkpoint", str(exc)) from exc
            checkpoint = verified.checkpoint
            # (2): a size the replica holds must have the replica's root.
            if checkpoint.size <= self._compact.size:
                self._check_known_size(verified)
                return self._cosign(verified, fetched=0)
            # (3): consistent with the last checkpoint this witness cosigned.
            self._check_consistency(verified)
            # (4): fetch and verify the new entries.
            fetched = self._catch_up(checkpoint.size)
            # (5): the replica's root must be the checkpoint's.
            if self._compact.root() != checkpoint.root:
                raise self._alarm(
                    "split view",
                    f"checkpoint {checkpoint.size} of the log has a root that the "
                    "entries it served do not produce",
                )
            # (6): cosign.
            return self._cosign(verified, fetched)

    def _check_known_size(self, verified: VerifiedCheckpoint) -> None:
        size, root = verified.checkpoint.size, verified.checkpoint.root
        mine = merkle.root_from(self.store, size)
        if mine != root:
            raise self._alarm(
                "split view",
                f"the log shows a root for size {size} that differs from the "
                "root this witness holds for that size",
            )

    def _check_consistency(self, verified: VerifiedCheckpoint) -> None:
        cosigned = self.store.cosigned_sizes(self.organization)
        if not cosigned:
            return
        old_size = cosigned[-1]
        old = self.store.checkpoint(old_size)
        assert old is not None
        new = verified.checkpoint
        proof = self.client.consistency_proof(old_size, new.size)
        if not merkle.verify_consistency(
            old_size, new.size, old.checkpoint.root, new.root, proof
        ):
            raise self._alarm(
                "inconsistent checkpoint",
                f"checkpoint {new.size} is not consistent with checkpoint "
                f"{old_size} that this witness cosigned: the log was rewritten",
            )

    def _catch_up(self, size: int) -> int:
        """Fetch, check and store entries up to ``size``, as a pipeline.

        One thread fetches the next page while this one checks the current
        page (its signatures on ``workers`` threads) and extends the tree,
        and another stores the previous run of pages.
        """
        initial = self._compact.size
        staged = _copy(self._compact)
        rows: list[StoredEntry] = []
        nodes: list[tuple[int, int, bytes]] = []
        writing: Future[merkle.CompactRange] | None = None
        with (
            ThreadPoolExecutor(self._workers, thread_name_prefix="verify") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="replica-write") as writer,
        ):
            try:
                for start, page in self._pages(staged.size, size):
                    entries = self._check_page(page, start, pool)
                    self._extend(staged, entries, rows, nodes)
                    if len(rows) >= _COMMIT_EVERY:
                        self._finish(writing)
                        writing = writer.submit(self._store, rows, nodes, _copy(staged))
                        rows, nodes = [], []
                self._finish(writing)
                writing = None
                self._finish(writer.submit(self._store, rows, nodes, _copy(staged)))
            finally:
                self._finish(writing)
        fetched = int(size - initial)
        logger.info(
            "ledger witness caught up witness=%s size=%d fetched=%d",
            self.organization,
            size,
            fetched,
        )
        return fetched

    def _pages(
        self, start: int, end: int
    ) -> Iterator[tuple[int, list[tuple[int, bytes]]]]:
        """Pages of entries [start, end), fetched one page ahead."""
        ahead: queue.Queue[Any] = queue.Queue(maxsize=2)
        stop = threading.Event()

        def fetch() -> None:
            position = start
            try:
                while position < end and not stop.is_set():
                    page = self.client.entries_page(
                        position, min(end, position + _PAGE)
                    )
                    if not page:
                        raise LedgerUnavailable(
                            f"the log served no entries from {position}"
                        )
                    ahead.put((position, page))
                    position += len(page)
                ahead.put(None)
            except LedgerError as exc:
                ahead.put(exc)

        fetcher = threading.Thread(target=fetch, name="replica-fetch", daemon=True)
        fetcher.start()
        try:
            while (item := ahead.get()) is not None:
                if isinstance(item, LedgerError):
                    raise item
                yield item
        finally:
            stop.set()
            while fetcher.is_alive():
                with contextlib.suppress(queue.Empty):
                    ahead.get(timeout=0.1)

    def _check_page(
        self, page: list[tuple[int, bytes]], start: int, pool: ThreadPoolExecutor
    ) -> list[Entry]:
        indices = [index for index, _ in page]
        if indices != list(range(start, start + len(page))):
            raise self._alarm(
                "bad entries", f"the log served entries out of order from {start}"
            )
        try:
            entries: list[Entry] = verify_entries(
                [data for _, data in page],
                self._keys,
                first_index=start,
                workers=self._workers,
                pool=pool,
            )
        except EntryError as exc:
            raise self._alarm("bad entry", str(exc)) from exc
        return entries

    @staticmethod
    def _extend(
        compact: merkle.CompactRange,
        entries: list[Entry],
        rows: list[StoredEntry],
        nodes: list[tuple[int, int, bytes]],
    ) -> None:
        for entry in entries:
            leaf = merkle.leaf_hash(entry.data)
            rows.append(
                StoredEntry(
                    compact.size,
                    leaf,
                    str(entry.kind),
                    entry.author,
                    entry.key,
                    entry.data,
                )
            )
            nodes.extend(compact.append(leaf))

    def _store(
        self,
        rows: list[StoredEntry],
        nodes: list[tuple[int, int, bytes]],
        compact: merkle.CompactRange,
    ) -> merkle.CompactRange:
        """Store a run of checked entries (on the writer thread).

        ``compact`` is the tree's right edge after these entries; it becomes
        the replica's once they are durable.
        """
        if rows:
            self.store.append(rows, nodes, None)
        self._compact = compact
        return compact

    def _finish(self, writing: Future[merkle.CompactRange] | None) -> None:
        if writing is not None:
            writing.result()

    def _cosign(self, verified: VerifiedCheckpoint, fetched: int) -> SyncResult:
        checkpoint = verified.checkpoint
        if self.organization in verified.cosigners:
            return SyncResult(checkpoint.size, fetched, False, verified.note)
        cosigned = self.store.cosigned_sizes(self.organization)
        if cosigned and cosigned[-1] > checkpoint.size:
            return SyncResult(checkpoint.size, fetched, False, verified.note)
        line = self.store.cosignature_line(checkpoint.size, self.organization)
        if line is None:  # else: cosigned before, but the log did not get it
            line = cosign(checkpoint, self.name, self._key).line()[:-1]
            self.store.add_checkpoint(SignedCheckpoint.parse(verified.note))
            self.store.add_cosignature(checkpoint.size, self.organization, line)
        note = self.client.add_cosignature(checkpoint.size, line)
        logger.info(
            "ledger witness cosigned witness=%s size=%d",
            self.organization,
            checkpoint.size,
        )
        return SyncResult(checkpoint.size, fetched, True, note)

    # ------------------------------------------------------------------- run

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        """Sync every ``interval`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.sync()
            except SplitViewError:
                pass  # logged and stored; health() shows it
            except LedgerError as exc:
                logger.warning(
                    "ledger witness sync failed witness=%s error=%s",
                    self.organization,
                    exc,
                )
            stop.wait(interval)

    def close(self) -> None:
        self.store.close()


def _copy(compact: merkle.CompactRange) -> merkle.CompactRange:
    return merkle.CompactRange(compact.size, compact.hashes)
