"""Nodes and the ledger: a real log over mutual TLS and three real nodes.

The nodes run with the ledger on (``AIRFED_NODE_LEDGER=on``): they write
their registrations, model accesses and task statuses to the log, run their
witness, and refuse a task whose compute plan the log does not hold under a
final checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airfed.ledger._network import key_ring
from airfed.ledger.checkpoint import log_origin
from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import Entry, EntryKind, parse_entry, verify_entry
from airfed.ledger.evidence import verify_plan_recorded
from airfed.ledger.server import LedgerServer, serve_log
from airfed.sdk._ledger import register_plan
from airfed.sdk._membership import TaskTree
from airfed.sdk.network import Network, client_ssl_context, init_network
from airfed.sdk.node_client import NodeClient
from airfed.sdk.spec import PlanSpec, TaskSpec, spec_hash
from tests.e2e.federation import Federation, register_federation
from tests.support.ledger import fast_witnesses, wait_for
from tests.support.nodes import RunningNode, start_node
from tests.support.ports import free_port_block

_LEDGER_ON = {"AIRFED_NODE_LEDGER": "on"}


@dataclass
class Stack:
    network: Network
    log: LedgerServer
    nodes: dict[str, RunningNode]
    federation: Federation

    def ledger(self, org: str = "a") -> LedgerClient:
        return LedgerClient(self.network.ledger_address, self.network.root / org)

    def node(self, worker: str, as_org: str = "orchestrator") -> NodeClient:
        profile = self.network.root / as_org
        return NodeClient(self.nodes[worker].url, client_ssl_context(profile))

    def entries(self, key: str, kind: EntryKind) -> list[Entry]:
        """Entries about ``key`` of ``kind``, each checked against its signature."""
        keys = key_ring(self.network)
        with self.ledger() as client:
            found = [parse_entry(data) for _, data in client.find(key)]
        for entry in found:
            verify_entry(entry, keys)
        return [e for e in found if e.kind is kind]

    def run_task(
        self, task: TaskSpec, spec: PlanSpec, plan: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Post ``task`` as the orchestrator does (``plan`` replaces its plan)."""
        if plan is None:
            plan = task_plan(spec, spec.tasks.index(task))
        with self.node(task.worker) as node:
            node.submit_task(task.model_dump(mode="json"), plan)

            def ended() -> dict[str, Any] | None:
                status = node.get_task(task.key)
                return status if status["status"] in {"done", "failed"} else None

            return wait_for(f"task {task.key} ending", ended, timeout=120)


