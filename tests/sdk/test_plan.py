"""The plan builder: structure checks, ranks, catalog checks, descriptions."""

from __future__ import annotations

from typing import Any

import pytest

from airfed.sdk.catalog import Asset, Catalog
from airfed.sdk.errors import PlanError
from airfed.sdk.plan import (
    ComputePlanBuilder,
    asset_input,
    builder_from_description,
    parent_input,
)
from airfed.sdk.spec import OutputSpec, Permission, Permissions, parse_plan_spec

TRAIN_IO = {
    "inputs": [
        {"identifier": "dataset", "kind": "dataset"},
        {"identifier": "datasamples", "kind": "datasamples", "multiple": True},
        {"identifier": "model", "kind": "model", "optional": True},
    ],
    "outputs": [{"identifier": "model", "kind": "model"}],
}
AGGREGATE_IO = {
    "inputs": [{"identifier": "models", "kind": "model", "multiple": True}],
    "outputs": [{"identifier": "model", "kind": "model"}],
}
TEST_IO = {
    "inputs": [
        {"identifier": "dataset", "kind": "dataset"},
        {"identifier": "datasamples", "kind": "datasamples", "multiple": True},
        {"identifier": "model", "kind": "model"},
    ],
    "outputs": [{"identifier": "accuracy", "kind": "performance"}],
}
PUBLIC = Permissions(process=Permission(public=True), download=Permission(public=True))
EVERY_NODE = ("a", "b", "c")


def _catalog(**overrides: Any) -> Catalog:
    """Functions on a; datasets and samples on b and c; a model on c."""
    assets = [
        Asset("function", "f-train", "a", "train", PUBLIC, TRAIN_IO, EVERY_NODE),
        Asset("function", "f-agg", "a", "aggregate", PUBLIC, AGGREGATE_IO, EVERY_NODE),
        Asset("function", "f-test", "a", "test", PUBLIC, TEST_IO, EVERY_NODE),
        Asset("dataset", "d-b", "b", "b data", PUBLIC),
        Asset("dataset", "d-c", "c", "c data", PUBLIC),
        Asset("datasample", "s-b", "b", data={"dataset_key": "d-b"}),
        Asset("datasample", "s-c", "c", data={"dataset_key": "d-c"}),
        Asset("model", "m-c", "c", "private model"),
    ]
    replaced = {asset.key: asset for asset in assets}
    replaced.update(overrides)
    return Catalog(replaced.values())


def _train(builder: ComputePlanBuilder, worker: str, round_: int, **kw: Any) -> str:
    extra = kw.pop("inputs", [])
    return builder.add_task(
        "f-train",
        worker,
        category="train",
        round=round_,
        inputs=[
            asset_input("dataset", f"d-{worker}"),
            asset_input("datasamples", f"s-{worker}"),
            *extra,
        ],
        **kw,
    )


def _fedavg(rounds: int) -> ComputePlanBuilder:
    builder = ComputePlanBuilder("fedavg", strategy="fedavg", creator="a")
    previous: str | None = None
    for round_ in range(1, rounds + 1):
        start = [parent_input("model", previous, "model")] if previous else []
        trains = [_train(builder, w, round_, inputs=start) for w in ("b", "c")]
        previous = builder.add_task(
            "f-agg",
            "a",
            category="aggregate",
            round=round_,
            inputs=[parent_input("models", t, "model") for t in trains],
        )
    return builder


def test_ranks_are_dependency_levels() -> None:
    spec = _fedavg(3).compile(_catalog())
    by_round = {(t.round, t.category, t.worker): t.rank for t in spec.tasks}
    assert by_round[(1, "train", "b")] == 0
    assert by_round[(1, "aggregate", "a")] == 1
    assert by_round[(2, "train", "c")] == 2
    assert by_round[(3, "aggregate", "a")] == 5
    assert [t.rank for t in spec.tasks] == sorted(t.rank for t in spec.tasks)
    assert spec.rounds == 3
    assert spec.organizations == ("a", "b", "c")


def test_spec_round_trips_through_json() -> None:
    spec = _fedavg(2).compile(_catalog())
    assert parse_plan_spec(spec.to_json()) == spec


