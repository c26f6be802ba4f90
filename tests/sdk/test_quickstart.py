"""The quickstart's work folder and option checks (no process is started)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from airfed.sdk.catalog import Performance
from airfed.sdk.datasets import make_federated_dataset
from airfed.sdk.performance import performance_table
from airfed.sdk.quickstart import (
    QUICKSTART_FILE,
    QuickstartError,
    QuickstartOptions,
    QuickstartResult,
    algorithm_for,
    prepare_workdir,
    quickstart_plan,
    run_quickstart,
)
from airfed.sdk.simulation import prepare_local_federation, simulate
from airfed.sdk.strategies import STRATEGIES, StrategyError, make_strategy


def _quiet() -> Console:
    return Console(file=io.StringIO())


def test_a_missing_folder_is_created(tmp_path: Path) -> None:
    workdir = prepare_workdir(tmp_path / "new" / "work", force=False)

    assert workdir.is_dir()
    assert workdir.is_absolute()


def test_a_folder_with_other_files_is_refused_unless_forced(tmp_path: Path) -> None:
    (tmp_path / "network").mkdir()
    (tmp_path / "network" / "network.yaml").write_text("name: mine\n")
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(QuickstartError, match="--force"):
        prepare_workdir(tmp_path, force=False)
    assert (tmp_path / "network" / "network.yaml").read_text() == "name: mine\n"

    prepare_workdir(tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_earlier_quickstart_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "airflow").mkdir()
    (tmp_path / "airflow" / "airflow.db").write_text("old")
    (tmp_path / QUICKSTART_FILE).write_text(json.dumps({"pid": 2**22 + 1}))

    prepare_workdir(tmp_path, force=False)

    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def running_quickstart() -> Iterator[int]:
    """A process whose command line says quickstart, stopped by its pid."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "quickstart"]
    )
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    try:
        deadline = time.monotonic() + 30
        while b"quickstart" not in cmdline.read_bytes():  # until exec is done
            assert time.monotonic() < deadline, "the process never started"
            time.sleep(0.05)
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_a_running_quickstart_is_never_replaced(
    tmp_path: Path, running_quickstart: int
) -> None:
    (tmp_path / QUICKSTART_FILE).write_text(json.dumps({"pid": running_quickstart}))

    with pytest.raises(QuickstartError, match=f"pid {running_quickstart}"):
        prepare_workdir(tmp_path, force=True)
    assert (tmp_path / QUICKSTART_FILE).exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nodes": 0}, "--nodes must be between 1 and"),
        ({"rounds": 0}, "--rounds must be at least 1"),
    ],
)
def test_bad_options_are_refused_before_the_folder_is_touched(
    tmp_path: Path, options: dict[str, int], message: str
) -> None:
    workdir = tmp_path / "work"

    with pytest.raises(QuickstartError, match=message):
        run_quickstart(QuickstartOptions(workdir=workdir, **options), _quiet())
    assert not workdir.exists()


def test_krum_with_too_few_organizations_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    with pytest.raises(QuickstartError, match="at least 3 organizations"):
        run_quickstart(
            QuickstartOptions(workdir=tmp_path / "work", strategy="krum", nodes=2),
            _quiet(),
        )
    assert not (tmp_path / "work").exists()


def test_an_unknown_strategy_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(StrategyError, match="fedavg"):
        run_quickstart(
            QuickstartOptions(workdir=tmp_path / "work", strategy="fedmagic"), _quiet()
        )
    assert not (tmp_path / "work").exists()


def test_the_json_result_holds_each_model_per_round() -> None:
    performances = [
        Performance("p", "t1", 1, "org1", "accuracy", 0.9),
        Performance("p", "t2", 1, "org2", "accuracy", 0.7),
        Performance("p", "t3", 1, "org1", "accuracy", 0.6),
    ]
    metadata = {
        "t1": {"model": "federated"},
        "t2": {"model": "federated"},
        "t3": {"model": "local", "organization": "org1"},
    }
    result = QuickstartResult("done", "p", performance_table(performances, metadata))

    assert result.to_json() == {
        "status": "done",
        "plan_key": "p",
        "performances": {
            "federated": {"accuracy": {"1": pytest.approx(0.8)}},
            "local:org1": {"accuracy": {"1": 0.6}},
        },
    }


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_runs_the_quickstart_plan_with_local_baselines(
    name: str, tmp_path: Path
) -> None:
    strategy = make_strategy(name)
    data = make_federated_dataset("breast_cancer", ["org1", "org2", "org3"], seed=0)
    federation, assets = prepare_local_federation(
        data, algorithm_for(strategy), tmp_path, creator="org1"
    )

    result = simulate(quickstart_plan(strategy, federation, rounds=2), assets)

    assert result.status == "done", result.error
    for model in ("federated", "local:org1", "local:org2", "local:org3"):
        accuracy = result.values("accuracy", model)
        assert sorted(accuracy) == [1, 2], model
        assert all(0.0 <= v <= 1.0 for r in accuracy.values() for v in r.values())
    # Local-only models are tested on their own organization's data only.
    assert set(result.values("accuracy", "local:org2")[1]) == {"org2"}
