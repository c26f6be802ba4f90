"""Simulation: plans run in process through the node's runtime, deterministically."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from airfed.node_api.runtime import run_task_workdir
from airfed.sdk.algorithms import Algorithm
from airfed.sdk.cli import _load_commands, app
from airfed.sdk.datasets import FederatedDataset, make_federated_dataset
from airfed.sdk.evaluation import Evaluation
from airfed.sdk.privacy import DifferentialPrivacy, epsilon
from airfed.sdk.simulation import (
    SimulationAssets,
    SimulationError,
    load_simulation_assets,
    prepare_local_federation,
    simulate,
)
from airfed.sdk.spec import Permissions
from airfed.sdk.strategies import STRATEGIES, FedAvg, Federation, FedProx, make_strategy
from tests.sdk._numpy_models import NumpySoftmax
from tests.sdk._strategy_models import Failing, TinyLogistic, TinySgd

ORGS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def dataset() -> FederatedDataset:
    return make_federated_dataset("breast_cancer", ORGS, scheme="dirichlet", seed=7)


def local(
    dataset: FederatedDataset, algorithm: type[Algorithm], folder: Path, **kwargs: Any
) -> tuple[Federation, SimulationAssets]:
    return prepare_local_federation(dataset, algorithm, folder, **kwargs)


@pytest.fixture(scope="module")
def torch_federation(
    dataset: FederatedDataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Federation, SimulationAssets]:
    return local(dataset, TinyLogistic, tmp_path_factory.mktemp("torch"))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_runs_end_to_end(
    name: str, torch_federation: tuple[Federation, SimulationAssets]
) -> None:
    federation, assets = torch_federation
    spec = make_strategy(name).build_plan(federation, rounds=2)
    result = simulate(spec, assets)
    assert result.status == "done", result.error
    assert set(result.task_status.values()) == {"done"}
    assert len(result.task_status) == len(spec.tasks)
    for metric in ("accuracy", "roc_auc", "loss"):
        table = result.values(metric)
        assert sorted(table) == [1, 2]
        assert all(sorted(by_node) == ORGS for by_node in table.values())
    final = result.values("accuracy")[2]
    assert sum(final.values()) / 3 > 0.6


def test_same_seeds_give_the_same_metrics_in_process_and_in_a_subprocess(
    torch_federation: tuple[Federation, SimulationAssets],
) -> None:
    federation, assets = torch_federation
    spec = FedProx(mu=0.1).build_plan(federation, rounds=2, local_baselines=True)
    first = simulate(spec, assets)
    second = simulate(spec, assets)
    assert first.status == second.status == "done"
    assert [p.to_dict() for p in first.performances] == [
        p.to_dict() for p in second.performances
    ]

    def node_runtime_for_training(workdir: Path) -> Mapping[str, Any]:
        """One train task as a node runs it: the runtime in its own process."""
        task = json.loads((workdir / "task.json").read_text())["task"]
        lane = task["metadata"].get("airfed.model")
        if (task["category"], task["worker"], task["round"], lane) != (
            "train",
            "b",
            2,
            "federated",
        ):
            return run_task_workdir(workdir)
        command = [sys.executable, "-m", "airfed.node_api.runtime", str(workdir)]
        subprocess.run(command, check=True, capture_output=True, timeout=300)
        result: Mapping[str, Any] = json.loads((workdir / "result.json").read_text())
        return result

    isolated = simulate(spec, assets, runner=node_runtime_for_training)
    assert [p.to_dict() for p in isolated.performances] == [
        p.to_dict() for p in first.performances
    ]


def test_local_baselines_are_reported_per_organization(
    torch_federation: tuple[Federation, SimulationAssets],
) -> None:
    federation, assets = torch_federation
    spec = FedAvg().build_plan(
        federation, rounds=2, local_baselines=True, evaluation=Evaluation(every=None)
    )
    result = simulate(spec, assets)
    assert result.status == "done", result.error
    assert sorted({p.model for p in result.performances}) == [
        "federated",
        "local:a",
        "local:b",
        "local:c",
    ]
    for model in ("federated", "local:a"):
        assert sorted(result.values("accuracy", model)[2]) == ORGS


@pytest.mark.parametrize("algorithm", [TinySgd, NumpySoftmax])
def test_scikit_learn_and_numpy_algorithms_run_federated(
    algorithm: type[Algorithm], dataset: FederatedDataset, tmp_path: Path
) -> None:
    federation, assets = local(dataset, algorithm, tmp_path)
    result = simulate(FedAvg().build_plan(federation, rounds=3), assets)
    assert result.status == "done", result.error
    assert min(result.values("accuracy")[3].values()) > 0.8


def test_fedprox_with_scikit_learn_fails_with_a_clear_error(
    dataset: FederatedDataset, tmp_path: Path
) -> None:
    federation, assets = local(dataset, TinySgd, tmp_path)
    result = simulate(FedProx().build_plan(federation, rounds=1), assets)
    assert result.status == "failed"
    assert "cannot apply FedProx or SCAFFOLD" in str(result.error)


def test_a_failing_task_stops_the_plan_and_is_named(
    dataset: FederatedDataset, tmp_path: Path
) -> None:
    federation, assets = local(dataset, Failing, tmp_path)
    spec = FedAvg().build_plan(federation, rounds=3)
    result = simulate(spec, assets)
    assert result.status == "failed"
    failed = next(t for t in spec.tasks if t.key == result.failed_task)
    assert (failed.category, failed.round) == ("train", 2)
    assert "RuntimeError: the model diverged" in str(result.error)
    assert all(p.round == 1 for p in result.performances)
    assert not any(t.round == 3 for t in spec.tasks if t.key in result.task_status)


def test_privacy_spent_is_recorded_by_round(
    dataset: FederatedDataset, tmp_path: Path
) -> None:
    federation, assets = local(
        dataset, NumpySoftmax, tmp_path, differential_privacy=True
    )
    privacy = DifferentialPrivacy(clip_norm=1.0, noise_multiplier=1.2, delta=1e-5)
    spec = FedAvg().build_plan(federation, rounds=3, privacy=privacy)
    result = simulate(spec, assets)
    assert result.status == "done", result.error
    spent = result.values("epsilon")
    for round in (1, 2, 3):
        expected = epsilon(1.2, round, 1e-5)
        assert list(spent[round].values()) == [pytest.approx(expected)] * 3


def test_an_output_not_permitted_to_the_worker_is_refused(
    torch_federation: tuple[Federation, SimulationAssets],
) -> None:
    federation, assets = torch_federation
    spec = FedAvg().build_plan(federation, rounds=1)
    # Take away the aggregator's permission on one organization's update.
    tasks = []
    for task in spec.tasks:
        if task.category == "train" and task.worker == "b":
            closed = task.outputs["shared"].model_copy(
                update={"permissions": Permissions()}
            )
            task = task.model_copy(
                update={"outputs": {**task.outputs, "shared": closed}}
            )
        tasks.append(task)
    with pytest.raises(SimulationError, match="not permitted to a"):
        simulate(spec.model_copy(update={"tasks": tuple(tasks)}), assets)


def test_assets_come_from_a_manifest(
    torch_federation: tuple[Federation, SimulationAssets], tmp_path: Path
) -> None:
    federation, assets = torch_federation
    loaded = load_simulation_assets(assets.write_manifest(tmp_path / "assets.yaml"))
    assert loaded == assets
    spec = FedAvg().build_plan(federation, rounds=1)
    assert simulate(spec, loaded).performances == simulate(spec, assets).performances
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"samples": {"k": "absent"}}))
    with pytest.raises(SimulationError, match="missing"):
        load_simulation_assets(tmp_path / "bad.yaml")
    with pytest.raises(SimulationError, match="not in the assets"):
        simulate(spec, SimulationAssets())


def test_cli_simulates_a_plan_spec(dataset: FederatedDataset, tmp_path: Path) -> None:
    federation, assets = local(dataset, NumpySoftmax, tmp_path / "assets")
    spec = FedAvg().build_plan(federation, rounds=2)
    (tmp_path / "plan.json").write_text(spec.to_json())
    manifest = assets.write_manifest(tmp_path / "assets.yaml")
    _load_commands()
    runner = CliRunner()
    arguments = [
        "plan",
        "simulate",
        str(tmp_path / "plan.json"),
        "--assets",
        str(manifest),
    ]
    outcome = runner.invoke(app, [*arguments, "--json"])
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.stdout)
    assert document["status"] == "done" and document["plan_key"] == spec.key
    expected = simulate(spec, assets)
    assert document["performances"] == [p.to_dict() for p in expected.performances]
    table = runner.invoke(app, arguments)
    assert table.exit_code == 0 and "accuracy" in table.stdout
