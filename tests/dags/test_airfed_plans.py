"""The DAG factory: plan specs in the plans folder become DAGs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airfed.sdk._membership import tasks_root, verify_task
from airfed.sdk.orchestrator import dag_id_for, task_id_for
from airfed.sdk.spec import PlanSpec, spec_hash
from tests.support.airflow import REPO_ROOT, fedavg_spec

DAGS = REPO_ROOT / "dags"


@pytest.fixture
def plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "plans"
    folder.mkdir()
    monkeypatch.setenv("AIRFLOW__AIRFED__PLANS_FOLDER", str(folder))
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", raising=False)
    return folder


def _store(folder: Path, spec: PlanSpec) -> None:
    (folder / f"{spec.key}.json").write_text(spec.to_json())


def _bag(folder: Path = DAGS) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder))


def test_every_stored_spec_becomes_a_dag(plans: Path) -> None:
    first, second = fedavg_spec(rounds=2), fedavg_spec(("a", "b"), rounds=1)
    _store(plans, first)
    _store(plans, second)

    bag = _bag()

    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {dag_id_for(first.key), dag_id_for(second.key)}
    dag = bag.dags[dag_id_for(first.key)]
    assert len(dag.tasks) == len(first.tasks)
    assert dag.schedule is None or str(dag.timetable.summary) == "None"


def test_dag_doc_shows_name_strategy_rounds_and_organizations(plans: Path) -> None:
    spec = fedavg_spec(("a", "b", "c"), rounds=3, name="breast cancer")
    _store(plans, spec)

    doc = _bag().dags[dag_id_for(spec.key)].doc_md

    assert "# breast cancer" in doc
    assert "| strategy | fedavg |" in doc
    assert "| rounds | 3 |" in doc
    assert "| organizations | a, b, c |" in doc


def test_tasks_depend_on_the_parents_whose_outputs_they_take(plans: Path) -> None:
    spec = fedavg_spec(("a", "b"), rounds=2)
    _store(plans, spec)
    dag = _bag().dags[dag_id_for(spec.key)]

    for task in spec.tasks:
        operator = dag.get_task(task_id_for(task))
        expected = {task_id_for(t) for t in spec.tasks if t.key in task.parent_keys}
        assert operator.upstream_task_ids == expected
        assert operator.task_spec == task.model_dump(mode="json")
        assert operator.wait_on_worker == 5.0


def test_each_task_carries_the_proof_that_it_belongs_to_its_plan(
    plans: Path,
) -> None:
    spec = fedavg_spec(("a", "b", "c"), rounds=2)
    _store(plans, spec)
    dag = _bag().dags[dag_id_for(spec.key)]

    for index, task in enumerate(spec.tasks):
        plan = dag.get_task(task_id_for(task)).plan
        assert plan["key"] == spec.key
        assert plan["spec_hash"] == spec_hash(spec)
        assert plan["tasks_root"] == tasks_root(spec)
        assert plan["task_count"] == len(spec.tasks)
        assert plan["task_index"] == index
        assert verify_task(
            task, index, len(spec.tasks), plan["task_proof"], plan["tasks_root"]
        )


def test_unreadable_spec_is_an_import_error_naming_plan_and_field(
    plans: Path,
) -> None:
    good = fedavg_spec(rounds=1)
    _store(plans, good)
    bad = json.loads(fedavg_spec(rounds=1).to_json())
    bad["rounds"] = -1
    (plans / f"{bad['key']}.json").write_text(json.dumps(bad))

    bag = _bag()

    assert list(bag.dag_ids) == [dag_id_for(good.key)]
    ((path, message),) = bag.import_errors.items()
    # Reported by a file without DAGs: Airflow stales every DAG of a file
    # with an import error, so the factory's own file stays clean.
    assert path.endswith("airfed_plan_errors.py")
    assert f"plan {bad['key']}" in message
    assert "field rounds" in message


def test_spec_that_is_not_json_names_the_plan(plans: Path) -> None:
    (plans / "broken.json").write_text("{not json")

    bag = _bag()

    assert bag.dag_ids == []
    (message,) = bag.import_errors.values()
    assert "plan broken" in message
    assert "not JSON" in message


def test_spec_whose_key_differs_from_its_file_is_refused(plans: Path) -> None:
    spec = fedavg_spec(rounds=1)
    (plans / "other.json").write_text(spec.to_json())

    (message,) = _bag().import_errors.values()

    assert "plan other" in message
    assert "field key" in message


def test_task_run_builds_only_its_own_dag(
    plans: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wanted, other = fedavg_spec(rounds=1), fedavg_spec(rounds=1)
    _store(plans, wanted)
    _store(plans, other)
    (plans / "broken.json").write_text("{not json")
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", dag_id_for(wanted.key))

    # A task process parses only the file its DAG comes from.
    bag = _bag(DAGS / "airfed_plans.py")

    assert bag.dag_ids == [dag_id_for(wanted.key)]
    assert bag.import_errors == {}


def test_task_run_builds_only_its_own_task_with_its_proof(
    plans: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = fedavg_spec(("a", "b", "c"), rounds=2)
    _store(plans, spec)
    index = len(spec.tasks) - 2
    task = spec.tasks[index]
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", dag_id_for(spec.key))
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", task_id_for(task))

    dag = _bag(DAGS / "airfed_plans.py").dags[dag_id_for(spec.key)]

    assert [t.task_id for t in dag.tasks] == [task_id_for(task)]
    operator = dag.get_task(task_id_for(task))
    assert operator.task_spec == task.model_dump(mode="json")
    plan = operator.plan
    assert plan["task_index"] == index
    workers = {t.key: t.worker for t in spec.tasks}
    assert task.parent_keys
    assert plan["parents"] == {p: workers[p] for p in task.parent_keys}
    assert verify_task(
        task, index, len(spec.tasks), plan["task_proof"], plan["tasks_root"]
    )


def test_a_task_the_plan_lacks_gets_the_whole_dag(
    plans: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = fedavg_spec(("a", "b"), rounds=1)
    _store(plans, spec)
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", dag_id_for(spec.key))
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", "r9_train_x__unknown")

    dag = _bag(DAGS / "airfed_plans.py").dags[dag_id_for(spec.key)]

    assert len(dag.tasks) == len(spec.tasks)


def _proofs(dag: Any, spec: PlanSpec) -> list[list[str]]:
    return [dag.get_task(task_id_for(t)).plan["task_proof"] for t in spec.tasks]


def test_the_task_tree_is_kept_beside_the_spec_and_read_back(plans: Path) -> None:
    spec = fedavg_spec(("a", "b", "c"), rounds=2)
    _store(plans, spec)
    first = _bag().dags[dag_id_for(spec.key)]
    kept = plans / ".trees" / f"{spec.key}.json"
    assert kept.is_file()
    # The copy is what the next parse uses: a forged spec hash in it shows.
    data = json.loads(kept.read_text())
    data["spec_hash"] = "0" * 64
    kept.write_text(json.dumps(data))

    second = _bag().dags[dag_id_for(spec.key)]

    assert _proofs(second, spec) == _proofs(first, spec)
    assert second.get_task(task_id_for(spec.tasks[0])).plan["spec_hash"] == "0" * 64


@pytest.mark.parametrize(
    "damage",
    ["{not json", '{"digest": "0", "spec_hash": "x", "leaf_hashes": []}', "[]"],
)
def test_a_kept_tree_that_does_not_fit_the_spec_is_rebuilt(
    plans: Path, damage: str
) -> None:
    spec = fedavg_spec(("a", "b"), rounds=2)
    _store(plans, spec)
    (plans / ".trees").mkdir()
    (plans / ".trees" / f"{spec.key}.json").write_text(damage)

    dag = _bag().dags[dag_id_for(spec.key)]

    for index, task in enumerate(spec.tasks):
        plan = dag.get_task(task_id_for(task)).plan
        assert plan["spec_hash"] == spec_hash(spec)
        assert verify_task(
            task, index, len(spec.tasks), plan["task_proof"], plan["tasks_root"]
        )
    kept = json.loads((plans / ".trees" / f"{spec.key}.json").read_text())
    assert kept["spec_hash"] == spec_hash(spec)


def test_a_changed_spec_file_gets_a_new_tree(plans: Path) -> None:
    spec = fedavg_spec(("a", "b"), rounds=1)
    _store(plans, spec)
    _bag()
    renamed = spec.model_copy(update={"name": "renamed"})
    _store(plans, renamed)

    dag = _bag().dags[dag_id_for(spec.key)]

    plan = dag.get_task(task_id_for(spec.tasks[-1])).plan
    assert spec_hash(renamed) != spec_hash(spec)
    assert plan["spec_hash"] == spec_hash(renamed)


def test_a_plans_folder_that_cannot_keep_trees_still_gives_the_dag(
    plans: Path,
) -> None:
    spec = fedavg_spec(("a", "b"), rounds=1)
    _store(plans, spec)
    (plans / ".trees").write_text("a file where the folder of trees would be")

    bag = _bag()

    assert bag.import_errors == {}
    assert len(bag.dags[dag_id_for(spec.key)].tasks) == len(spec.tasks)


def _serialized(spec_key: str) -> str:
    from airflow.serialization.serialized_objects import DagSerialization

    dag = _bag().dags[dag_id_for(spec_key)]
    data = DagSerialization.to_dict(dag)
    return json.dumps(data, sort_keys=True, default=str)


def test_parsing_twice_gives_the_same_dag(plans: Path) -> None:
    spec = fedavg_spec(rounds=2)
    _store(plans, spec)

    assert _serialized(spec.key) == _serialized(spec.key)


def test_parsing_imports_neither_torch_nor_kubernetes(plans: Path) -> None:
    _store(plans, fedavg_spec(rounds=1))
    probe = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        "assert len(bag.dag_ids) == 1, bag.import_errors\n"
        "heavy = [m for m in ('torch', 'kubernetes') if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )

    (line,) = [x for x in result.stdout.splitlines() if x.startswith("HEAVY=")]
    assert line == "HEAVY="


def test_a_thousand_task_plan_becomes_one_dag(plans: Path) -> None:
    organizations = tuple(f"org{i}" for i in range(10))
    spec = fedavg_spec(organizations, rounds=91)
    assert len(spec.tasks) >= 1000
    _store(plans, spec)

    dag = _bag().dags[dag_id_for(spec.key)]

    assert len(dag.tasks) == len(spec.tasks)


def test_the_end_of_a_run_ends_the_plan_on_its_nodes(plans: Path) -> None:
    from airfed.operators._plan_end import end_plan_on_nodes

    spec = fedavg_spec(("a", "b"), rounds=1)
    _store(plans, spec)
    dag = _bag().dags[dag_id_for(spec.key)]

    for callbacks in (dag.on_success_callback, dag.on_failure_callback):
        listed = callbacks if isinstance(callbacks, list) else [callbacks]
        assert end_plan_on_nodes in listed
