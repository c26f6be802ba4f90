from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from airfed.sdk.errors import SpecError
from airfed.sdk.spec import (
    InputRef,
    PlanSpec,
    TaskSpec,
    json_schema,
    parse_plan_spec,
    spec_hash,
)

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema" / "plan-spec.schema.json"


def _spec() -> PlanSpec:
    first = TaskSpec(
        key="t1", plan_key="p", function_key="f", worker="a", rank=0, round=1
    )
    second = TaskSpec(
        key="t2",
        plan_key="p",
        function_key="f",
        worker="b",
        rank=1,
        round=1,
        inputs=(
            InputRef(identifier="model", parent_task_key="t1", parent_output="model"),
        ),
    )
    return PlanSpec(
        key="p",
        name="demo",
        strategy="fedavg",
        rounds=1,
        organizations=("a", "b"),
        creator="a",
        tasks=(first, second),
    )


def test_published_schema_is_the_one_the_models_generate() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == json_schema()


def test_a_compiled_spec_validates_against_the_published_schema() -> None:
    data = json.loads(_spec().to_json())
    jsonschema.validate(data, json.loads(SCHEMA_FILE.read_text()))
    assert parse_plan_spec(data) == _spec()


def test_hash_is_stable_and_changes_with_the_spec() -> None:
    assert spec_hash(_spec()) == spec_hash(parse_plan_spec(_spec().to_json()))
    other = _spec().model_copy(update={"name": "other"})
    assert spec_hash(other) != spec_hash(_spec())


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema_version": 2}, "schema_version"),
        ({"rounds": -1}, "rounds"),
        ({"tasks": [{"key": "t1"}]}, "tasks.0"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_unreadable_spec_names_the_field(change: dict[str, object], field: str) -> None:
    data = json.loads(_spec().to_json()) | change
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_plan_spec(data)


def test_unknown_parent_is_refused() -> None:
    data = json.loads(_spec().to_json())
    data["tasks"][1]["inputs"][0]["parent_task_key"] = "nowhere"
    with pytest.raises(SpecError, match="unknown task nowhere"):
        parse_plan_spec(data)
