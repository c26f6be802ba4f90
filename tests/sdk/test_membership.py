"""A plan's task tree: each task proves it is one of the plan's tasks."""

from __future__ import annotations

import json

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric import ed25519

from airfed.ledger import merkle
from airfed.ledger.entries import (
    EntryKind,
    KeyRing,
    make_entry,
    verify_entries,
    verify_entry_bytes,
)
from airfed.ledger.errors import EntryError
from airfed.sdk._ledger import plan_statement
from airfed.sdk._membership import (
    TaskTree,
    task_leaf,
    task_proof,
    tasks_root,
    verify_task,
)
from airfed.sdk.spec import spec_hash
from tests.support.airflow import fedavg_spec


def test_the_leaf_is_the_canonical_json_of_the_task_spec() -> None:
    task = fedavg_spec(rounds=1).tasks[0]
    as_json = task.model_dump(mode="json")

    assert task_leaf(task) == rfc8785.dumps(as_json)
    # The node recomputes the leaf from the JSON it stored, in any key order.
    shuffled = json.loads(json.dumps(as_json, sort_keys=False))
    assert task_leaf(dict(reversed(list(shuffled.items())))) == task_leaf(task)


def test_the_root_is_the_rfc6962_root_over_the_tasks_in_spec_order() -> None:
    spec = fedavg_spec(rounds=2)
    leaves = [rfc8785.dumps(t.model_dump(mode="json")) for t in spec.tasks]

    assert tasks_root(spec) == merkle.tree_root(leaves).hex()
    assert TaskTree(spec).root == tasks_root(spec)
    assert TaskTree(spec).count == len(spec.tasks)


@pytest.mark.parametrize("rounds", [1, 3, 5])
def test_every_task_of_the_plan_proves_it_belongs(rounds: int) -> None:
    spec = fedavg_spec(rounds=rounds)
    tree = TaskTree(spec)

    for index, task in enumerate(spec.tasks):
        proof = tree.proof(index)
        assert proof == task_proof(spec, index)
        assert verify_task(task, index, tree.count, proof, tree.root)


def test_a_changed_task_does_not_verify() -> None:
    spec = fedavg_spec(rounds=2)
    tree = TaskTree(spec)
    task = spec.tasks[1]
    changed = task.model_copy(update={"function_key": "function-other"})

    assert not verify_task(changed, 1, tree.count, tree.proof(1), tree.root)


def test_a_task_of_another_plan_does_not_verify() -> None:
    spec, other = fedavg_spec(rounds=1), fedavg_spec(rounds=1)
    tree = TaskTree(spec)

    assert not verify_task(other.tasks[0], 0, tree.count, tree.proof(0), tree.root)


def test_a_proof_for_another_index_does_not_verify() -> None:
    spec = fedavg_spec(rounds=2)
    tree = TaskTree(spec)
    task = spec.tasks[2]

    assert not verify_task(task, 2, tree.count, tree.proof(3), tree.root)
    assert not verify_task(task, 3, tree.count, tree.proof(2), tree.root)
    assert not verify_task(task, 2, tree.count + 1, tree.proof(2), tree.root)


@pytest.mark.parametrize(
    "proof, root",
    [
        (["not hex"], None),
        ([], None),
        (None, "zz"),
        (None, "ab" * 31),
    ],
)
def test_malformed_proofs_are_refused_without_an_exception(
    proof: list[str] | None, root: str | None
) -> None:
    spec = fedavg_spec(rounds=1)
    tree = TaskTree(spec)
    task = spec.tasks[0]

    assert not verify_task(
        task,
        0,
        tree.count,
        tree.proof(0) if proof is None else proof,
        tree.root if root is None else root,
    )


def test_the_plan_registration_records_the_tasks_root_and_count() -> None:
    spec = fedavg_spec(rounds=2)

    body = plan_statement(spec).body

    assert isinstance(body, dict)
    assert body["tasks_root"] == tasks_root(spec)
    assert body["task_count"] == len(spec.tasks)


def test_both_ledger_checks_accept_the_registration_with_its_task_tree() -> None:
    spec = fedavg_spec(rounds=2)
    statement = plan_statement(spec)
    key = ed25519.Ed25519PrivateKey.generate()
    keys = KeyRing.of({"a": key.public_key()})
    assert isinstance(statement.body, dict)
    data = make_entry(
        statement.kind,
        author="a",
        key=statement.key,
        body=statement.body,
        identity_key=key,
    ).data

    (entry,) = verify_entries([data], keys, workers=1)
    fields = verify_entry_bytes([data], keys)

    assert entry.body["tasks_root"] == tasks_root(spec)
    assert fields.kinds == ["plan_registered"]
    assert fields.keys == [spec.key]


@pytest.mark.parametrize(
    ("field", "value"),
    [("tasks_root", 7), ("task_count", "12"), ("task_count", True)],
)
def test_a_registration_with_a_mistyped_task_tree_is_refused(
    field: str, value: object
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    body = {"spec_hash": "ab" * 32, "tasks_root": "cd" * 32, "task_count": 3}

    with pytest.raises(EntryError, match=f"body field '{field}' has the wrong type"):
        make_entry(
            EntryKind.PLAN_REGISTERED,
            author="a",
            key="plan-1",
            body={**body, field: value},
            identity_key=key,
        )


def test_the_tree_computes_the_spec_hash_from_the_same_leaves() -> None:
    spec = fedavg_spec(rounds=3)
    # Names and metadata outside ASCII, where RFC 8785 orders members by
    # their UTF-16 code units.
    unusual = spec.model_copy(
        update={
            "name": 'quote " é \U0001f600 \n end',
            "metadata": {"\U0001f600": "astral", "\uff61": "bmp", "a": "\x01"},
        }
    )

    for plan in (spec, unusual, fedavg_spec(rounds=1)):
        assert TaskTree(plan).spec_hash == spec_hash(plan)


def test_a_task_without_a_canonical_form_is_refused_without_an_exception() -> None:
    spec = fedavg_spec(rounds=1)
    tree = TaskTree(spec)
    task = {**spec.tasks[0].model_dump(mode="json"), "round": 2**60}

    assert not verify_task(task, 0, tree.count, tree.proof(0), tree.root)