def test_default_outputs_are_processable_by_workers_and_downloadable_by_creator() -> (
    None
):
    spec = _fedavg(1).compile(_catalog())
    train = next(t for t in spec.tasks if t.category == "train")
    permissions = train.outputs["model"].permissions
    assert permissions.process.authorized_ids == ("a", "b", "c")
    assert permissions.download.authorized_ids == ("a",)


def test_cycle_is_reported_with_its_tasks() -> None:
    builder = ComputePlanBuilder("loop", "custom", "a")
    builder.add_task(
        "f",
        "a",
        category="train",
        round=0,
        inputs=[parent_input("m", "t2", "model")],
        key="t1",
    )
    builder.add_task(
        "f",
        "a",
        category="train",
        round=0,
        inputs=[parent_input("m", "t1", "model")],
        key="t2",
    )
    with pytest.raises(PlanError, match=r"task t1 .*cycle \(t\d -> t\d -> t1\)"):
        builder.compile()


def test_task_that_depends_on_itself_is_a_cycle() -> None:
    builder = ComputePlanBuilder("self", "custom", "a")
    builder.add_task(
        "f",
        "a",
        category="train",
        round=0,
        inputs=[parent_input("m", "t1", "model")],
        key="t1",
    )
    with pytest.raises(PlanError, match=r"task t1 .*cycle \(t1 -> t1\)"):
        builder.compile()


def test_unknown_parent_names_the_task() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    builder.add_task(
        "f",
        "a",
        category="test",
        round=0,
        inputs=[parent_input("m", "ghost", "model")],
        key="child",
    )
    with pytest.raises(PlanError, match=r"task child .*depends on task ghost"):
        builder.compile()


def test_parent_output_must_exist() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    parent = builder.add_task(
        "f",
        "a",
        category="train",
        round=0,
        inputs=[],
        outputs={"model": OutputSpec()},
        key="parent",
    )
    builder.add_task(
        "f",
        "a",
        category="test",
        round=0,
        inputs=[parent_input("m", parent, "weights")],
        key="child",
    )
    with pytest.raises(PlanError, match=r"task child .*no such output"):
        builder.compile()


def test_parent_output_must_be_permitted_to_child_worker() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    only_a = OutputSpec(
        permissions=Permissions(process=Permission(authorized_ids=("a",)))
    )
    parent = builder.add_task(
        "f", "a", category="train", round=0, inputs=[], outputs={"model": only_a}
    )
    builder.add_task(
        "f",
        "b",
        category="test",
        round=0,
        inputs=[parent_input("m", parent, "model")],
        key="child",
    )
    with pytest.raises(PlanError, match=r"task child .*not permitted to b"):
        builder.compile()


def test_duplicate_task_key_is_refused() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    builder.add_task("f", "a", category="train", round=0, inputs=[], key="t")
    with pytest.raises(PlanError, match=r"task t .*already has this key"):
        builder.add_task("f", "a", category="train", round=0, inputs=[], key="t")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"category": "teach"}, "category must be one of"),
        ({"round": -1}, "round must be 0 or more"),
        ({"inputs": [{"identifier": "x"}]}, "asset_input"),
    ],
)
def test_bad_task_fields_are_refused(kwargs: dict[str, Any], message: str) -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    arguments: dict[str, Any] = {"category": "train", "round": 0, "inputs": []}
    arguments.update(kwargs)
    with pytest.raises(PlanError, match=message):
        builder.add_task("f", "a", key="t", **arguments)
    assert len(builder) == 0


def test_empty_plan_is_refused() -> None:
    with pytest.raises(PlanError, match="has no tasks"):
        ComputePlanBuilder("p", "custom", "a").compile()


def test_unknown_function_is_reported() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    builder.add_task("f-none", "b", category="train", round=0, inputs=[], key="t")
    with pytest.raises(PlanError, match=r"task t .*function f-none is not registered"):
        builder.compile(_catalog())


def test_unknown_asset_is_reported() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    builder.add_task(
        "f-train",
        "b",
        category="train",
        round=0,
        inputs=[asset_input("dataset", "d-b"), asset_input("datasamples", "s-x")],
        key="t",
    )
    with pytest.raises(PlanError, match=r"task t .*asset s-x, which is not registered"):
        builder.compile(_catalog())


