"""The Merkle tree of the ledger, exactly as RFC 9162 section 2.1 defines it.

Leaves are the ledger entries' bytes; hashes are raw 32-byte SHA-256 digests::

    leaf hash = SHA-256(0x00 || entry bytes)
    node hash = SHA-256(0x01 || left || right)
    MTH({})   = SHA-256()                      (the empty tree)

The list functions (``tree_root``, ``inclusion_proof``, ``consistency_proof``)
take every leaf and serve tests and small trees. A log with millions of
entries keeps its *perfect subtrees* instead: the node at ``(level, index)``
is the hash of leaves ``[index * 2**level, (index + 1) * 2**level)``. Every
subtree that the RFC's proofs name is a short run of perfect subtrees, so a
proof costs O(log n) reads of stored nodes (``inclusion_proof_from`` and
``consistency_proof_from`` with any ``NodeReader``). ``CompactRange`` appends
leaves one at a time and reports the perfect subtrees each append completes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MemoryTree",
    "NodeReader",
    "consistency_proof",
    "consistency_proof_from",
    "inclusion_proof",
    "inclusion_proof_from",
    "leaf_hash",
    "node_hash",
    "root_from",
    "tree_root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[int, int]  # (level, index) of a perfect subtree
Range = tuple[int, int]  # leaves [start, end)


def leaf_hash(entry: bytes) -> bytes:
    """The hash of one leaf: SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class NodeReader(Protocol):
    """Anything that returns the hashes of stored perfect subtrees."""

    def node_hashes(self, nodes: Sequence[Node]) -> Sequence[bytes]:
        """The hash of each ``(level, index)`` node, in the order asked."""
        ...


# --------------------------------------------------------------------------
# Which subtrees a proof names (RFC 9162 sections 2.1.3.1 and 2.1.4.1)


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _path(m: int, start: int, end: int) -> list[Range]:
    """PATH(m, D[start:end]): the subtrees an inclusion proof lists."""
    n = end - start
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, start, start + k), (start + k, end)]
    return [*_path(m - k, start + k, end), (start, start + k)]


def _subproof(m: int, start: int, end: int, complete: bool) -> list[Range]:
    """SUBPROOF(m, D[start:end], b): the subtrees a consistency proof lists."""
    n = end - start
    if m == n:
        return [] if complete else [(start, end)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, start, start + k, complete), (start + k, end)]
    return [*_subproof(m - k, start + k, end, False), (start, start + k)]


def _perfect_nodes(start: int, end: int) -> list[Node]:
    """The perfect subtrees that make up the leaves [start, end), left to right.

    For every subtree the RFC's recursion produces, ``start`` is a multiple of
    a power of two at least as large as the subtree, so these are the binary
    digits of its size, largest first, and MTH is their right fold.
    """
    nodes: list[Node] = []
    while start < end:
        level = (end - start).bit_length() - 1
        while start % (1 << level):
            level -= 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def _fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of a run of perfect subtrees: the right fold of their hashes."""
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def _range_hashes(reader: NodeReader, ranges: Sequence[Range]) -> list[bytes]:
    per_range = [_perfect_nodes(start, end) for start, end in ranges]
    wanted = list(dict.fromkeys(node for nodes in per_range for node in nodes))
    found = dict(zip(wanted, reader.node_hashes(wanted), strict=True))
    return [_fold([found[node] for node in nodes]) for nodes in per_range]


def root_from(reader: NodeReader, size: int) -> bytes:
    """MTH of the first ``size`` leaves, from stored perfect subtrees."""
    if size == 0:
        return EMPTY_ROOT
    return _range_hashes(reader, [(0, size)])[0]


def inclusion_proof_from(reader: NodeReader, index: int, size: int) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    return _range_hashes(reader, _path(index, 0, size))


def consistency_proof_from(
    reader: NodeReader, old_size: int, new_size: int
) -> list[bytes]:
    """The proof that the tree of ``old_size`` leaves is a prefix of ``new_size``."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    return _range_hashes(reader, _subproof(old_size, 0, new_size, True))


# --------------------------------------------------------------------------
# Trees held in memory


