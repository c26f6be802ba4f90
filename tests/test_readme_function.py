"""The README's "Writing a function" example runs as written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from airfed.node_api._executor import Limits, execute
from airfed.node_api.runtime import run_task_workdir
from tests.node_api.workdirs import task_spec

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Writing a function\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _blocks(language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(_section()) if lang == language]


def _python_files() -> dict[str, str]:
    """The section's Python blocks, keyed by the file name on their first line."""
    files = {}
    for body in _blocks("python"):
        first_line, _, _ = body.partition("\n")
        files[first_line.removeprefix("# ").strip()] = body
    return files


def _metadata() -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in map(json.loads, _blocks("json"))}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two data samples of a linearly separable problem, as the opener expects."""
    root = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(7)
    for index in range(2):
        labels = rng.integers(0, 2, size=80)
        features = rng.normal(size=(80, 3)) + 2.0 * labels[:, None]
        folder = root / str(index)
        folder.mkdir()
        np.savetxt(
            folder / "data.csv", np.column_stack([features, labels]), delimiter=","
        )
    return root


def _workdir(
    root: Path, name: str, function: dict[str, Any], samples: Path, model: Path | None
) -> Path:
    workdir = root / name
    (workdir / "function").mkdir(parents=True)
    (workdir / "outputs").mkdir()
    files = _python_files()
    (workdir / "function" / "algo.py").write_text(files["algo.py"])
    (workdir / "inputs" / "opener").mkdir(parents=True)
    (workdir / "inputs" / "opener" / "opener.py").write_text(files["opener.py"])
    staged = {"datasamples": []}
    for index, sample in enumerate(sorted(samples.iterdir())):
        shutil.copytree(sample, workdir / "inputs" / "datasamples" / str(index))
        staged["datasamples"].append(f"inputs/datasamples/{index}")
    if model is not None:
        (workdir / "inputs" / "model").mkdir(parents=True)
        shutil.copy(model, workdir / "inputs" / "model" / "0")
        staged["model"] = ["inputs/model/0"]
    task = {
        "task": task_spec(),
        "function": function,
        "inputs": staged,
        "opener": "inputs/opener/opener.py",
    }
    (workdir / "task.json").write_text(json.dumps(task))
    return workdir


def test_readme_has_the_example() -> None:
    assert set(_python_files()) == {"opener.py", "algo.py"}
    assert set(_metadata()) == {"logistic-train", "logistic-evaluate"}


def test_readme_function_trains_and_evaluates(tmp_path: Path, samples: Path) -> None:
    metadata = _metadata()
    train, evaluate = metadata["logistic-train"], metadata["logistic-evaluate"]

    first = _workdir(tmp_path, "round0", train, samples, model=None)
    assert run_task_workdir(first)["status"] == "done"
    model = first / "outputs" / "model"
    second = _workdir(tmp_path, "round1", train, samples, model=model)
    assert run_task_workdir(second)["outputs"] == {"model": "outputs/model"}
    assert not np.array_equal(np.load(model), np.load(second / "outputs" / "model"))

    test = _workdir(tmp_path, "test", evaluate, samples, second / "outputs" / "model")
    result = run_task_workdir(test)

    assert result["status"] == "done", result["error"]
    assert 0.9 <= result["performances"]["accuracy"] <= 1.0


def test_readme_function_runs_in_the_sandbox(tmp_path: Path, samples: Path) -> None:
    metadata = _metadata()
    limits = Limits(
        cpu_seconds=60,
        memory_bytes=2 * 1024**3,
        wall_seconds=120,
        max_output_bytes=10**8,
    )

    trained = execute(
        _workdir(tmp_path, "train", metadata["logistic-train"], samples, None), limits
    )
    assert trained.status == "done", trained.log
    model = tmp_path / "train" / "outputs" / "model"
    tested = execute(
        _workdir(tmp_path, "test", metadata["logistic-evaluate"], samples, model),
        limits,
    )

    assert tested.status == "done", tested.log
    assert tested.result is not None
    assert 0.9 <= tested.result["performances"]["accuracy"] <= 1.0
