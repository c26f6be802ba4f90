"""The SDK client against real nodes over mutual TLS.

Organizations a and b each run a node. The compute plan's tasks are posted to
the nodes in rank order, as the orchestrator's operators do, so that the
client's reads (tasks, logs, performances, models) see real task runs.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airfed.sdk.client import Client
from airfed.sdk.errors import ConfigError, NodeRequestError, PlanError
from airfed.sdk.network import Network, init_network
from airfed.sdk.plan import asset_input, parent_input
from airfed.sdk.spec import Permission, Permissions, PlanSpec
from tests.support.nodes import RunningNode, create_token, start_nodes
from tests.support.ports import free_port_block

OPENER = """\
from pathlib import Path


def load(paths):
    return [float(Path(p, "value.txt").read_text()) for p in paths]
"""

ALGO = """\
import json


def train(ctx):
    values = ctx.load_data()
    ctx.output_path("model").write_text(json.dumps({"mean": sum(values) / len(values)}))


def test(ctx):
    model = json.loads(ctx.input_path("model").read_text())
    values = ctx.load_data()
    ctx.record_performance("error", abs(model["mean"] - sum(values) / len(values)))


def broken(ctx):
    print("reading the data")
    raise RuntimeError("the function broke on purpose")
"""

PUBLIC = Permissions(process=Permission(public=True), download=Permission(public=True))
DATA_INPUTS = [
    {"identifier": "dataset", "kind": "dataset"},
    {"identifier": "datasamples", "kind": "datasamples", "multiple": True},
]


@dataclass
class World:
    network: Network
    nodes: dict[str, RunningNode]
    a: Client
    b: Client
    datasets: dict[str, str]
    samples: dict[str, list[str]]
    functions: dict[str, str]


def _write_sample(folder: Path, value: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "value.txt").write_text(str(value))
    return folder


def _register_data(
    client: Client, root: Path, values: list[float]
) -> tuple[str, list[str]]:
    root.mkdir(parents=True)
    opener = root / "opener.py"
    opener.write_text(OPENER)
    dataset = client.register_dataset(
        f"values of {client.organization}",
        opener,
        permissions=PUBLIC,
        logs_permission=Permission(public=True),
    )
    folders = [_write_sample(root / f"s{i}", v) for i, v in enumerate(values)]
    samples = client.add_samples(dataset["key"], folders)
    return dataset["key"], [s["key"] for s in samples]


def _register_functions(client: Client, root: Path) -> dict[str, str]:
    code = root / "code"
    code.mkdir()
    (code / "algo.py").write_text(ALGO)
    model_out = [{"identifier": "model", "kind": "model"}]
    model_in = [{"identifier": "model", "kind": "model"}]
    declared = {
        "train": (DATA_INPUTS, model_out),
        "test": (
            [*DATA_INPUTS, *model_in],
            [{"identifier": "error", "kind": "performance"}],
        ),
        "broken": (DATA_INPUTS, model_out),
    }
    return {
        name: client.register_function(
            code,
            name=name,
            entrypoint=f"algo:{name}",
            inputs=inputs,
            outputs=outputs,
            permissions=PUBLIC,
        )["key"]
        for name, (inputs, outputs) in declared.items()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("client")
    network = init_network(root / "net", ["a", "b"], base_port=free_port_block(5))
    with (
        start_nodes(network, ["a", "b"]) as nodes,
        Client(network.root / "a") as a,
        Client(network.root / "b") as b,
    ):
        dataset_a, samples_a = _register_data(a, root / "data-a", [1.0, 3.0])
        dataset_b, samples_b = _register_data(b, root / "data-b", [10.0])
        functions = _register_functions(a, root)
        yield World(
            network,
            nodes,
            a,
            b,
            {"a": dataset_a, "b": dataset_b},
            {"a": samples_a, "b": samples_b},
            functions,
        )


def _data(world: World, org: str) -> list[Any]:
    return [
        asset_input("dataset", world.datasets[org]),
        *(asset_input("datasamples", key) for key in world.samples[org]),
    ]


def _run_on_nodes(client: Client, spec: PlanSpec, timeout: float = 120) -> None:
    """Post each task to its worker's node in rank order and wait for it."""
    plan = {"name": spec.name, "creator": spec.creator}
    for task in sorted(spec.tasks, key=lambda t: t.rank):
        node = client.node(task.worker)
        node.submit_task(task, plan=plan)
        deadline = time.monotonic() + timeout
        while node.get_task(task.key)["status"] in ("waiting", "executing"):
            assert time.monotonic() < deadline, f"task {task.key} did not end"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def finished_plan(world: World) -> PlanSpec:
    """Train on a and b, then test a's model on b's data."""
    builder = world.a.plan("train and test")
    train_a = builder.add_task(
        world.functions["train"],
        "a",
        category="train",
        round=1,
        inputs=_data(world, "a"),
    )
    builder.add_task(
        world.functions["train"],
        "b",
        category="train",
        round=1,
        inputs=_data(world, "b"),
    )
    builder.add_task(
        world.functions["test"],
        "b",
        category="test",
        round=1,
        inputs=[*_data(world, "b"), parent_input("model", train_a, "model")],
    )
    spec = world.a.compile(builder)
    _run_on_nodes(world.a, spec)
    return spec