class MemoryTree:
    """Every level of a tree in memory; a ``NodeReader`` for list-based proofs."""

    def __init__(self, leaf_hashes: Iterable[bytes]) -> None:
        self.levels: list[list[bytes]] = [list(leaf_hashes)]
        while len(self.levels[-1]) > 1:
            below = self.levels[-1]
            self.levels.append(
                [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            )

    @classmethod
    def from_entries(cls, entries: Iterable[bytes]) -> MemoryTree:
        return cls(leaf_hash(entry) for entry in entries)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def node_hashes(self, nodes: Sequence[Node]) -> list[bytes]:
        return [self.levels[level][index] for level, index in nodes]

    def root(self) -> bytes:
        return root_from(self, self.size)


class CompactRange:
    """The right edge of a growing tree: one perfect subtree per bit of its size.

    ``append`` adds a leaf hash and returns the perfect subtrees it completes
    (the leaf itself first), which is what a store must persist.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ValueError("a compact range holds one hash per set bit of its size")
        self.size = size
        self.hashes = list(hashes)

    @staticmethod
    def nodes_for(size: int) -> list[Node]:
        """The perfect subtrees whose hashes restore a range of ``size`` leaves."""
        return _perfect_nodes(0, size)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        index, level, current = self.size, 0, leaf
        created = [(0, index, leaf)]
        while index & 1:
            current = node_hash(self.hashes.pop(), current)
            index >>= 1
            level += 1
            created.append((level, index, current))
        self.hashes.append(current)
        self.size += 1
        return created

    def root(self) -> bytes:
        return _fold(self.hashes) if self.hashes else EMPTY_ROOT


# --------------------------------------------------------------------------
# The list API


def tree_root(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of the entries ``leaves``."""
    compact = CompactRange()
    for entry in leaves:
        compact.append(leaf_hash(entry))
    return compact.root()


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) over the entries ``leaves``."""
    return inclusion_proof_from(MemoryTree.from_entries(leaves), index, len(leaves))


def consistency_proof(leaves: Sequence[bytes], old_size: int) -> list[bytes]:
    """PROOF(old_size, D[n]) over the entries ``leaves``."""
    tree = MemoryTree.from_entries(leaves)
    return consistency_proof_from(tree, old_size, len(leaves))


# --------------------------------------------------------------------------
# Verification


def _well_formed(*hashes: bytes) -> bool:
    return all(len(h) == HASH_SIZE for h in hashes)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows entry ``leaf`` at ``index`` in the tree ``root``.

    ``leaf`` is the entry's bytes (not its hash). RFC 9162 section 2.1.3.2.
    """
    if not _well_formed(root, *proof):
        return False
    # (1): the leaf index must lie inside the tree.
    if not 0 <= index < size:
        return False
    # (2): fn is the leaf index, sn the index of the last leaf.
    fn, sn = index, size - 1
    # (3): r starts as the leaf's hash.
    r = leaf_hash(leaf)
    # (4): fold in every proof hash, from the leaf up.
    for p in proof:
        # (4a): a proof longer than the path fails.
        if sn == 0:
            return False
        # (4b): p is a left sibling when fn is a right child or the last node.
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # (4b.ii): skip the levels where the last node has no sibling.
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        # (4c): one level up.
        fn >>= 1
        sn >>= 1
    # (5): the path must reach the root, and the root must match.
    return sn == 0 and r == root


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> bool:
    """Whether ``proof`` shows the tree ``old_root`` to be a prefix of ``new_root``.

    RFC 9162 section 2.1.4.2, which assumes 0 < old_size < new_size; the
    trivial cases (an empty old tree, equal sizes) need an empty proof.
    """
    if not _well_formed(old_root, new_root, *proof):
        return False
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    # (1): a non-trivial proof is never empty.
    if not proof:
        return False
    path = list(proof)
    # (2): when the old tree is a perfect subtree, its root starts the path.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # (3): fn is the old tree's last leaf, sn the new tree's.
    fn, sn = old_size - 1, new_size - 1
    # (4): climb while fn is a right child: those levels are shared.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # (5): fr and sr start at the first value of the path.
    fr = sr = path[0]
    # (6): fold in the rest of the path.
    for c in path[1:]:
        # (6a): a proof longer than the path fails.
        if sn == 0:
            return False
        # (6b): c is a left sibling, shared by both trees.
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # (6b.3): skip the levels where the old tree's last node is alone.
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            # c is a right sibling that only the new tree holds.
            sr = node_hash(sr, c)
        # (6c): one level up.
        fn >>= 1
        sn >>= 1
    # (7): both roots must match and the path must reach the new root.
    return fr == old_root and sr == new_root and sn == 0
