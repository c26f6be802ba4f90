"""The ``airfed`` asset, task and model commands against real nodes.

Every command runs as a user would run it: the real ``airfed`` program in a
subprocess, with ``--profile`` (or ``AIRFED_PROFILE``) naming the folder of
an organization of a network whose nodes run over mutual TLS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from airfed.sdk.client import Client
from airfed.sdk.network import Network, init_network
from airfed.sdk.plan import asset_input, parent_input
from tests.sdk.cli_support import Run, airfed
from tests.support.nodes import start_nodes
from tests.support.ports import free_port_block

OPENER = """\
from pathlib import Path


def load(paths):
    return [float(Path(p, "value.txt").read_text()) for p in paths]
"""

ALGO = """\
def train(ctx):
    values = ctx.load_data()
    ctx.output_path("model").write_text(str(sum(values) / len(values)))


def score(ctx):
    ctx.record_performance("mean", float(ctx.input_path("model").read_text()))


def broken(ctx):
    raise SystemExit("this function stops here on purpose")
"""

FUNCTION_YAML = {
    "name": "mean",
    "description": "Mean of the values",
    "entrypoint": "algo:train",
    "inputs": [
        {"identifier": "dataset", "kind": "dataset"},
        {"identifier": "datasamples", "kind": "datasamples", "multiple": True},
    ],
    "outputs": [{"identifier": "model", "kind": "model"}],
}


@dataclass
class Setup:
    network: Network
    root: Path

    def run(self, *args: str | Path, org: str = "a") -> Run:
        return airfed(*args, "--profile", self.network.root / org)

    def ok(self, *args: str | Path, org: str = "a") -> Run:
        run = self.run(*args, org=org)
        assert run.code == 0, run.stderr
        return run


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("cli")
    network = init_network(root / "net", ["a", "b"], base_port=free_port_block(5))
    with start_nodes(network, ["a", "b"]):
        yield Setup(network, root)


@pytest.fixture(scope="module")
def registered(setup: Setup) -> dict[str, str]:
    """A dataset with one data sample on a, and a function on both nodes."""
    opener = setup.root / "opener.py"
    opener.write_text(OPENER)
    dataset = setup.ok(
        "dataset",
        "add",
        "values",
        "--opener",
        opener,
        "--process",
        "public",
        "--logs",
        "public",
        "--description",
        "numbers",
        "--json",
    ).json()
    sample_dir = setup.root / "sample"
    sample_dir.mkdir()
    (sample_dir / "value.txt").write_text("4.0")
    (sample,) = setup.ok("sample", "add", dataset["key"], sample_dir, "--json").json()
    code = setup.root / "code"
    code.mkdir()
    (code / "algo.py").write_text(ALGO)
    (code / "function.yaml").write_text(yaml.safe_dump(FUNCTION_YAML))
    function = setup.ok("function", "add", code, "--process", "public", "--json").json()
    score = setup.ok(
        "function",
        "add",
        code,
        "--name",
        "score",
        "--entrypoint",
        "algo:score",
        "--input",
        "model:model",
        "--output",
        "mean:performance",
        "--process",
        "public",
        "--json",
    ).json()
    return {
        "dataset": dataset["key"],
        "sample": sample["key"],
        "function": function["key"],
        "score": score["key"],
    }


@pytest.fixture(scope="module")
def plan_key(setup: Setup, registered: dict[str, str]) -> str:
    """Run train and score (both end done), and broken (ends failed) on a."""
    with Client(setup.network.root / "a") as client:
        broken = client.register_function(
            setup.root / "code",
            name="broken",
            entrypoint="algo:broken",
            inputs=[{"identifier": "model", "kind": "model"}],
            outputs=[],
            nodes=["a"],
        )
        builder = client.plan("cli plan")
        train = builder.add_task(
            registered["function"],
            "a",
            category="train",
            round=1,
            inputs=[
                asset_input("dataset", registered["dataset"]),
                asset_input("datasamples", registered["sample"]),
            ],
        )
        builder.add_task(
            registered["score"],
            "a",
            category="test",
            round=1,
            inputs=[parent_input("model", train, "model")],
            metadata={"model": "local", "organization": "a"},
        )
        builder.add_task(
            broken["key"],
            "a",
            category="other",
            round=1,
            inputs=[parent_input("model", train, "model")],
        )
        spec = client.compile(builder)
        node = client.node("a")
        for task in spec.tasks:
            node.submit_task(task, plan={"name": spec.name, "creator": "a"})
            deadline = time.monotonic() + 120
            while node.get_task(task.key)["status"] in ("waiting", "executing"):
                assert time.monotonic() < deadline
                time.sleep(0.2)
        return spec.key


def test_registered_function_is_on_every_node(
    setup: Setup, registered: dict[str, str]
) -> None:
    shown = setup.ok("function", "show", registered["function"], "--json").json()
    assert shown["name"] == "mean"
    assert shown["entrypoint"] == "algo:train"
    assert sorted(shown["nodes"]) == ["a", "b"]


def test_dataset_list_from_another_organization(
    setup: Setup, registered: dict[str, str]
) -> None:
    listed = setup.ok("dataset", "list", "--json", org="b").json()
    (dataset,) = [d for d in listed if d["key"] == registered["dataset"]]
    assert dataset["owner"] == "a"
    table = setup.ok("dataset", "list", "--query", "values", org="b").stdout
    assert registered["dataset"][:8] in table


def test_dataset_show_prints_its_fields(
    setup: Setup, registered: dict[str, str]
) -> None:
    out = setup.ok("dataset", "show", registered["dataset"]).stdout
    assert "numbers" in out
    assert "opener_checksum" in out


def test_function_list_shows_both(setup: Setup, registered: dict[str, str]) -> None:
    names = {f["name"] for f in setup.ok("function", "list", "--json").json()}
    assert {"mean", "score"} <= names


def test_org_list(setup: Setup) -> None:
    ids = {o["id"] for o in setup.ok("org", "list", "--json", org="b").json()}
    assert {"a", "b"} <= ids


def test_profile_from_environment(setup: Setup) -> None:
    run = airfed(
        "org", "list", "--json", env={"AIRFED_PROFILE": str(setup.network.root / "b")}
    )
    assert run.code == 0, run.stderr
    assert {o["id"] for o in run.json()} >= {"a", "b"}


def test_task_list_and_logs(setup: Setup, plan_key: str) -> None:
    tasks = setup.ok("task", "list", plan_key, "--json", org="b").json()
    assert sorted(t["status"] for t in tasks) == ["done", "done", "failed"]
    failed = next(t for t in tasks if t["status"] == "failed")
    log = setup.ok("task", "logs", failed["key"]).stdout
    assert "this function stops here on purpose" in log


def test_plan_perf_table(setup: Setup, plan_key: str) -> None:
    data = setup.ok("plan", "perf", plan_key, "--json").json()
    assert data["performances"] == {"local:a": {"mean": {"1": 4.0}}}
    table = setup.ok("plan", "perf", plan_key).stdout
    assert "local:a mean" in table
    assert "4.0000" in table


def test_model_list_and_download(setup: Setup, plan_key: str, tmp_path: Path) -> None:
    (model,) = setup.ok("model", "list", "--plan", plan_key, "--json").json()
    target = tmp_path / "model.txt"
    setup.ok("model", "download", model["key"], "--output", target)
    assert target.read_text() == "4.0"


def test_model_download_without_permission_is_one_line(
    setup: Setup, plan_key: str, tmp_path: Path
) -> None:
    (model,) = setup.ok("model", "list", "--plan", plan_key, "--json").json()
    run = setup.run("model", "download", model["key"], "-o", tmp_path / "m", org="b")
    run.assert_one_line_error("")
    assert not (tmp_path / "m").exists()


def test_unknown_dataset_is_one_line(setup: Setup) -> None:
    run = setup.run("dataset", "show", "3a1c1a3c-0000-4000-8000-000000000000")
    run.assert_one_line_error("no node holds a dataset")


def test_missing_sample_folder_is_one_line(
    setup: Setup, registered: dict[str, str]
) -> None:
    run = setup.run("sample", "add", registered["dataset"], setup.root / "nope")
    run.assert_one_line_error("is not a folder")


def test_sample_on_another_organization_dataset_is_refused(
    setup: Setup, registered: dict[str, str]
) -> None:
    sample_dir = setup.root / "sample-b"
    sample_dir.mkdir()
    (sample_dir / "value.txt").write_text("1.0")
    run = setup.run("sample", "add", registered["dataset"], sample_dir, org="b")
    run.assert_one_line_error("")
