"""TaskContext: what a function sees of its task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import airfed.sdk
from airfed.sdk.function import FunctionError, TaskContext, read_task_file
from tests.node_api.workdirs import make_workdir


def _context(tmp_path: Path) -> TaskContext:
    workdir = make_workdir(
        tmp_path,
        "def train(ctx):\n    pass\n",
        inputs=[
            {"identifier": "datasamples", "kind": "datasamples", "multiple": True},
            {"identifier": "model", "kind": "model", "optional": True},
            {"identifier": "models", "kind": "model", "multiple": True},
            {"identifier": "shared", "kind": "model", "optional": True},
        ],
        staged={
            "datasamples": ["inputs/datasamples/0"],
            "model": ["inputs/model/0"],
            "models": ["inputs/models/0", "inputs/models/1"],
        },
        opener="inputs/opener/opener.py",
        files={
            "inputs/opener/opener.py": "def load(paths):\n    return len(paths)\n",
            "inputs/datasamples/0/x.csv": "1\n",
        },
    )
    return TaskContext.from_workdir(workdir)


def test_task_context_is_exported_from_the_sdk() -> None:
    assert airfed.sdk.TaskContext is TaskContext
    assert "TaskContext" in airfed.sdk.__all__


def test_context_describes_the_task(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    assert ctx.task_key == "8d1c2f0e-0000-4000-8000-000000000001"
    assert (ctx.round, ctx.rank, ctx.worker, ctx.category) == (2, 1, "a", "train")
    assert ctx.metadata == {"lr": "0.1"}


def test_inputs_resolve_inside_the_workdir(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    workdir = tmp_path / "task"
    assert ctx.input_path("model") == workdir / "inputs" / "model" / "0"
    assert ctx.input_paths("models") == [
        workdir / "inputs" / "models" / "0",
        workdir / "inputs" / "models" / "1",
    ]
    assert ctx.input_paths("shared") == []
    assert ctx.has_input("model") and not ctx.has_input("shared")
    assert ctx.load_data() == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.input_path("models"), "has 2 paths in this task"),
        (lambda c: c.input_path("shared"), "has 0 paths in this task"),
        (lambda c: c.input_path("other"), "input 'other' is not declared"),
        (lambda c: c.output_path("accuracy"), "use ctx.record_performance"),
        (lambda c: c.record_performance("model", 1.0), "write it at ctx.output_path"),
        (lambda c: c.record_performance("loss", 1.0), "'loss' is not declared"),
        (lambda c: c.record_performance("accuracy", float("inf")), "must be finite"),
    ],
)
def test_misuse_raises_a_function_error(
    tmp_path: Path, call: object, message: str
) -> None:
    ctx = _context(tmp_path)
    with pytest.raises(FunctionError, match=message):
        call(ctx)  # type: ignore[operator]


def test_outputs_and_performances(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    assert ctx.output_path("model") == tmp_path / "task" / "outputs" / "model"
    ctx.record_performance("accuracy", 0.5)
    ctx.record_performance("accuracy", 0.625)
    assert ctx.performances == {"accuracy": 0.625}
    assert ctx.scratch_dir == tmp_path / "task" / "scratch"
    assert ctx.scratch_dir.is_dir()


def test_each_load_imports_the_opener_afresh(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    assert ctx.load_data() == 1
    opener = tmp_path / "task" / "inputs" / "opener" / "opener.py"
    opener.write_text("def load(paths):\n    return 'changed'\n")
    assert ctx.load_data() == "changed"


def test_opener_without_load_is_reported(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    (tmp_path / "task" / "inputs" / "opener" / "opener.py").write_text("x = 1\n")
    with pytest.raises(FunctionError, match=r"defines no load\(paths\)"):
        ctx.load_data()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ("[]", "must hold a JSON object"),
        (json.dumps({"function": {}}), "field entrypoint is missing"),
    ],
)
def test_unreadable_task_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "task.json").write_text(content)
    with pytest.raises(FunctionError, match=message):
        read_task_file(tmp_path)


def test_missing_task_file(tmp_path: Path) -> None:
    with pytest.raises(FunctionError, match="cannot read"):
        read_task_file(tmp_path)
