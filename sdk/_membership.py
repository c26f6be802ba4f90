"""Which tasks belong to a compute plan: the Merkle tree of its task specs.

A plan's ``tasks_root`` is the RFC 6962 tree root (``airfed.ledger.merkle``)
over one leaf per task, in the spec's order: the RFC 8785 canonical JSON of
the task's spec, the same encoding the ledger signs entries in. The
creator records the root and the task count in the plan's
``plan_registered`` entry; the orchestrator gives each node, with the task,
its index and inclusion proof; the node recomputes the leaf from the task it
received and runs it only if the proof leads to the registered root. So a
task the creator did not register under the plan key is refused, whoever
posts it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import rfc8785

from airfed.ledger import merkle

if TYPE_CHECKING:
    from airfed.sdk.spec import PlanSpec, TaskSpec

__all__ = [
    "TaskTree",
    "task_leaf",
    "task_proof",
    "tasks_root",
    "verify_task",
]


def task_leaf(task: TaskSpec | Mapping[str, Any]) -> bytes:
    """The tree leaf of one task: the canonical JSON of its spec."""
    data = task if isinstance(task, Mapping) else task.model_dump(mode="json")
    return bytes(rfc8785.dumps(dict(data)))


class TaskTree:
    """The task tree of one plan, built once; a proof per task costs O(log n).

    ``spec_hash`` is the plan's ``airfed.sdk.spec.spec_hash``, computed from
    the same leaves: canonicalizing every task once, not twice, is most of
    what the DAG factory spends on a large plan.
    """

    def __init__(self, spec: PlanSpec) -> None:
        leaves = [task_leaf(task) for task in spec.tasks]
        self._init(
            [merkle.leaf_hash(leaf) for leaf in leaves],
            hashlib.sha256(_canonical_spec(spec, leaves)).hexdigest(),
        )

    def _init(self, leaf_hashes: Sequence[bytes], spec_hash: str) -> None:
        self.leaf_hashes = tuple(leaf_hashes)
        self._tree = merkle.MemoryTree(self.leaf_hashes)
        self.count = self._tree.size
        self.root = self._tree.root().hex()
        self.spec_hash = spec_hash

    @classmethod
    def from_hashes(cls, leaf_hashes: Sequence[bytes], spec_hash: str) -> TaskTree:
        """The tree of a plan whose leaf hashes and spec hash are known."""
        tree = cls.__new__(cls)
        tree._init(leaf_hashes, spec_hash)
        return tree

    def proof(self, index: int) -> list[str]:
        """The inclusion proof of task ``index`` (its place in the spec), hex."""
        return [
            node.hex()
            for node in merkle.inclusion_proof_from(self._tree, index, self.count)
        ]


def _canonical_spec(spec: PlanSpec, leaves: Sequence[bytes]) -> bytes:
    """The RFC 8785 bytes of the whole spec, with its tasks' bytes spliced in.

    The same bytes as ``rfc8785.dumps(spec.model_dump(mode="json"))``: an
    object's members sorted by the UTF-16 code units of their names, each
    value canonical, and the tasks an array of their canonical bytes.
    """
    data = spec.model_dump(mode="json", exclude={"tasks"})
    members = []
    for name in sorted([*data, "tasks"], key=lambda name: name.encode("utf-16be")):
        if name == "tasks":
            value = b"[" + b",".join(leaves) + b"]"
        else:
            value = rfc8785.dumps(data[name])
        members.append(rfc8785.dumps(name) + b":" + value)
    return b"{" + b",".join(members) + b"}"


def tasks_root(spec: PlanSpec) -> str:
    """The plan's ``tasks_root``, hex, as its registration records it."""
    return merkle.tree_root([task_leaf(task) for task in spec.tasks]).hex()


def task_proof(spec: PlanSpec, index: int) -> list[str]:
    """The inclusion proof of task ``index`` under ``tasks_root(spec)``, hex."""
    return TaskTree(spec).proof(index)


def verify_task(
    task: TaskSpec | Mapping[str, Any],
    index: int,
    count: int,
    proof: Sequence[str],
    root: str,
) -> bool:
    """Whether ``proof`` shows ``task`` as task ``index`` of the plan ``root``.

    False, never an exception, for anything malformed (hex that does not
    decode, a wrong count or index, a task that has no canonical form).
    """
    try:
        hashes = [bytes.fromhex(node) for node in proof]
        root_hash = bytes.fromhex(root)
        leaf = task_leaf(task)
    except (TypeError, ValueError, rfc8785.CanonicalizationError):
        return False
    return merkle.verify_inclusion(leaf, index, count, hashes, root_hash)
