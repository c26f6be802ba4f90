"""The task runtime, in-process and as ``python -m`` / ``airfed task run``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airfed.node_api.runtime import run_task_workdir
from airfed.sdk.function import FunctionError
from tests.node_api.workdirs import make_workdir

GOOD = """
    def train(ctx):
        ctx.output_path("model").write_bytes(b"weights")
        ctx.record_performance("accuracy", 0.75)
"""

AIRFED = Path(sys.executable).with_name("airfed")


def _result_file(workdir: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((workdir / "result.json").read_text())
    return data


def test_function_writes_model_and_records_performance(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path, GOOD)

    result = run_task_workdir(workdir)

    assert result == {
        "status": "done",
        "outputs": {"model": "outputs/model"},
        "performances": {"accuracy": 0.75},
        "error": None,
    }
    assert _result_file(workdir) == result
    assert (workdir / "outputs" / "model").read_bytes() == b"weights"
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []


def test_function_loads_data_through_the_opener_in_input_order(tmp_path: Path) -> None:
    code = """
        import json
        def train(ctx):
            data = ctx.load_data()
            previous = ctx.input_paths("models")
            report = {
                "data": data, "models": [p.read_text() for p in previous],
                "task": [ctx.task_key, ctx.plan_key, ctx.round, ctx.rank,
                         ctx.worker, ctx.category, ctx.metadata],
                "scratch": ctx.scratch_dir.is_dir(),
            }
            ctx.output_path("model").write_text(json.dumps(report))
    """
    opener = """
        def load(paths):
            return [p.joinpath("rows.csv").read_text().strip() for p in paths]
    """
    workdir = make_workdir(
        tmp_path,
        code,
        inputs=[
            {"identifier": "opener", "kind": "dataset"},
            {"identifier": "datasamples", "kind": "datasamples", "multiple": True},
            {"identifier": "models", "kind": "model", "multiple": True},
        ],
        outputs=[{"identifier": "model", "kind": "model"}],
        staged={
            "datasamples": ["inputs/datasamples/1", "inputs/datasamples/0"],
            "models": ["inputs/models/0", "inputs/models/1"],
        },
        opener="inputs/opener/opener.py",
        files={
            "inputs/opener/opener.py": opener,
            "inputs/datasamples/0/rows.csv": "zero\n",
            "inputs/datasamples/1/rows.csv": "one\n",
            "inputs/models/0": "m0",
            "inputs/models/1": "m1",
        },
    )

    assert run_task_workdir(workdir)["status"] == "done"

    report = json.loads((workdir / "outputs" / "model").read_text())
    assert report["data"] == ["one", "zero"]
    assert report["models"] == ["m0", "m1"]
    assert report["task"] == [
        "8d1c2f0e-0000-4000-8000-000000000001",
        "8d1c2f0e-0000-4000-8000-0000000000aa",
        2,
        1,
        "a",
        "train",
        {"lr": "0.1"},
    ]
    assert report["scratch"] is True


def test_exception_fails_the_task_with_traceback_in_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = """
        def train(ctx):
            raise ValueError("the learning rate must be positive\\nsecond line")
    """
    workdir = make_workdir(tmp_path, code)

    result = run_task_workdir(workdir)

    assert result["status"] == "failed"
    assert result["error"] == "ValueError: the learning rate must be positive"
    assert result["outputs"] == {} and result["performances"] == {}
    assert _result_file(workdir) == result
    stderr = capsys.readouterr().err
    assert "Traceback (most recent call last)" in stderr
    assert 'algo.py", line 3, in train' in stderr


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (
            "def train(ctx):\n    ctx.record_performance('accuracy', 1.0)\n",
            "output 'model' was not written: the function must write a file at "
            "ctx.output_path('model')",
        ),
        (
            "def train(ctx):\n    ctx.output_path('model').write_text('w')\n",
            "performance 'accuracy' was not recorded",
        ),
        (
            "def train(ctx):\n    ctx.output_path('weights')\n",
            "output 'weights' is not declared by the function "
            "(declared: model, accuracy)",
        ),
        (
            "def train(ctx):\n    ctx.output_path('model').mkdir()\n"
            "    ctx.record_performance('accuracy', 1.0)\n",
            "output 'model' was not written",
        ),
        (
            "def train(ctx):\n    ctx.record_performance('accuracy', float('nan'))\n",
            "performance 'accuracy' must be finite",
        ),
        (
            "def train(ctx):\n    ctx.input_path('model')\n",
            "input 'model' is not declared",
        ),
        ("def train(ctx):\n    ctx.load_data()\n", "this task has no dataset input"),
        (
            "import sys\ndef train(ctx):\n    sys.exit(3)\n",
            "the function exited with 3",
        ),
        (
            "import nonexistent_package_xyz\n",
            "ModuleNotFoundError: No module named 'nonexistent_package_xyz'",
        ),
        ("x = 1\n", "entrypoint 'algo:train': algo defines no callable 'train'"),
    ],
    ids=[
        "missing-model",
        "missing-performance",
        "undeclared-output",
        "folder-not-file",
        "nan",
        "undeclared-input",
        "no-dataset",
        "sys-exit",
        "missing-dependency",
        "no-callable",
    ],
)
def test_function_mistake_fails_with_a_message(
    tmp_path: Path, code: str, error: str
) -> None:
    result = run_task_workdir(make_workdir(tmp_path, code))
    assert result["status"] == "failed"
    assert error in result["error"]


def test_entrypoint_module_missing_from_archive(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path, GOOD, entrypoint="train_module:train")
    result = run_task_workdir(workdir)
    assert result["error"] == (
        "entrypoint 'train_module:train': module 'train_module' is not in the "
        "function's archive"
    )


def test_function_module_cannot_shadow_an_installed_module(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path, GOOD, entrypoint="json:train")
    (workdir / "function" / "json.py").write_text("def train(ctx):\n    pass\n")
    result = run_task_workdir(workdir)
    assert "has the name of an installed module" in result["error"]


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d["task"].pop("round"), "field task.round must be an integer >= 0"),
        (lambda d: d.pop("function"), "field function is missing"),
        (
            lambda d: d["function"].update(entrypoint="algo.train"),
            "is not 'module:callable'",
        ),
        (
            lambda d: d["function"]["outputs"].append({"identifier": "x", "kind": "y"}),
            "output kind 'y' is not one of model, performance",
        ),
        (
            lambda d: d.update(inputs={"models": ["../../etc/passwd"]}),
            "must be relative to the task workdir",
        ),
        (
            lambda d: d.update(opener="/etc/opener.py"),
            "must be relative to the task workdir",
        ),
    ],
    ids=["no-round", "no-function", "entrypoint", "kind", "dotdot", "absolute"],
)
def test_invalid_task_file_fails_naming_the_field(
    tmp_path: Path, mutate: object, error: str
) -> None:
    workdir = make_workdir(tmp_path, GOOD)
    data = json.loads((workdir / "task.json").read_text())
    mutate(data)  # type: ignore[operator]
    (workdir / "task.json").write_text(json.dumps(data))

    result = run_task_workdir(workdir)

    assert result["status"] == "failed"
    assert error in result["error"]
    assert _result_file(workdir)["status"] == "failed"


def test_functions_with_the_same_module_name_do_not_mix(tmp_path: Path) -> None:
    first = make_workdir(tmp_path, GOOD.replace("0.75", "0.1"), name="first")
    second = make_workdir(tmp_path, GOOD.replace("0.75", "0.2"), name="second")
    path_before = list(sys.path)

    assert run_task_workdir(first)["performances"] == {"accuracy": 0.1}
    assert run_task_workdir(second)["performances"] == {"accuracy": 0.2}
    assert sys.path == path_before
    assert "algo" not in sys.modules


def test_missing_workdir_raises(tmp_path: Path) -> None:
    with pytest.raises(FunctionError, match="does not exist"):
        run_task_workdir(tmp_path / "absent")


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "airfed.node_api.runtime"],
        [str(AIRFED), "task", "run", "--workdir"],
    ],
    ids=["python-m", "airfed-task-run"],
)
def test_command_line_exits_0_when_done_and_1_when_failed(
    tmp_path: Path, command: list[str]
) -> None:
    done = make_workdir(tmp_path, GOOD, name="done")
    failed = make_workdir(tmp_path, "def train(ctx):\n    1 / 0\n", name="failed")

    ok = subprocess.run([*command, str(done)], capture_output=True, text=True)
    bad = subprocess.run([*command, str(failed)], capture_output=True, text=True)

    assert ok.returncode == 0, ok.stderr
    assert _result_file(done)["status"] == "done"
    assert bad.returncode == 1
    assert "ZeroDivisionError: division by zero" in bad.stderr
    assert _result_file(failed)["error"] == "ZeroDivisionError: division by zero"


def test_airfed_task_run_prints_the_result_as_json(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path, GOOD)
    run = subprocess.run(
        [str(AIRFED), "task", "run", "--workdir", str(workdir), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(run.stdout)["performances"] == {"accuracy": 0.75}


def test_airfed_task_run_on_a_missing_workdir_prints_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(AIRFED), "task", "run", "--workdir", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr
    assert "does not exist" in run.stderr


def test_runtime_imports_nothing_heavy() -> None:
    code = (
        "import sys, airfed.node_api.runtime\n"
        "print(sorted({'torch', 'numpy', 'sklearn', 'airflow', 'fastapi'}"
        " & set(sys.modules)))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert run.stdout.strip() == "[]"
