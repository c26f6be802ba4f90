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

import collections
import contextlib
import logging
import multiprocessing
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import (
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
)
from concurrent.futures.process import BrokenProcessPool
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
from airfed.ledger.entries import EntryFields, KeyRing, verify_entry_bytes
from airfed.ledger.errors import (
    CheckpointError,
    EntryError,
    LedgerError,
    LedgerUnavailable,
    SplitViewError,
)
from airfed.ledger.store import LedgerStore, node_id
from airfed.sdk.network import load_identity_key, load_network

__all__ = ["SyncResult", "Witness"]

logger = logging.getLogger(__name__)

_PAGE = 5000  # entries a GetEntries call asks for (the log's cap)
_CHECKS_AHEAD = 6  # pages fetched or being checked ahead of the tree
_COMMIT_EVERY = 50000  # entries stored per transaction
_PROCESS_MIN = 50000  # catch-ups this long check pages on worker processes

_EntryRow = tuple[int, bytes, str, str, str, bytes]


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

        One thread fetches pages ahead; each page is checked (shape, every
        signature, leaf hashes and the perfect subtrees inside the page) on
        worker processes for a long catch-up, else here with the signature
        checks on ``workers`` threads; this thread joins the pages onto the
        tree's right edge in log order, and another thread stores each run
        of pages in one transaction.
        """
        initial = self._compact.size
        staged = _copy(self._compact)
        with self._checker(size - initial) as check:
            self._pipeline(staged, size, check)
        fetched = int(size - initial)
        logger.info(
            "ledger witness caught up witness=%s size=%d fetched=%d",
            self.organization,
            size,
            fetched,
        )
        return fetched

    @contextlib.contextmanager
    def _checker(self, count: int) -> Iterator[_Check]:
        """How pages are checked: on processes when there are many entries."""
        workers = self._workers or os.cpu_count() or 1
        if count >= _PROCESS_MIN and workers > 1:
            with ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_checker,
                initargs=(self._keys,),
            ) as processes:

                def submit(start: int, datas: list[bytes]) -> Future[_CheckedRun]:
                    return processes.submit(_check_run, start, datas)

                yield submit
            return
        with ThreadPoolExecutor(workers, thread_name_prefix="verify") as threads:

            def check(start: int, datas: list[bytes]) -> Future[_CheckedRun]:
                done: Future[_CheckedRun] = Future()
                done.set_result(_check_run(start, datas, self._keys, threads, workers))
                return done

            yield check

    def _pipeline(self, staged: merkle.CompactRange, size: int, check: _Check) -> None:
        checking: collections.deque[tuple[Future[_CheckedRun], list[bytes]]]
        checking = collections.deque()
        rows: list[_EntryRow] = []
        nodes: list[tuple[int, bytes]] = []
        writing: Future[merkle.CompactRange] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="replica-write") as writer:
            try:
                for start, page in self._pages(staged.size, size):
                    datas = self._page_datas(page, start)
                    checking.append((check(start, datas), datas))
                    while len(checking) > _CHECKS_AHEAD or (
                        checking and checking[0][0].done()
                    ):
                        self._join(staged, *checking.popleft(), rows, nodes)
                    if len(rows) >= _COMMIT_EVERY:
                        self._finish(writing)
                        writing = writer.submit(self._store, rows, nodes, _copy(staged))
                        rows, nodes = [], []
                while checking:
                    self._join(staged, *checking.popleft(), rows, nodes)
                self._finish(writing)
                writing = None
                self._finish(writer.submit(self._store, rows, nodes, _copy(staged)))
            finally:
                for future, _ in checking:
                    future.cancel()
                self._finish(writing)

    def _pages(
        self, start: int, end: int
    ) -> Iterator[tuple[int, list[tuple[int, bytes]]]]:
        """Pages of entries [start, end), fetched a few pages ahead."""
        ahead: queue.Queue[Any] = queue.Queue(maxsize=_CHECKS_AHEAD)
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

    def _page_datas(self, page: list[tuple[int, bytes]], start: int) -> list[bytes]:
        indices = [index for index, _ in page]
        if indices != list(range(start, start + len(page))):
            raise self._alarm(
                "bad entries", f"the log served entries out of order from {start}"
            )
        return [data for _, data in page]

    def _join(
        self,
        staged: merkle.CompactRange,
        checking: Future[_CheckedRun],
        datas: list[bytes],
        rows: list[_EntryRow],
        nodes: list[tuple[int, bytes]],
    ) -> None:
        """Add a checked page to the staged tree and to the rows to store."""
        try:
            run = checking.result()
        except BrokenProcessPool as exc:
            raise LedgerError(
                f"the replica's checking processes stopped: {exc}"
            ) from exc
        if run.problem is not None:
            raise self._alarm("bad entry", run.problem)
        if run.start != staged.size:
            raise LedgerError(f"page {run.start} joined at size {staged.size}")
        rows.extend(
            zip(
                range(run.start, run.start + len(datas)),
                run.levels[0][1],
                run.kinds,
                run.authors,
                run.keys,
                datas,
                strict=True,
            )
        )
        for level, (first, hashes) in enumerate(run.levels):
            first_id = node_id(level, first)
            nodes.extend(
                zip(range(first_id, first_id + len(hashes)), hashes, strict=True)
            )
        for level, index, subtree in run.tops:
            nodes.extend(_push(staged, level, index, subtree))

    def _store(
        self,
        rows: list[_EntryRow],
        nodes: list[tuple[int, bytes]],
        compact: merkle.CompactRange,
    ) -> merkle.CompactRange:
        """Store a run of checked entries (on the writer thread).

        ``compact`` is the tree's right edge after these entries; it becomes
        the replica's once they are durable.
        """
        if rows:
            self.store.append_rows(rows, nodes)
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


# --------------------------------------------------------------------------
# Checking a page of entries (on a worker process or in this one)


@dataclass(frozen=True)
class _CheckedRun:
    """What checking entries [start, start + len(kinds)) found.

    ``levels`` hold, from the leaves up, the first index and the hashes of
    every perfect subtree that lies inside the run; ``tops`` are the largest
    of them, left to right, which cover the run exactly. ``problem`` names
    the first bad entry; nothing else is filled in then.
    """

    start: int
    kinds: list[str]
    authors: list[str]
    keys: list[str]
    levels: list[tuple[int, list[bytes]]]
    tops: list[tuple[int, int, bytes]]
    problem: str | None = None


_Check = Callable[[int, list[bytes]], "Future[_CheckedRun]"]
_process_keys: KeyRing | None = None


def _init_checker(keys: KeyRing) -> None:
    global _process_keys
    _process_keys = keys


def _check_run(
    start: int,
    datas: list[bytes],
    keys: KeyRing | None = None,
    pool: Executor | None = None,
    workers: int = 1,
) -> _CheckedRun:
    """Check entries ``datas`` (the first at index ``start``), hash their tree."""
    ring = keys or _process_keys
    assert ring is not None, "the checker process has no key ring"
    try:
        fields = _verify(start, datas, ring, pool, workers)
    except EntryError as exc:
        return _CheckedRun(start, [], [], [], [], [], str(exc))
    levels, tops = _subtrees(start, [merkle.leaf_hash(data) for data in datas])
    return _CheckedRun(start, fields.kinds, fields.authors, fields.keys, levels, tops)


def _verify(
    start: int,
    datas: list[bytes],
    keys: KeyRing,
    pool: Executor | None,
    workers: int,
) -> EntryFields:
    """Every entry's shape and signatures, in parts on ``pool`` if given.

    Raises ``EntryError`` naming the first bad entry in log order.
    """
    if pool is None or workers < 2 or len(datas) < 2:
        return verify_entry_bytes(datas, keys, first_index=start)
    chunk = -(-len(datas) // workers)
    parts = pool.map(
        lambda at: verify_entry_bytes(
            datas[at : at + chunk], keys, first_index=start + at
        ),
        range(0, len(datas), chunk),
    )
    fields = EntryFields([], [], [])
    for part in parts:  # in order: the first failing part raises first
        fields.kinds.extend(part.kinds)
        fields.authors.extend(part.authors)
        fields.keys.extend(part.keys)
    return fields


def _subtrees(
    start: int, leaves: list[bytes]
) -> tuple[list[tuple[int, list[bytes]]], list[tuple[int, int, bytes]]]:
    """The perfect subtrees inside leaves [start, start + len(leaves)).

    Returns, level by level from the leaves up, the index of the first
    subtree and their hashes; and the largest subtrees that cover the
    range, in order.
    """
    end = start + len(leaves)
    levels = [(start, leaves)]
    first, below = start, leaves
    while len(below) > 1:
        skip = first & 1  # a first node that is a right child has no pair here
        above = [
            merkle.node_hash(below[i], below[i + 1])
            for i in range(skip, len(below) - 1, 2)
        ]
        first = (first + skip) >> 1
        levels.append((first, above))
        below = above
    tops = []
    position = start
    while position < end:
        level = (end - position).bit_length() - 1
        while position % (1 << level):
            level -= 1
        index = position >> level
        first, hashes = levels[level]
        tops.append((level, index, hashes[index - first]))
        position += 1 << level
    return levels, tops


def _push(
    compact: merkle.CompactRange, level: int, index: int, subtree: bytes
) -> list[tuple[int, bytes]]:
    """Append the perfect subtree ``(level, index)`` to the tree's right edge.

    Its leaves must start at ``compact.size``; returns the rows of the
    subtrees this completes above it.
    """
    assert compact.size == index << level, "subtree out of place"
    created = []
    current = subtree
    compact.size += 1 << level
    while index & 1:
        current = merkle.node_hash(compact.hashes.pop(), current)
        index >>= 1
        level += 1
        created.append((node_id(level, index), current))
    compact.hashes.append(current)
    return created