def test_data_of_another_node_is_refused() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    builder.add_task(
        "f-train",
        "b",
        category="train",
        round=0,
        inputs=[asset_input("dataset", "d-c"), asset_input("datasamples", "s-c")],
        key="t",
    )
    with pytest.raises(PlanError, match=r"task t .*held by c; data never leaves"):
        builder.compile(_catalog())


def test_model_of_another_node_is_refused() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    _train(builder, "b", 0, inputs=[asset_input("model", "m-c")], key="t")
    with pytest.raises(PlanError, match=r"task t .*model m-c is held by c"):
        builder.compile(_catalog())


def test_model_of_the_worker_is_accepted() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    _train(builder, "c", 0, inputs=[asset_input("model", "m-c")], key="t")
    (task,) = builder.compile(_catalog()).tasks
    assert task.inputs[-1].asset_key == "m-c"


def test_function_missing_on_the_worker_node_is_refused() -> None:
    only_a = Asset("function", "f-train", "a", "train", PUBLIC, TRAIN_IO, ("a",))
    builder = ComputePlanBuilder("p", "custom", "a")
    _train(builder, "b", 0, key="t")
    with pytest.raises(PlanError, match=r"task t .*not registered on the node of b"):
        builder.compile(_catalog(**{"f-train": only_a}))


def test_copies_of_a_function_on_several_nodes_are_one_asset() -> None:
    catalog = Catalog(
        [
            Asset("function", "f", "a", "f", nodes=("a",)),
            Asset("function", "f", "a", "f", nodes=("c",)),
        ]
    )
    assert len(catalog) == 1
    assert catalog.get("f").nodes == ("a", "c")  # type: ignore[union-attr]


def test_function_not_permitted_to_worker_is_refused() -> None:
    private = Asset(
        "function", "f-train", "a", "train", Permissions(), TRAIN_IO, EVERY_NODE
    )
    builder = ComputePlanBuilder("p", "custom", "a")
    _train(builder, "b", 0, key="t")
    with pytest.raises(PlanError, match=r"task t .*not permitted to b"):
        builder.compile(_catalog(**{"f-train": private}))


def test_dataset_must_permit_the_function_owner() -> None:
    private = Asset("dataset", "d-b", "b", "b data", Permissions())
    builder = ComputePlanBuilder("p", "custom", "a")
    _train(builder, "b", 0, key="t")
    with pytest.raises(PlanError, match=r"task t .*permit functions of a to"):
        builder.compile(_catalog(**{"d-b": private}))


def test_dataset_of_a_sample_must_permit_the_function_owner() -> None:
    count_io = {
        "inputs": [{"identifier": "datasamples", "kind": "datasamples"}],
        "outputs": [{"identifier": "count", "kind": "performance"}],
    }
    count = Asset("function", "f-count", "a", "count", PUBLIC, count_io, EVERY_NODE)
    private = Asset("dataset", "d-b", "b", "b data", Permissions())
    builder = ComputePlanBuilder("p", "custom", "a")
    builder.add_task(
        "f-count",
        "b",
        category="test",
        round=0,
        inputs=[asset_input("datasamples", "s-b")],
        key="t",
    )
    with pytest.raises(PlanError, match=r"task t .*dataset d-b \(b data\) does not"):
        builder.compile(_catalog(**{"d-b": private, "f-count": count}))


def test_missing_declared_input_is_reported() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    builder.add_task(
        "f-train",
        "b",
        category="train",
        round=0,
        inputs=[asset_input("dataset", "d-b")],
        key="t",
    )
    with pytest.raises(PlanError, match=r"task t .*input 'datasamples'.*not given"):
        builder.compile(_catalog())


def test_undeclared_input_is_reported() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    _train(builder, "b", 0, inputs=[asset_input("weights", "m-c")], key="t")
    with pytest.raises(PlanError, match=r"task t .*has no input 'weights'"):
        builder.compile(_catalog())


def test_single_input_given_twice_is_reported() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    _train(builder, "b", 0, inputs=[asset_input("dataset", "d-b")], key="t")
    with pytest.raises(PlanError, match=r"task t .*takes one dataset, but 2"):
        builder.compile(_catalog())


