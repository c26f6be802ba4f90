"""A tiny federation on real nodes: numbers as data, sums as models.

The same files are kept as :class:`~airfed.sdk.simulation.SimulationAssets`
so that a plan can also run in-process, without Airflow or nodes.

Each organization holds a dataset whose samples are ``value.txt`` files. The
train function adds its samples' values to the incoming model's sum; the
aggregate function averages the sums it receives. Small enough to run in a
second per task, real enough to go through the node's whole task pipeline.
"""

from __future__ import annotations

import tarfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airfed.sdk.node_client import NodeClient
from airfed.sdk.plan import ComputePlanBuilder, asset_input, parent_input
from airfed.sdk.simulation import LocalFunction, SimulationAssets
from airfed.sdk.spec import OutputSpec, Permission, Permissions, PlanSpec
from tests.support.nodes import RunningNode

OPENER = """
    from pathlib import Path

    def load(paths):
        return [float((Path(p) / "value.txt").read_text()) for p in paths]
"""

TRAIN = """
    import json

    def train(ctx):
        total = sum(ctx.load_data())
        if ctx.input_paths("model"):
            total += json.loads(ctx.input_path("model").read_text())["sum"]
        ctx.output_path("model").write_text(json.dumps({"sum": total}))
"""

AGGREGATE = """
    import json

    def aggregate(ctx):
        sums = [json.loads(p.read_text())["sum"] for p in ctx.input_paths("models")]
        ctx.output_path("model").write_text(json.dumps({"sum": sum(sums) / len(sums)}))
        ctx.record_performance("mean", sum(sums) / len(sums))
"""

BROKEN_TRAIN = """
    def train(ctx):
        raise ValueError("the data has no label column")
"""

SLOW_TRAIN = """
    import time

    def train(ctx):
        time.sleep(120)
"""

_PUBLIC = {"public": True, "authorized_ids": []}
_SHARED = OutputSpec(permissions=Permissions(process=Permission(public=True)))


def _archive(root: Path, name: str, code: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "algo.py").write_text(textwrap.dedent(code))
    archive = root / f"{name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "algo.py", arcname="algo.py")
    return archive


@dataclass
class Organization:
    id: str
    dataset_key: str
    sample_keys: list[str]
    train_key: str
    broken_train_key: str
    slow_train_key: str


@dataclass
class Federation:
    organizations: dict[str, Organization] = field(default_factory=dict)
    aggregate_key: str = ""
    local: SimulationAssets = field(default_factory=SimulationAssets)

    def plan(
        self, rounds: int, *, broken: str | None = None, slow: str | None = None
    ) -> PlanSpec:
        """FedAvg over every organization.

        ``broken`` trains with a failing function, ``slow`` with one that
        sleeps for two minutes.
        """
        orgs = list(self.organizations.values())
        builder = ComputePlanBuilder("sums", "fedavg", orgs[0].id)
        previous: str | None = None
        for round_ in range(rounds):
            updates = [
                self._train(builder, org, round_, previous, broken, slow)
                for org in orgs
            ]
            previous = builder.add_task(
                self.aggregate_key,
                orgs[0].id,
                category="aggregate",
                round=round_,
                inputs=[parent_input("models", key, "model") for key in updates],
                outputs={"model": _SHARED},
            )
        return builder.compile()

    @staticmethod
    def _train(
        builder: ComputePlanBuilder,
        org: Organization,
        round_: int,
        previous: str | None,
        broken: str | None,
        slow: str | None,
    ) -> str:
        inputs = [
            asset_input("opener", org.dataset_key),
            *(asset_input("data", key) for key in org.sample_keys),
        ]
        if previous is not None:
            inputs.append(parent_input("model", previous, "model"))
        function = org.train_key
        if broken == org.id:
            function = org.broken_train_key
        elif slow == org.id:
            function = org.slow_train_key
        return builder.add_task(
            function,
            org.id,
            category="train",
            round=round_,
            inputs=inputs,
            outputs={"model": _SHARED},
        )


def _function(
    client: NodeClient,
    root: Path,
    name: str,
    code: str,
    entrypoint: str,
    local: SimulationAssets,
) -> str:
    if entrypoint == "algo:aggregate":
        inputs: list[dict[str, Any]] = [
            {"identifier": "models", "kind": "model", "multiple": True}
        ]
    else:
        inputs = [
            {"identifier": "opener", "kind": "dataset"},
            {"identifier": "data", "kind": "datasamples", "multiple": True},
            {"identifier": "model", "kind": "model", "optional": True},
        ]
    metadata = {
        "name": name,
        "description": name,
        "entrypoint": entrypoint,
        "inputs": inputs,
        "outputs": [{"identifier": "model", "kind": "model"}]
        + (
            [{"identifier": "mean", "kind": "performance"}]
            if entrypoint == "algo:aggregate"
            else []
        ),
        "permissions": {"process": _PUBLIC, "download": _PUBLIC},
    }
    key = str(client.create_function(metadata, _archive(root, name, code))["key"])
    local.functions[key] = LocalFunction(root / name, metadata)
    return key


def _organization(
    node: RunningNode,
    profile: Path,
    root: Path,
    logs_reader: str,
    local: SimulationAssets,
) -> Organization:
    root.mkdir(parents=True)
    opener = root / "opener.py"
    opener.write_text(textwrap.dedent(OPENER))
    with node.client(profile) as client:
        dataset = client.create_dataset(
            {
                "name": f"numbers of {node.organization}",
                "description": "one number per sample",
                "permissions": {"process": _PUBLIC, "download": _PUBLIC},
                "logs_permission": {"public": False, "authorized_ids": [logs_reader]},
            },
            opener,
        )
        samples = []
        for index, value in enumerate((1.0, 2.0)):
            folder = root / f"sample-{index}"
            folder.mkdir()
            (folder / "value.txt").write_text(str(value))
            sample = client.add_sample_folder(dataset["key"], folder)["key"]
            local.samples[sample] = folder
            samples.append(sample)
        local.datasets[str(dataset["key"])] = opener
        return Organization(
            id=node.organization,
            dataset_key=str(dataset["key"]),
            sample_keys=samples,
            train_key=_function(client, root, "train", TRAIN, "algo:train", local),
            broken_train_key=_function(
                client, root, "broken", BROKEN_TRAIN, "algo:train", local
            ),
            slow_train_key=_function(
                client, root, "slow", SLOW_TRAIN, "algo:train", local
            ),
        )


def register_federation(
    nodes: dict[str, RunningNode], network_root: Path, root: Path
) -> Federation:
    """Register data and functions on every node; logs readable by ``<org>/alice``."""
    federation = Federation()
    for org, node in nodes.items():
        federation.organizations[org] = _organization(
            node, network_root / org, root / org, f"{org}/alice", federation.local
        )
    first = next(iter(nodes))
    with nodes[first].client(network_root / first) as client:
        federation.aggregate_key = _function(
            client,
            root / "aggregate",
            "aggregate",
            AGGREGATE,
            "algo:aggregate",
            federation.local,
        )
    return federation
