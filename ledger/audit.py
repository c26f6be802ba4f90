"""Replay a whole log and report everything that does not hold.

``audit_store`` reads the log's database directly (``airfed ledger verify``)
and checks, in order:

1. the entries are numbered 0, 1, 2, ... without a gap;
2. every entry is canonical, well formed, and signed by its author (and its
   receipt, if any, by the node that ran the task);
3. every entry's bytes hash to its stored leaf, and to leaf i of the stored
   tree (an entry changed or moved in place shows here);
4. every checkpoint is signed by the log key, every cosignature of a known
   witness verifies, and its root is the root recomputed from the entries;
5. consecutive checkpoints are consistent (RFC 9162 consistency proofs from
   the stored tree, checked against both signed roots).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

from airfed.ledger import merkle
from airfed.ledger._network import checkpoint_verifier, key_ring
from airfed.ledger.entries import parse_entry, verify_entry
from airfed.ledger.errors import CheckpointError, EntryError, LedgerStoreError
from airfed.ledger.store import LedgerStore, StoredEntry
from airfed.sdk.network import Network

__all__ = ["AuditReport", "audit_store"]

_MAX_PROBLEMS = 50
_PAGE = 5000


@dataclass
class AuditReport:
    entries: int = 0
    checkpoints: int = 0
    final_checkpoints: int = 0
    cosignatures: int = 0
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    authors: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)
    first_bad_entry: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, message: str, entry: int | None = None) -> None:
        if entry is not None and self.first_bad_entry is None:
            self.first_bad_entry = entry
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "final_checkpoints": self.final_checkpoints,
            "cosignatures": self.cosignatures,
            "kinds": dict(self.kinds),
            "authors": dict(self.authors),
            "first_bad_entry": self.first_bad_entry,
            "problems": self.problems,
        }


def audit_store(store: LedgerStore, network: Network) -> AuditReport:
    """Replay the log in ``store``; see the module docstring for the checks."""
    report = AuditReport()
    roots = _replay_entries(store, network, report)
    _check_checkpoints(store, network, roots, report)
    return report


def _replay_entries(
    store: LedgerStore, network: Network, report: AuditReport
) -> dict[int, bytes]:
    """Check every entry; returns the recomputed root at every size."""
    keys = key_ring(network)
    compact = merkle.CompactRange()
    roots = {0: compact.root()}
    wanted = set(store.checkpoint_sizes())
    page: list[StoredEntry] = []
    for stored in store.iter_entries(page=_PAGE):
        page.append(stored)
        if len(page) == _PAGE:
            _replay_page(store, page, keys, compact, roots, wanted, report)
            page = []
    _replay_page(store, page, keys, compact, roots, wanted, report)
    report.entries = compact.size
    return roots


def _replay_page(
    store: LedgerStore,
    page: list[StoredEntry],
    keys: Any,
    compact: merkle.CompactRange,
    roots: dict[int, bytes],
    wanted: set[int],
    report: AuditReport,
) -> None:
    tree_leaves = _tree_leaves(store, page, report)
    for stored in page:
        index = compact.size
        # (1): no gap in the numbering.
        if stored.index != index:
            report.problem(
                f"entry {index} is missing: the next stored entry is {stored.index}",
                index,
            )
        # (2): canonical, well formed, signed.
        try:
            entry = parse_entry(stored.data)
            verify_entry(entry, keys)
            report.kinds[str(entry.kind)] += 1
            report.authors[entry.author] += 1
        except EntryError as exc:
            report.problem(f"entry {stored.index}: {exc}", stored.index)
        # (3): the bytes are the leaf the tree holds at this place.
        leaf = merkle.leaf_hash(stored.data)
        if leaf != stored.leaf_hash:
            report.problem(
                f"entry {stored.index}: its bytes do not match its stored leaf hash",
                stored.index,
            )
        elif tree_leaves.get(stored.index) not in (None, leaf):
            report.problem(
                f"entry {stored.index}: it is not the entry the tree holds at "
                f"index {stored.index} (changed, moved or replaced)",
                stored.index,
            )
        compact.append(leaf)
        if compact.size in wanted:
            roots[compact.size] = compact.root()


def _tree_leaves(
    store: LedgerStore, page: list[StoredEntry], report: AuditReport
) -> dict[int, bytes]:
    if not page:
        return {}
    first, last = page[0].index, page[-1].index
    nodes = [(0, i) for i in range(first, last + 1)]
    try:
        return dict(zip(range(first, last + 1), store.node_hashes(nodes), strict=True))
    except LedgerStoreError as exc:
        report.problem(f"the stored tree is damaged: {exc}", first)
        return {}


def _check_checkpoints(
    store: LedgerStore, network: Network, roots: dict[int, bytes], report: AuditReport
) -> None:
    verifier = checkpoint_verifier(network)
    previous: tuple[int, bytes] | None = None
    for size in store.checkpoint_sizes():
        report.checkpoints += 1
        signed = store.checkpoint(size)
        assert signed is not None
        # (4): signatures, cosignatures and the root.
        try:
            verified = verifier.verify(signed.text())
        except CheckpointError as exc:
            named = str(exc).startswith(f"checkpoint {size}")
            report.problem(str(exc) if named else f"checkpoint {size}: {exc}")
            continue
        report.cosignatures += len(verified.cosigners)
        report.final_checkpoints += verified.final
        root = verified.checkpoint.root
        if size not in roots:
            report.problem(f"checkpoint {size} covers entries that are not stored")
        elif roots[size] != root:
            start = previous[0] if previous else 0
            report.problem(
                f"checkpoint {size}: its root does not match the stored entries; "
                f"an entry in {start}..{size - 1} was changed, removed or reordered",
                start if report.first_bad_entry is None else None,
            )
        # (5): consistent with the previous checkpoint.
        if previous is not None:
            _check_consistency(store, previous, (size, root), report)
        previous = (size, root)


def _check_consistency(
    store: LedgerStore,
    old: tuple[int, bytes],
    new: tuple[int, bytes],
    report: AuditReport,
) -> None:
    try:
        proof = merkle.consistency_proof_from(store, old[0], new[0])
    except (LedgerStoreError, ValueError) as exc:
        report.problem(f"checkpoint {new[0]}: no consistency proof ({exc})")
        return
    if not merkle.verify_consistency(old[0], new[0], old[1], new[1], proof):
        report.problem(
            f"checkpoint {new[0]} is not consistent with checkpoint {old[0]}"
        )