def test_organizations_are_listed(world: World) -> None:
    ids = {org["id"] for org in world.a.organizations()}
    assert {"a", "b"} <= ids


def test_datasets_of_every_node_are_listed_with_owner(world: World) -> None:
    listed = {d["key"]: d["owner"] for d in world.b.list_assets("dataset")}
    assert listed[world.datasets["a"]] == "a"
    assert listed[world.datasets["b"]] == "b"


def test_asset_of_another_node_is_shown(world: World) -> None:
    shown = world.b.show_asset("function", world.functions["train"])
    assert shown["owner"] == "a"
    assert shown["entrypoint"] == "algo:train"
    sample = world.a.show_asset("datasample", world.samples["b"][0])
    assert sample["dataset_key"] == world.datasets["b"]


def test_unknown_asset_is_not_found(world: World) -> None:
    with pytest.raises(NodeRequestError, match="no node holds a dataset"):
        world.a.show_asset("dataset", "3a1c1a3c-0000-4000-8000-000000000000")


def test_catalog_holds_every_asset(world: World) -> None:
    catalog = world.a.catalog()
    assert catalog.get(world.datasets["b"], "dataset") is not None
    assert catalog.get(world.samples["a"][1], "datasample").owner == "a"  # type: ignore[union-attr]
    assert [
        i.identifier for i in catalog.get(world.functions["test"]).function_inputs
    ] == [  # type: ignore[union-attr]
        "dataset",
        "datasamples",
        "model",
    ]


def test_data_of_another_node_is_refused_before_submission(world: World) -> None:
    builder = world.a.plan("wrong node")
    builder.add_task(
        world.functions["train"],
        "b",
        category="train",
        round=1,
        inputs=_data(world, "a"),
    )
    with pytest.raises(PlanError, match="data never leaves its node"):
        world.a.compile(builder)


def test_missing_sample_folder_uploads_nothing(world: World, tmp_path: Path) -> None:
    good = _write_sample(tmp_path / "good", 5.0)
    before = len(world.a.list_assets("datasample"))
    with pytest.raises(ConfigError, match="is not a folder"):
        world.a.add_samples(world.datasets["a"], [good, tmp_path / "missing"])
    assert len(world.a.list_assets("datasample")) == before


def test_sample_from_a_path_on_the_node(world: World, tmp_path: Path) -> None:
    folder = _write_sample(tmp_path / "on-node", 7.0)
    (sample,) = world.a.add_samples(world.datasets["a"], node_paths=[str(folder)])
    assert sample["dataset_key"] == world.datasets["a"]


