"""``airfed plan submit`` on bad input: one line that says what was wrong.

These checks fail before any node or orchestrator is contacted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airfed.sdk.cli._plan import read_plan_file
from airfed.sdk.errors import ConfigError, PlanError, SpecError
from airfed.sdk.network import Network
from airfed.sdk.plan import ComputePlanBuilder
from airfed.sdk.spec import PlanSpec
from tests.sdk.cli_support import airfed


def test_description_file_becomes_a_builder(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "name: one task\n"
        "tasks:\n"
        "  - {id: t, function: f, worker: a, category: train, round: 0}\n"
    )
    plan = read_plan_file(path, "a")
    assert isinstance(plan, ComputePlanBuilder)
    assert plan.compile().tasks[0].worker == "a"


def test_compiled_spec_file_is_read_as_a_spec(tmp_path: Path) -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    builder.add_task("f", "a", category="train", round=0, inputs=[])
    spec = builder.compile()
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json())
    assert read_plan_file(path, "b") == spec
    assert isinstance(read_plan_file(path, "b"), PlanSpec)


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("name: [unclosed", ConfigError, "neither YAML nor JSON"),
        ("- just\n- a list\n", ConfigError, "must hold a mapping"),
        ('{"schema_version": 7}', SpecError, "schema_version"),
        ("name: p\ntasks: []\n", PlanError, "tasks must be a non-empty list"),
    ],
)
def test_bad_plan_files_are_refused(
    tmp_path: Path, text: str, error: type[Exception], fragment: str
) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(error, match=fragment):
        read_plan_file(path, "a")


def test_missing_plan_file_is_one_line_error(network: Network) -> None:
    run = airfed(
        "plan", "submit", network.root / "nope.yaml", "--profile", network.root / "a"
    )
    run.assert_one_line_error("cannot read plan file")


def test_cycle_in_plan_file_names_the_task(network: Network, tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "name: loop\n"
        "tasks:\n"
        "  - {id: x, key: 00000000-0000-4000-8000-000000000001, function: f,\n"
        "     worker: a, category: train, round: 0,\n"
        "     inputs: [{identifier: m, parent: y, output: model}]}\n"
        "  - {id: y, key: 00000000-0000-4000-8000-000000000002, function: f,\n"
        "     worker: a, category: train, round: 0,\n"
        "     inputs: [{identifier: m, parent: x, output: model}]}\n"
    )
    run = airfed("plan", "submit", path, "--profile", network.root / "a", "--dry-run")
    run.assert_one_line_error("task 00000000-0000-4000-8000-000000000001")
    assert "cycle" in run.stderr


def test_command_without_profile_says_how_to_give_one() -> None:
    airfed("dataset", "list").assert_one_line_error("pass --profile DIR/<org>")


def test_profile_from_environment_is_used(tmp_path: Path) -> None:
    run = airfed("dataset", "list", env={"AIRFED_PROFILE": str(tmp_path / "x")})
    run.assert_one_line_error(f"profile {tmp_path / 'x'} is not a folder")


def test_unknown_option_is_one_line_error() -> None:
    airfed("plan", "list", "--bogus").assert_one_line_error("No such option: --bogus")


def test_missing_argument_is_one_line_error() -> None:
    airfed("plan", "wait").assert_one_line_error("Missing argument")


def test_bad_permission_id_is_refused(network: Network, tmp_path: Path) -> None:
    opener = tmp_path / "opener.py"
    opener.write_text("def load(paths):\n    return paths\n")
    run = airfed(
        "dataset",
        "add",
        "d",
        "--opener",
        opener,
        "--process",
        "a//x",
        "--profile",
        network.root / "a",
    )
    run.assert_one_line_error("permission id 'a//x'")


def test_bad_function_input_is_refused(network: Network, tmp_path: Path) -> None:
    (tmp_path / "algo.py").write_text("def train(ctx):\n    pass\n")
    run = airfed(
        "function",
        "add",
        tmp_path,
        "--name",
        "f",
        "--entrypoint",
        "algo:train",
        "--input",
        "data:dataset:sometimes",
        "--profile",
        network.root / "a",
    )
    run.assert_one_line_error("identifier:kind[:multiple][:optional]")


def test_function_entrypoint_must_exist(network: Network, tmp_path: Path) -> None:
    (tmp_path / "algo.py").write_text("def train(ctx):\n    pass\n")
    run = airfed(
        "function",
        "add",
        tmp_path,
        "--name",
        "f",
        "--entrypoint",
        "model:train",
        "--profile",
        network.root / "a",
    )
    run.assert_one_line_error("entrypoint module model.py is not in")
