"""``airfed plan ...`` against real nodes and a real orchestrator (Airflow).

A plan description written in YAML is submitted with ``airfed plan submit
--wait``; Airflow runs it across the nodes; ``plan list|show|perf`` and
``task list`` read the result; a second, slow plan is canceled.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from airfed.sdk._airflow import RunningOrchestrator
from airfed.sdk.client import Client
from airfed.sdk.local import LocalServices
from airfed.sdk.network import Network, init_network
from airfed.sdk.spec import Permission, Permissions
from tests.sdk.cli_support import Run, airfed
from tests.support.airflow import running_orchestrator
from tests.support.ledger import fast_witnesses
from tests.support.ports import free_port_block

pytestmark = [pytest.mark.airflow, pytest.mark.e2e]

OPENER = """\
from pathlib import Path


def load(paths):
    return [float(Path(p, "value.txt").read_text()) for p in paths]
"""

ALGO = """\
import time


def train(ctx):
    values = ctx.load_data()
    ctx.output_path("model").write_text(str(sum(values) / len(values)))


def score(ctx):
    ctx.record_performance("mean", float(ctx.input_path("model").read_text()))


def slow(ctx):
    time.sleep(600)
"""

PUBLIC = Permissions(process=Permission(public=True), download=Permission(public=True))
DATA = [
    {"identifier": "dataset", "kind": "dataset"},
    {"identifier": "datasamples", "kind": "datasamples", "multiple": True},
]


@dataclass
class Stack:
    network: Network
    orchestrator: RunningOrchestrator
    keys: dict[str, str]

    def run(self, *args: str | Path) -> Run:
        return airfed(
            *args,
            "--profile",
            self.network.root / "a",
            env={
                "AIRFED_ORCHESTRATOR_URL": self.orchestrator.url,
                "AIRFED_ORCHESTRATOR_USERNAME": self.orchestrator.username,
                "AIRFED_ORCHESTRATOR_PASSWORD": self.orchestrator.password,
            },
            timeout=900,
        )

    def ok(self, *args: str | Path) -> Run:
        run = self.run(*args)
        assert run.code == 0, run.stderr + self.orchestrator.log_tail("scheduler")
        return run


def _register(client: Client, root: Path) -> dict[str, str]:
    root.mkdir()
    (root / "opener.py").write_text(OPENER)
    dataset = client.register_dataset("values", root / "opener.py", permissions=PUBLIC)
    (root / "sample").mkdir()
    (root / "sample" / "value.txt").write_text("6.0")
    (sample,) = client.add_samples(dataset["key"], [root / "sample"])
    (root / "code").mkdir()
    (root / "code" / "algo.py").write_text(ALGO)
    model = [{"identifier": "model", "kind": "model"}]
    declared = {
        "train": (DATA, model),
        "score": (model, [{"identifier": "mean", "kind": "performance"}]),
        "slow": (DATA, model),
    }
    keys = {"dataset": dataset["key"], "sample": sample["key"]}
    for name, (inputs, outputs) in declared.items():
        keys[name] = client.register_function(
            root / "code",
            name=name,
            entrypoint=f"algo:{name}",
            inputs=inputs,
            outputs=outputs,
            permissions=PUBLIC,
        )["key"]
    return keys


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Ledger log, nodes a and b (with their witnesses), and Airflow."""
    network = init_network(tmp_path / "net", ["a", "b"], base_port=free_port_block(5))
    fast_witnesses(network)
    with (
        LocalServices(network.root, tmp_path / "logs") as services,
        running_orchestrator(tmp_path / "airflow", network.root) as orchestrator,
        Client(network.root / "a") as client,
    ):
        services.start_ledger()
        for org in ("a", "b"):
            services.start_node(org)
        services.wait_until_ready()
        keys = _register(client, tmp_path / "assets")
        yield Stack(network, orchestrator, keys)


def _write_plan(path: Path, keys: dict[str, str], train_function: str) -> Path:
    data = [
        {"identifier": "dataset", "asset": keys["dataset"]},
        {"identifier": "datasamples", "asset": keys["sample"]},
    ]
    description = {
        "name": "cli plan",
        "strategy": "custom",
        "tasks": [
            {
                "id": "train",
                "function": keys[train_function],
                "worker": "a",
                "category": "train",
                "round": 1,
                "inputs": data,
            },
            {
                "id": "score",
                "function": keys["score"],
                "worker": "b",
                "category": "test",
                "round": 1,
                "inputs": [
                    {"identifier": "model", "parent": "train", "output": "model"}
                ],
            },
        ],
    }
    path.write_text(yaml.safe_dump(description))
    return path


def test_plan_runs_to_the_end_and_is_followed(stack: Stack, tmp_path: Path) -> None:
    plan_file = _write_plan(tmp_path / "plan.yaml", stack.keys, "train")
    status = stack.ok("plan", "submit", plan_file, "--wait", "--json").json()
    plan_key = status["plan_key"]
    assert status["status"] == "success"

    listed = stack.ok("plan", "list", "--json").json()
    assert [p["status"] for p in listed if p["plan_key"] == plan_key] == ["success"]
    shown = stack.ok("plan", "show", plan_key).stdout
    assert "success" in shown
    tasks = stack.ok("task", "list", plan_key, "--json").json()
    assert sorted((t["worker"], t["status"]) for t in tasks) == [
        ("a", "done"),
        ("b", "done"),
    ]
    perf = stack.ok("plan", "perf", plan_key, "--json").json()
    assert perf["performances"] == {"federated": {"mean": {"1": 6.0}}}
    compared = stack.ok("plan", "compare", plan_key, "--json").json()
    assert compared["comparisons"] == [
        {
            "metric": "mean",
            "round": 1,
            "federated": 6.0,
            "local": {},
            "local_mean": None,
            "gain_over_local_mean": None,
        }
    ]


def test_slow_plan_is_canceled(stack: Stack, tmp_path: Path) -> None:
    plan_file = _write_plan(tmp_path / "plan.yaml", stack.keys, "slow")
    plan_key = stack.ok("plan", "submit", plan_file, "--json").json()["plan_key"]
    with Client(stack.network.root / "a") as client:
        deadline = time.monotonic() + 300
        while not any(t["status"] == "executing" for t in client.list_tasks(plan_key)):
            assert time.monotonic() < deadline, "the slow task never started"
            time.sleep(0.5)
    assert stack.ok("plan", "cancel", plan_key, "--json").json()["status"] == "canceled"
    run = stack.run("plan", "wait", plan_key, "--timeout", "300")
    run.assert_one_line_error(f"plan {plan_key} ended canceled")
