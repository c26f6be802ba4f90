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

import logging
import threading
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
        self._staged = self._compact
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
        fetched = 0
        rows: list[StoredEntry] = []
        nodes: list[tuple[int, int, bytes]] = []
        while self._compact.size + len(rows) < size:
            start = self._compact.size + len(rows)
            page = self.client.entries_page(start, min(size, start + _PAGE))
            if not page:
                raise LedgerUnavailable(f"the log served no entries from {start}")
            entries = self._check_page(page, start)
            self._extend(start, entries, rows, nodes)
            fetched += len(page)
            if len(rows) >= _COMMIT_EVERY:
                self._commit(rows, nodes)
                rows, nodes = [], []
        self._commit(rows, nodes)
        logger.info(
            "ledger witness caught up witness=%s size=%d fetched=%d",
            self.organization,
            size,
            fetched,
        )
        return fetched

    def _check_page(self, page: list[tuple[int, bytes]], start: int) -> list[Entry]:
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
            )
        except EntryError as exc:
            raise self._alarm("bad entry", str(exc)) from exc
        return entries

    def _extend(
        self,
        start: int,
        entries: list[Entry],
        rows: list[StoredEntry],
        nodes: list[tuple[int, int, bytes]],
    ) -> None:
        compact = self._pending_compact(rows)
        for index, entry in enumerate(entries, start):
            leaf = merkle.leaf_hash(entry.data)
            rows.append(
                StoredEntry(
                    index, leaf, str(entry.kind), entry.author, entry.key, entry.data
                )
            )
            nodes.extend(compact.append(leaf))
        self._staged = compact

    def _pending_compact(self, rows: list[StoredEntry]) -> merkle.CompactRange:
        if rows:
            return self._staged
        return merkle.CompactRange(self._compact.size, self._compact.hashes)

    def _commit(
        self, rows: list[StoredEntry], nodes: list[tuple[int, int, bytes]]
    ) -> None:
        if not rows:
            return
        self.store.append(rows, nodes, None)
        self._compact = self._staged

    def _cosign(self, verified: VerifiedCheckpoint, fetched: int) -> SyncResult:
        checkpoint = verified.checkpoint
        cosigned = self.store.cosigned_sizes(self.organization)
        if cosigned and cosigned[-1] >= checkpoint.size:
            return SyncResult(checkpoint.size, fetched, False, verified.note)
        signature = cosign(checkpoint, self.name, self._key)
        signed = SignedCheckpoint.parse(verified.note)
        self.store.add_checkpoint(signed)
        self.store.add_cosignature(
            checkpoint.size, self.organization, signature.line()[:-1]
        )
        note = self.client.add_cosignature(checkpoint.size, signature.line())
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