def task_plan(spec: PlanSpec, index: int) -> dict[str, Any]:
    """The ``plan`` the DAG factory gives the task at ``index`` of ``spec``."""
    tree = TaskTree(spec)
    return {
        "key": spec.key,
        "name": spec.name,
        "creator": spec.creator,
        "spec_hash": spec_hash(spec),
        "tasks_root": tree.root,
        "task_count": tree.count,
        "task_index": index,
        "task_proof": tree.proof(index),
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ledger")
    network = init_network(root / "net", ["a", "b", "c"], base_port=free_port_block(7))
    fast_witnesses(network)
    log = serve_log(network.root, batch_interval=0.05)
    try:
        with contextlib.ExitStack() as nodes_running:
            nodes = {
                org: nodes_running.enter_context(
                    start_node(network.root / org / "node.yaml", env=_LEDGER_ON)
                )
                for org in ("a", "b", "c")
            }
            federation = register_federation(nodes, network.root, root / "assets")
            yield Stack(network, log, nodes, federation)
    finally:
        log.stop()


def test_registrations_appear_as_entries_signed_by_the_node(stack: Stack) -> None:
    org = stack.federation.organizations["b"]

    datasets = wait_for(
        "the dataset's entry",
        lambda: stack.entries(org.dataset_key, EntryKind.DATASET_REGISTERED),
    )
    samples = wait_for(
        "the data sample's entry",
        lambda: stack.entries(org.sample_keys[0], EntryKind.DATA_SAMPLE_REGISTERED),
    )
    functions = wait_for(
        "the function's entry",
        lambda: stack.entries(org.train_key, EntryKind.FUNCTION_REGISTERED),
    )

    with stack.node("b", as_org="b") as node:
        dataset = node.get_dataset(org.dataset_key)
    assert datasets[0].author == "b"
    assert datasets[0].body["opener_checksum"] == dataset["opener_checksum"]
    assert datasets[0].body["permissions"]["process"]["public"] is True
    assert samples[0].body["dataset_key"] == org.dataset_key
    assert functions[0].author == "b"


def test_task_of_a_plan_not_on_the_ledger_is_refused(stack: Stack) -> None:
    spec = stack.federation.plan(rounds=1)
    train = next(t for t in spec.tasks if t.worker == "a")

    status = stack.run_task(train, spec)

    assert status["status"] == "failed"
    assert f"plan {spec.key} is not recorded on the ledger" in status["error"]


def test_task_of_a_registered_plan_runs_and_its_status_is_logged(
    stack: Stack, tmp_path: Path
) -> None:
    spec = stack.federation.plan(rounds=1)
    train = next(t for t in spec.tasks if t.worker == "b")

    register_plan(stack.network.root / "a", spec)
    status = stack.run_task(train, spec)

    assert status["status"] == "done", status["error"]
    with stack.ledger("c") as client:
        evidence = verify_plan_recorded(client, spec.key, spec_hash(spec))
    assert evidence.final
    assert len(evidence.cosigners) >= stack.network.witness_quorum
    done = wait_for(
        "the node's done entry",
        lambda: [
            e
            for e in stack.entries(train.key, EntryKind.TASK_STATUS)
            if e.body["status"] == "done"
        ],
    )
    assert done[0].author == "b"
    assert done[0].body["receipt"] == status["receipt"]
    assert (
        done[0].body["receipt"]["output_hashes"]["model"]
        == (status["outputs"]["model"]["checksum"])
    )

    # Downloading the task's model is a model access the ledger records.
    model_key = status["outputs"]["model"]["model_key"]
    with stack.node("b", as_org="c") as node:
        node.download_model(model_key, tmp_path / "model")
    accesses = wait_for(
        "the model access entry",
        lambda: stack.entries(model_key, EntryKind.MODEL_ACCESSED),
    )
    with stack.node("b", as_org="b") as node:
        recorded = node.model_accesses(model_key)
    assert accesses[0].author == "b"
    assert accesses[0].body["accessor"] == "c"
    assert accesses[0].body["purpose"] == recorded[-1]["purpose"]
    assert accesses[0].body["checksum"] == status["outputs"]["model"]["checksum"]


def test_the_registration_records_the_task_tree_once(stack: Stack) -> None:
    spec = stack.federation.plan(rounds=1)

    first = register_plan(stack.network.root / "a", spec)
    again = register_plan(stack.network.root / "a", spec)

    (entry,) = stack.entries(spec.key, EntryKind.PLAN_REGISTERED)
    assert again == first
    assert entry.body["spec_hash"] == spec_hash(spec)
    assert entry.body["tasks_root"] == TaskTree(spec).root
    assert entry.body["task_count"] == len(spec.tasks)


def _refusal(status: dict[str, Any], task: TaskSpec, spec: PlanSpec) -> str:
    assert status["status"] == "failed", status
    error = str(status["error"])
    assert (
        f"task {task.key} is not part of the plan {spec.key} registered on the ledger"
        in error
    ), error
    return error


def test_only_tasks_of_the_registered_spec_run_under_its_plan_key(
    stack: Stack,
) -> None:
    spec = stack.federation.plan(rounds=1)
    index, train = next((i, t) for i, t in enumerate(spec.tasks) if t.worker == "b")
    register_plan(stack.network.root / "a", spec)
    # The plan's entry is proven (and kept) with a task of the plan first.
    assert stack.run_task(train, spec)["status"] == "done"
    plan = task_plan(spec, index)

    changed_function = train.model_copy(
        update={"key": str(uuid.uuid4()), "function_key": spec.tasks[-1].function_key}
    )
    made_up = train.model_copy(update={"key": str(uuid.uuid4())})
    other_index = next(i for i in range(len(spec.tasks)) if i != index)
    moved = train.model_copy(update={"key": str(uuid.uuid4())})

    errors = [
        _refusal(stack.run_task(changed_function, spec, plan), changed_function, spec),
        _refusal(stack.run_task(made_up, spec, plan), made_up, spec),
        # A proof for another place in the plan does not prove this task.
        _refusal(
            stack.run_task(moved, spec, task_plan(spec, other_index)), moved, spec
        ),
    ]

    assert all("does not lead to the plan's task tree" in e for e in errors)


def test_a_task_tree_other_than_the_registered_one_is_refused(stack: Stack) -> None:
    spec = stack.federation.plan(rounds=1)
    train = next(t for t in spec.tasks if t.worker == "b")
    register_plan(stack.network.root / "a", spec)
    made_up = train.model_copy(update={"key": str(uuid.uuid4())})
    # A tree of the registered tasks plus one: the proof holds in it, but the
    # ledger records the tree of the registered spec.
    forged = spec.model_copy(update={"tasks": (*spec.tasks, made_up)})
    plan = {**task_plan(forged, len(spec.tasks)), "spec_hash": spec_hash(spec)}

    error = _refusal(stack.run_task(made_up, spec, plan), made_up, spec)

    assert "records another spec hash or task tree" in error


def test_a_task_without_its_proof_is_refused(stack: Stack) -> None:
    spec = stack.federation.plan(rounds=1)
    train = next(t for t in spec.tasks if t.worker == "b")
    register_plan(stack.network.root / "a", spec)
    plan = {"key": spec.key, "name": spec.name, "creator": spec.creator}

    status = stack.run_task(train, spec, plan)

    assert status["status"] == "failed"
    assert (
        f"task {train.key} is not shown to be part of the plan {spec.key} "
        "registered on the ledger" in status["error"]
    )
    assert "'spec_hash'" in status["error"]


def test_task_prepared_for_a_pod_is_checked_and_logged_like_a_node_task(
    stack: Stack,
) -> None:
    """The pod's command runs here as a subprocess: no cluster in this suite."""
    unregistered = stack.federation.plan(rounds=1)
    refused = next(t for t in unregistered.tasks if t.worker == "c")
    spec = stack.federation.plan(rounds=1)
    train = next(t for t in spec.tasks if t.worker == "c")
    register_plan(stack.network.root / "a", spec)
    refused_plan = task_plan(unregistered, unregistered.tasks.index(refused))
    plan = task_plan(spec, spec.tasks.index(train))

    with stack.node("c") as node:
        node.submit_task(refused, refused_plan, runner="pod")
        node.submit_task(train, plan, runner="pod")

        def settled(key: str) -> dict[str, Any] | None:
            status = node.get_task(key)
            return None if status["status"] in {"waiting", "executing"} else status

        not_prepared = wait_for("the refusal", lambda: settled(refused.key), 120)
        prepared = wait_for("the preparation", lambda: settled(train.key), 120)
        workdir = stack.nodes["c"].config.storage_dir / "tasks" / train.key
        run = subprocess.run(
            [sys.executable, "-m", "airfed.node_api.runtime", str(workdir)],
            capture_output=True,
            timeout=120,
            check=False,
        )
        status = node.collect_task(train.key)

    assert not_prepared["status"] == "failed"
    assert "is not recorded on the ledger" in not_prepared["error"]
    assert prepared["status"] == "prepared", prepared["error"]
    assert run.returncode == 0, run.stderr
    assert status["status"] == "done", status["error"]

    def statuses() -> list[Entry] | None:
        entries = stack.entries(train.key, EntryKind.TASK_STATUS)
        return entries if entries and entries[-1].body["status"] == "done" else None

    logged = wait_for("the task's done entry", statuses)
    assert [e.body["status"] for e in logged] == [
        "waiting",
        "executing",
        "prepared",
        "done",
    ]
    assert {e.author for e in logged} == {"c"}
    assert logged[-1].body["receipt"] == status["receipt"]


def test_ledger_verifies_after_the_runs(stack: Stack) -> None:
    test_task_of_a_plan_not_on_the_ledger_is_refused(stack)

    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "from airfed.sdk.cli import main; main()",
            "ledger",
            "verify",
            "--network",
            str(stack.network.root),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["problems"] == []
    assert report["entries"] > 0


def test_catalog_and_listing_derive_from_the_ledger(stack: Stack) -> None:
    from airfed.sdk.catalog import Catalog

    org = stack.federation.organizations["c"]
    with stack.ledger("a") as client:
        catalog = wait_for(
            "c's function on the ledger",
            lambda: (
                (found := Catalog.from_ledger(client)).get(org.train_key, "function")
                and found
            ),
        )

    dataset = catalog.get(org.dataset_key, "dataset")
    assert dataset is not None
    assert dataset.owner == "c"
    assert dataset.nodes == ("c",)
    assert catalog.get(org.sample_keys[1], "datasample") is not None
    listed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from airfed.sdk.cli import main; main()",
            "dataset",
            "list",
            "--from-ledger",
            "--profile",
            str(stack.network.root / "a"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    by_key = {item["key"]: item for item in json.loads(listed.stdout)}
    assert by_key[org.dataset_key]["nodes"] == ["c"]
    assert by_key[org.dataset_key]["opener_checksum"] == dataset.data["opener_checksum"]


def test_each_node_serves_its_replica_to_partners(stack: Stack) -> None:
    replica_of_b = stack.network.organization("b").ledger_address

    with LedgerClient(replica_of_b, stack.network.root / "c") as replica:
        note = wait_for("b's replica checkpoint", replica.latest_checkpoint)
        first = replica.entries_page(0, 1)
    with stack.ledger("c") as log:
        logged = log.entries_page(0, 1)

    assert note.startswith(log_origin(stack.network.name))
    assert first == logged