def test_tasks_of_a_plan_are_listed_from_their_nodes(
    world: World, finished_plan: PlanSpec
) -> None:
    tasks = world.b.list_tasks(finished_plan.key)
    assert sorted(t["worker"] for t in tasks) == ["a", "b", "b"]
    assert {t["status"] for t in tasks} == {"done"}, [t.get("error") for t in tasks]


def test_performances_are_gathered(world: World, finished_plan: PlanSpec) -> None:
    (perf,) = world.a.performances(finished_plan.key)
    assert (perf.worker, perf.identifier, perf.round) == ("b", "error", 1)
    assert perf.value == pytest.approx(8.0)  # mean 2 on a against 10 on b


def test_creator_downloads_a_model(
    world: World, finished_plan: PlanSpec, tmp_path: Path
) -> None:
    models = world.a.list_assets("model", plan_key=finished_plan.key)
    assert {m["owner"] for m in models} == {"a", "b"}
    model_b = next(m for m in models if m["owner"] == "b")
    path = world.a.download_model(model_b["key"], tmp_path)
    assert path == tmp_path / model_b["key"]
    assert path.read_text() == '{"mean": 10.0}'


def test_model_download_needs_permission(
    world: World, finished_plan: PlanSpec, tmp_path: Path
) -> None:
    """Bob of b may not download b's model: only organization a may."""
    models = world.b.list_assets("model", plan_key=finished_plan.key)
    model_b = next(m for m in models if m["owner"] == "b")
    try:
        token = create_token(world.network.root / "b" / "node.yaml", "bob")
    except subprocess.CalledProcessError as exc:
        raise AssertionError(exc.stderr) from exc
    with Client(world.network.root / "b", token=token) as bob:
        with pytest.raises(NodeRequestError) as caught:
            bob.download_model(model_b["key"], tmp_path / "model")
        assert len(bob.list_assets("dataset")) >= 2  # other nodes see organization b
    assert caught.value.status == 403
    assert not (tmp_path / "model").exists()


def test_failed_task_shows_its_log(world: World) -> None:
    builder = world.a.plan("broken")
    task = builder.add_task(
        world.functions["broken"],
        "b",
        category="train",
        round=1,
        inputs=_data(world, "b"),
    )
    spec = world.a.compile(builder)
    _run_on_nodes(world.a, spec)
    (listed,) = world.a.list_tasks(spec.key)
    assert listed["status"] == "failed"
    log = world.a.task_logs(task)
    assert "the function broke on purpose" in log
    assert world.a.task_logs(task, worker="b") == log


def test_plan_end_deletes_transient_models_on_every_node(world: World) -> None:
    from airfed.sdk.spec import OutputSpec

    builder = world.a.plan("transient until the end")
    train_a = builder.add_task(
        world.functions["train"],
        "a",
        category="train",
        round=1,
        inputs=_data(world, "a"),
        outputs={
            "model": OutputSpec(
                permissions=Permissions(process=Permission(authorized_ids=("a", "b"))),
                transient=True,
            )
        },
    )
    test_b = builder.add_task(
        world.functions["test"],
        "b",
        category="test",
        round=1,
        inputs=[*_data(world, "b"), parent_input("model", train_a, "model")],
    )
    spec = world.a.compile(builder)
    (train_spec,) = [t for t in spec.tasks if t.key == train_a]
    assert train_spec.outputs["model"].consumers == (test_b,)
    _run_on_nodes(world.a, spec)
    (model,) = world.a.node("a").list_models(plan_key=spec.key)

    deleted = world.a.end_plan_on_nodes(spec.key)

    assert deleted == {"a": [model["key"]], "b": []}
    assert world.a.node("a").get_model_metadata(model["key"])["deleted_at"]
    assert world.a.end_plan_on_nodes(spec.key) == {"a": [], "b": []}
