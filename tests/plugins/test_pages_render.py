"""The pages as pure functions: plan spec + states + performances -> HTML."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from airfed.plugins._pages_plot import Series, line_chart_svg
from airfed.plugins._pages_render import (
    NodeHealth,
    NodeTask,
    PlanPageData,
    PlanRun,
    performance_tables,
    plan_status,
    render_message,
    render_plan_list,
    render_plan_page,
    task_status,
)
from airfed.sdk.catalog import Performance
from airfed.sdk.plan import ComputePlanBuilder, asset_input, parent_input
from airfed.sdk.spec import PlanSpec

ORGS = ("a", "b", "c")
ROUNDS = 3
_SVG = "{http://www.w3.org/2000/svg}"


def _parse_svg(markup: str) -> ET.Element:
    # The markup is produced by the code under test, not by a third party.
    return ET.fromstring(markup)  # noqa: S314


def sample_plan(name: str = "breast cancer fedavg", rounds: int = ROUNDS) -> PlanSpec:
    """Federated averaging over a, b, c with a local-only baseline per org.

    Each round: train on every organization, aggregate on a, test the
    federated model on every organization; and, per organization, train its
    local model and test it on the same test data.
    """
    builder = ComputePlanBuilder(name, strategy="fedavg", creator="a")
    shared: str | None = None
    local: dict[str, str | None] = dict.fromkeys(ORGS)
    for r in range(1, rounds + 1):
        trains = []
        for org in ORGS:
            inputs = [asset_input("datasamples", f"samples-{org}")]
            if shared is not None:
                inputs.append(parent_input("model", shared, "model"))
            trains.append(
                builder.add_task("train", org, category="train", round=r, inputs=inputs)
            )
        shared = builder.add_task(
            "aggregate",
            "a",
            category="aggregate",
            round=r,
            inputs=[parent_input("models", t, "model") for t in trains],
        )
        for org in ORGS:
            builder.add_task(
                "test",
                org,
                category="test",
                round=r,
                inputs=[parent_input("model", shared, "model")],
                metadata={"model": "federated"},
            )
            inputs = [asset_input("datasamples", f"samples-{org}")]
            if local[org] is not None:
                inputs.append(parent_input("model", str(local[org]), "model"))
            local[org] = builder.add_task(
                "train",
                org,
                category="train",
                round=r,
                inputs=inputs,
                metadata={"model": "local"},
            )
            builder.add_task(
                "test",
                org,
                category="test",
                round=r,
                inputs=[parent_input("model", str(local[org]), "model")],
                metadata={"model": "local"},
            )
    return builder.compile()


def federated_value(r: int, org: str) -> float:
    return 0.80 + 0.04 * r + 0.01 * ORGS.index(org)


def local_value(r: int, org: str) -> float:
    return 0.70 + 0.02 * r - 0.03 * ORGS.index(org)


def sample_performances(spec: PlanSpec, upto_round: int = ROUNDS) -> list[Performance]:
    perfs = []
    for task in spec.tasks:
        if task.category != "test" or task.round > upto_round:
            continue
        local = task.metadata.get("model") == "local"
        value = (local_value if local else federated_value)(task.round, task.worker)
        perfs.append(
            Performance(spec.key, task.key, task.round, task.worker, "accuracy", value)
        )
    return perfs


def sample_page(spec: PlanSpec, failed_round: int | None = None) -> PlanPageData:
    """Rounds 1..2 done, round 3 executing; node c down when asked."""
    node_tasks = {}
    for task in spec.tasks:
        status = "done" if task.round < ROUNDS else "executing"
        if failed_round is not None and task.round == failed_round:
            status = "failed"
        node_tasks[task.key] = NodeTask(task.key, status)
    run = PlanRun("manual__2026-12-03", "running", {})
    health = [
        NodeHealth("a", "https://127.0.0.1:7401", True, "version: 0.1.0"),
        NodeHealth("b", "https://127.0.0.1:7402", True, "version: 0.1.0"),
        NodeHealth("c", "https://127.0.0.1:7403", False, "connection refused"),
    ]
    return PlanPageData(
        spec=spec,
        run=run,
        node_tasks=node_tasks,
        performances=sample_performances(spec, upto_round=ROUNDS - 1),
        health=health,
        problems=["the node of c did not answer: connection refused"],
    )


# --------------------------------------------------------------------------


def test_node_status_wins_over_airflow_state() -> None:
    run = PlanRun("r", "running", {"t1": "success", "t2": "failed", "t3": "deferred"})
    nodes = {"t3": NodeTask("t3", "done")}
    assert task_status("t1", run, nodes) == "done"
    assert task_status("t2", run, nodes) == "failed"
    assert task_status("t3", run, nodes) == "done"
    assert task_status("t4", run, nodes) == "waiting"
    assert task_status("t1", None, {}) == "waiting"


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("queued", "waiting"),
        ("running", "running"),
        ("success", "done"),
        ("failed", "failed"),
    ],
)
def test_plan_status_follows_the_latest_dag_run(state: str, expected: str) -> None:
    assert plan_status(PlanRun("r", state)) == expected
    assert plan_status(None) == "not started"


def test_performance_table_averages_federated_and_keeps_locals_apart() -> None:
    spec = sample_plan()
    (table,) = performance_tables(spec, sample_performances(spec))
    assert table.metric == "accuracy"
    assert table.organizations == ORGS
    assert [row[0] for row in table.rows] == [1, 2, 3]
    _, federated, locals_ = table.rows[1]
    assert federated == pytest.approx(
        sum(federated_value(2, o) for o in ORGS) / len(ORGS)
    )
    assert locals_ == pytest.approx(tuple(local_value(2, o) for o in ORGS))
    assert [s.name for s in table.series] == [
        "federated",
        "local a",
        "local b",
        "local c",
    ]
    assert [s.federated for s in table.series] == [True, False, False, False]


def test_test_tasks_without_model_metadata_count_as_federated() -> None:
    spec = sample_plan(rounds=1)
    train = next(t for t in spec.tasks if t.category == "train")
    perfs = [
        Performance(spec.key, train.key, 1, "b", "loss", 0.3),
        Performance(spec.key, "unknown-task", 1, "c", "loss", 0.5),
    ]
    (table,) = performance_tables(spec, perfs)
    assert table.rows == ((1, pytest.approx(0.4), ()),)


def test_chart_is_valid_svg_with_one_series_per_model() -> None:
    svg = line_chart_svg(
        "accuracy <&>",
        [
            Series("federated", ((1, 0.8), (2, 0.9)), federated=True),
            Series("local <b>", ((1, 0.7), (2, 0.72))),
        ],
    )
    root = _parse_svg(svg)  # well-formed, names escaped
    groups = root.findall(f".//{_SVG}g[@class='series']")
    assert [g.get("data-series") for g in groups] == ["federated", "local <b>"]
    assert [len(g.findall(f"{_SVG}circle")) for g in groups] == [2, 2]
    assert root.get("data-metric") == "accuracy <&>"


def test_chart_of_a_single_point_and_of_nothing() -> None:
    one = _parse_svg(line_chart_svg("auc", [Series("federated", ((4, 0.5),), True)]))
    (circle,) = one.findall(f".//{_SVG}circle")
    assert float(circle.get("cx", "nan")) > 0
    empty = _parse_svg(line_chart_svg("auc", []))
    assert "no performance recorded yet" in "".join(empty.itertext())


def test_plan_list_shows_each_plan_with_its_progress() -> None:
    done_plan, new_plan = sample_plan("first"), sample_plan("second")
    run = PlanRun("r", "success", {t.key: "success" for t in done_plan.tasks})
    html = render_plan_list([(done_plan, run), (new_plan, None)], ["bad.json: x"])
    total = len(done_plan.tasks)
    assert f"{total} / {total} tasks" in html
    assert f"0 / {len(new_plan.tasks)} tasks" in html
    assert f'href="plans/{done_plan.key}"' in html
    assert "not started" in html and "bad.json: x" in html


def test_plan_page_escapes_what_users_wrote() -> None:
    spec = sample_plan("<script>alert(1)</script>", rounds=1)
    html = render_plan_page(PlanPageData(spec=spec))
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "No performance recorded yet" in html


def test_plan_page_holds_tasks_performances_and_health() -> None:
    spec = sample_plan()
    html = render_plan_page(sample_page(spec))
    done = sum(1 for t in spec.tasks if t.round < ROUNDS)
    assert f"{done} / {len(spec.tasks)} tasks" in html
    assert len(re.findall(r'class="task status-', html)) == len(spec.tasks)
    assert html.count('class="series"') == 1 + len(ORGS)
    first_round = sum(federated_value(1, org) for org in ORGS) / len(ORGS)
    assert f"{first_round:.4f}" in html
    assert "connection refused" in html


def test_message_page() -> None:
    html = render_message("Not a compute plan", "DAG x is not <one>")
    assert "DAG x is not &lt;one&gt;" in html