def test_asset_of_wrong_kind_is_reported() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    builder.add_task(
        "f-train",
        "b",
        category="train",
        round=0,
        inputs=[asset_input("dataset", "s-b"), asset_input("datasamples", "s-b")],
        key="t",
    )
    with pytest.raises(PlanError, match=r"task t .*needs a dataset, but s-b is a"):
        builder.compile(_catalog())


def test_parent_performance_output_cannot_feed_a_model_input() -> None:
    builder = ComputePlanBuilder("p", "custom", "a")
    train = _train(builder, "b", 0)
    test = builder.add_task(
        "f-test",
        "b",
        category="test",
        round=0,
        inputs=[
            asset_input("dataset", "d-b"),
            asset_input("datasamples", "s-b"),
            parent_input("model", train, "model"),
        ],
    )
    builder.add_task(
        "f-agg",
        "a",
        category="aggregate",
        round=0,
        inputs=[parent_input("models", test, "accuracy")],
        key="agg",
    )
    with pytest.raises(PlanError, match=r"task agg .*declares no model output"):
        builder.compile(_catalog())


def test_samples_must_belong_to_the_task_dataset() -> None:
    other = Asset("datasample", "s-b2", "b", data={"dataset_key": "d-other"})
    builder = ComputePlanBuilder("p", "custom", "a")
    _train(builder, "b", 0, inputs=[asset_input("datasamples", "s-b2")], key="t")
    with pytest.raises(PlanError, match=r"task t .*belongs to dataset d-other"):
        builder.compile(_catalog(**{"s-b2": other}))


def test_thousand_task_plan_compiles_into_one_spec() -> None:
    builder = _fedavg(333)
    spec = builder.compile(_catalog())
    assert len(spec.tasks) == 999
    assert max(t.rank for t in spec.tasks) == 2 * 333 - 1
    assert parse_plan_spec(spec.to_json()).key == spec.key


def test_from_spec_recompiles_to_the_same_spec() -> None:
    spec = _fedavg(2).compile(_catalog())
    assert ComputePlanBuilder.from_spec(spec).compile(_catalog()) == spec


def test_description_builds_a_plan() -> None:
    description = {
        "name": "two steps",
        "tasks": [
            {
                "id": "train",
                "function": "f-train",
                "worker": "b",
                "category": "train",
                "round": 1,
                "inputs": [
                    {"identifier": "dataset", "asset": "d-b"},
                    {"identifier": "datasamples", "asset": "s-b"},
                ],
            },
            {
                "id": "test",
                "function": "f-test",
                "worker": "b",
                "category": "test",
                "round": 1,
                "inputs": [
                    {"identifier": "dataset", "asset": "d-b"},
                    {"identifier": "datasamples", "asset": "s-b"},
                    {"identifier": "model", "parent": "train", "output": "model"},
                ],
                "outputs": {"accuracy": {"permissions": {"download": {"public": 1}}}},
            },
        ],
    }
    spec = builder_from_description(description, creator="a").compile(_catalog())
    train, test = spec.tasks
    assert (train.rank, test.rank) == (0, 1)
    assert test.parent_keys == (train.key,)
    assert test.outputs["accuracy"].permissions.download.public
    assert spec.creator == "a"
    assert spec.strategy == "custom"


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ({"tasks": []}, "field name is missing"),
        ({"name": "x", "tasks": []}, "field tasks must be a non-empty list"),
        ({"name": "x", "tasks": [{"id": "t"}]}, "task 't': field function"),
        (
            {
                "name": "x",
                "tasks": [
                    {
                        "id": "t",
                        "function": "f",
                        "worker": "a",
                        "category": "train",
                        "round": 0,
                        "inputs": [{"identifier": "m", "parent": "u", "output": "m"}],
                    }
                ],
            },
            "task 't': input 'm' names unknown task 'u'",
        ),
    ],
)
def test_bad_description_says_what_is_wrong(
    description: dict[str, Any], message: str
) -> None:
    with pytest.raises(PlanError, match=message):
        builder_from_description(description, creator="a")
