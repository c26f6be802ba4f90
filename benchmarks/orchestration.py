"""Orchestration overhead: one plan through airfed on Airflow, and in-process.

The same federated-averaging plan (train on every node, aggregate on the
first, for N rounds; a tiny model: a running sum) runs

1. through airfed: real nodes over mutual TLS, Airflow's scheduler,
   dag-processor, triggerer and api-server on the embedded default (SQLite,
   LocalExecutor), submitted through the plugin's API;
2. in-process (the limit): :func:`airfed.sdk.simulation.simulate` calls the
   same functions in rank order, with no orchestration and no nodes.

The plan runs ``--repeat`` times (3) on Airflow, compiled anew each time, and
the run of median length is reported with every run's length beside it.
Reported: seconds per round and per dependency level for both; the
overhead per level; how much of it is the nodes' own work (the slowest task
of each level, from the nodes' start and end times) and how much is
Airflow's; the time from submission to the first task running on a node.

It also measures how long the DAG factory takes to parse a plan of more than
1,000 tasks (10 organizations, 91 rounds): the whole file as the
dag-processor parses it, the one DAG a task process builds, and the DAG's
serialization.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/orchestration.py  # 3 nodes, 10 rounds
    PYTHONPATH=. .venv/bin/python benchmarks/orchestration.py \\
        --nodes 10 --rounds 30 --repeat 1
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from airfed.ledger.server import serve_log
from airfed.sdk._airflow import airflow_config_file, start_orchestrator
from airfed.sdk._ledger import register_plan
from airfed.sdk.network import client_ssl_context, init_network, load_network
from airfed.sdk.node_client import NodeClient
from airfed.sdk.orchestrator import wait_for_plan
from airfed.sdk.simulation import simulate
from airfed.sdk.spec import PlanSpec
from tests.e2e.federation import Federation, register_federation
from tests.support.nodes import start_nodes
from tests.support.ports import free_port, free_port_block

RESULTS = Path(__file__).parent / "results" / "orchestration.json"
TUNED = {
    "core": ["executor", "parallelism"],
    "scheduler": ["scheduler_idle_sleep_time", "scheduler_heartbeat_sec"],
    "dag_processor": ["parsing_processes", "min_file_process_interval"],
    "airfed": ["node_poll_interval", "wait_on_worker", "finish_in_triggerer"],
}
# How a task waits for its node, and the settings that choose it.
MODES = {
    "worker": {},
    "triggerer": {"AIRFLOW__AIRFED__WAIT_ON_WORKER": "0"},
    "finish-in-triggerer": {
        "AIRFLOW__AIRFED__WAIT_ON_WORKER": "0",
        "AIRFLOW__AIRFED__FINISH_IN_TRIGGERER": "True",
    },
}


def _tuned_settings() -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(airflow_config_file())
    return {
        f"[{section}] {key}": parser.get(section, key)
        for section, keys in TUNED.items()
        for key in keys
    }


def _time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _node_tasks(
    spec: PlanSpec, nodes: dict[str, Any], network_root: Path
) -> dict[str, dict[str, Any]]:
    context = client_ssl_context(network_root / "orchestrator")
    found: dict[str, dict[str, Any]] = {}
    for node in nodes.values():
        with NodeClient(node.url, context) as client:
            for task in client.list_tasks(spec.key):
                found[task["key"]] = task
    return found


def _critical_node_seconds(spec: PlanSpec, tasks: dict[str, dict[str, Any]]) -> float:
    """Sum over dependency levels of the slowest node task of the level."""
    by_level: dict[int, float] = {}
    for task in spec.tasks:
        record = tasks[task.key]
        seconds = (
            _time(record["ended_at"]) - _time(record["started_at"])
        ).total_seconds()
        by_level[task.rank] = max(by_level.get(task.rank, 0.0), seconds)
    return sum(by_level.values())


_PHASES = (
    ("scheduler", "a parent's end to this task scheduled"),
    ("queue", "scheduled to queued"),
    ("worker_start", "queued to running on a worker"),
    ("post", "running to the node's POST /tasks"),
    ("node_claim", "stored on the node to claimed by its dispatcher"),
    ("node_run", "staged, executed, stored and signed on the node"),
    ("finish", "done on the node to done in Airflow"),
)


def _run_end(spec: PlanSpec, home: Path) -> dt.datetime:
    """When Airflow ended the plan's DAG run."""
    import sqlite3

    from airfed.sdk.orchestrator import dag_id_for

    with contextlib.closing(sqlite3.connect(home / "airflow.db")) as db:
        (ended,) = db.execute(
            "SELECT end_date FROM dag_run WHERE dag_id = ?", (dag_id_for(spec.key),)
        ).fetchone()
    return _time(ended)


def _phases(
    spec: PlanSpec, home: Path, tasks: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """Median seconds of each phase of a task's life, from both sides' clocks.

    Airflow's side comes from its metadata database (SQLite), the node's from
    its task records: together they say where a dependency level's time goes.
    """
    import sqlite3
    import statistics

    from airfed.sdk.orchestrator import dag_id_for, task_id_for

    with contextlib.closing(sqlite3.connect(home / "airflow.db")) as db:
        rows = db.execute(
            "SELECT task_id, scheduled_dttm, queued_dttm, start_date, end_date"
            " FROM task_instance WHERE dag_id = ?",
            (dag_id_for(spec.key),),
        ).fetchall()
    airflow = {row[0]: [_time(v) if v else None for v in row[1:]] for row in rows}
    ended = {task.key: airflow[task_id_for(task)][3] for task in spec.tasks}
    samples: dict[str, list[float]] = {name: [] for name, _ in _PHASES}
    for task in spec.tasks:
        scheduled, queued, started, finished = airflow[task_id_for(task)]
        node = tasks[task.key]
        parents = [ended[p] for p in task.parent_keys if ended.get(p)]
        marks = [
            max(parents) if parents else None,
            scheduled,
            queued,
            started,
            _time(node["created_at"]),
            _time(node["started_at"]),
            _time(node["ended_at"]),
            finished,
        ]
        for (name, _), begin, end in zip(_PHASES, marks, marks[1:], strict=False):
            if begin is not None and end is not None:
                samples[name].append((end - begin).total_seconds())
    return {
        name: round(statistics.median(values), 3)
        for name, values in samples.items()
        if values
    }


def _cpu_seconds(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each component, and by what it started.

    ``NAME`` is the process's own time; ``NAME children`` its live
    descendants' and the time of the descendants it already reaped (task
    processes under the scheduler, sandboxed functions under a node).
    """
    import psutil

    used: dict[str, float] = {}
    for name, pid in roots.items():
        own = children = 0.0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            times = root.cpu_times()
            own = times.user + times.system
            children = times.children_user + times.children_system
            for process in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    children += times.user + times.system
                    children += times.children_user + times.children_system
        used[name], used[f"{name} children"] = own, children
    return used


def _component_pids(orchestrator: Any, nodes: dict[str, Any]) -> dict[str, int]:
    pids = {name: p.pid for name, p in orchestrator.processes.items()}
    pids.update({f"node {org}": node.pid for org, node in nodes.items()})
    return pids


def _run_on_airflow(
    federation: Federation,
    spec: PlanSpec,
    orchestrator: Any,
    nodes: dict[str, Any],
    network_root: Path,
    *,
    ledger: bool = False,
) -> dict[str, Any]:
    pids = _component_pids(orchestrator, nodes)
    cpu_before = _cpu_seconds(pids)
    own_before = time.process_time()
    with orchestrator.client() as client:
        submitted_at = dt.datetime.now(dt.UTC)
        start = time.perf_counter()
        if ledger:
            # As the SDK does: the creator registers the plan, then submits.
            register_plan(network_root / spec.creator, spec)
        client.submit_plan(spec)
        submit_seconds = time.perf_counter() - start
        # As often as `airfed plan wait` asks; the plan's end comes from
        # Airflow's record of the run, so polling adds no rounding.
        plan = wait_for_plan(client, spec.key, timeout=7200, poll_interval=1.0)
    cpu_after = _cpu_seconds(pids)
    # This process runs the ledger's log and the relay when the ledger is on.
    cpu_after["benchmark process"] = time.process_time() - own_before
    cpu_before["benchmark process"] = 0.0
    ended = _run_end(spec, orchestrator.home)
    total = (ended - submitted_at).total_seconds()
    if plan["status"] != "success":
        raise SystemExit(f"plan ended {plan['status']}: {plan}")
    tasks = _node_tasks(spec, nodes, network_root)
    first_start = min(_time(t["started_at"]) for t in tasks.values())
    cpu = {
        name: round(cpu_after[name] - cpu_before[name], 2)
        for name in cpu_after
        if cpu_after[name] - cpu_before[name] >= 0.01
    }
    result = {
        "median_phase_seconds": _phases(spec, orchestrator.home, tasks),
        "cpu_seconds_by_component": cpu,
        "seconds": round(total, 3),
        "submit_call_seconds": round(submit_seconds, 3),
        "submit_to_first_task_running_seconds": round(
            (first_start - submitted_at).total_seconds(), 3
        ),
        "node_critical_path_seconds": round(_critical_node_seconds(spec, tasks), 3),
    }
    if ledger:
        result["ledger_task_status_entries"] = _ledger_entries(spec, network_root)
    return result


def _ledger_entries(spec: PlanSpec, network_root: Path, timeout: float = 60) -> int:
    """The orchestrator's task-status entries on the log, once every task has both.

    Counted after the plan's end, so it is not in the timing: every task
    must have its ``executing`` and ``done`` entries, or the run fails.
    """
    from airfed.ledger.client import LedgerClient
    from airfed.ledger.entries import EntryKind, parse_entry

    network = load_network(network_root)
    deadline = time.monotonic() + timeout
    count = 0
    with LedgerClient(network.ledger_address, network_root / spec.creator) as client:
        for task in spec.tasks:
            while True:
                statuses = [
                    entry.body["status"]
                    for entry in (parse_entry(d) for _, d in client.find(task.key))
                    if entry.kind is EntryKind.TASK_STATUS
                    and entry.author == "orchestrator"
                ]
                if {"executing", "done"} <= set(statuses):
                    count += len(statuses)
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"task {task.key} has no done entry on the log")
                time.sleep(0.2)
    return count


def _run_in_process(federation: Federation, spec: PlanSpec) -> dict[str, Any]:
    start = time.perf_counter()
    result = simulate(spec, federation.local)
    seconds = time.perf_counter() - start
    if result.status != "done":
        raise SystemExit(f"in-process run failed: {result.error}")
    return {"seconds": round(seconds, 3)}


_PARSE_PROBE = """
import json, os, sys, time
start = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
from airflow.serialization.serialized_objects import DagSerialization
imported = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parsed = time.perf_counter()
(dag,) = bag.dags.values()
DagSerialization.to_dict(dag)
serialized = time.perf_counter()
print("PARSE=" + json.dumps({
    "import_airflow_seconds": round(imported - start, 3),
    "parse_seconds": round(parsed - imported, 3),
    "serialize_seconds": round(serialized - parsed, 3),
    "tasks": len(dag.tasks),
    "heavy_modules": [m for m in ("torch", "kubernetes") if m in sys.modules],
}))
"""


def measure_parse(workdir: Path) -> dict[str, Any]:
    """Parse time of a plan of more than 1,000 tasks, in fresh processes."""
    import subprocess
    import sys

    from airfed.sdk.orchestrator import dag_id_for, task_id_for
    from tests.support.airflow import REPO_ROOT, fedavg_spec

    spec = fedavg_spec(tuple(f"org{i}" for i in range(10)), rounds=91)
    plans = workdir / "plans"
    plans.mkdir(parents=True)
    (plans / f"{spec.key}.json").write_text(spec.to_json())
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(workdir / "home"),
        "AIRFLOW_CONFIG": str(REPO_ROOT / "airflow.cfg"),
        "AIRFLOW__AIRFED__PLANS_FOLDER": str(plans),
    }
    results: dict[str, Any] = {}
    for case, dag_id in (
        ("dag_processor", None),
        ("task_process", dag_id_for(spec.key)),
    ):
        case_env = dict(env)
        if dag_id is not None:
            # A task process names its DAG and its task (here the last one).
            case_env["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = dag_id
            case_env["_AIRFLOW_PARSING_CONTEXT_TASK_ID"] = task_id_for(spec.tasks[-1])
        output = subprocess.run(
            [sys.executable, "-c", _PARSE_PROBE, str(REPO_ROOT / "dags")],
            env=case_env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout
        line = next(x for x in output.splitlines() if x.startswith("PARSE="))
        results[case] = json.loads(line.removeprefix("PARSE="))
    return results


def run(
    nodes_count: int,
    rounds: int,
    workdir: Path,
    *,
    mode: str,
    ledger: bool,
    repeat: int = 1,
) -> dict[str, Any]:
    orgs = [f"org{i}" for i in range(nodes_count)]
    network = init_network(
        workdir / "net", orgs, base_port=free_port_block(2 * nodes_count + 1)
    )
    environment = dict(MODES[mode])
    if ledger:
        environment["AIRFLOW__AIRFED__LEDGER"] = "on"
        os.environ["AIRFED_NODE_LEDGER"] = "on"
    with contextlib.ExitStack() as stack:
        if ledger:
            stack.callback(serve_log(network.root).stop)
        nodes = stack.enter_context(start_nodes(network, orgs))
        orchestrator = stack.enter_context(
            start_orchestrator(
                workdir / "airflow",
                network.root,
                port=free_port(),
                extra_environment=environment,
            )
        )
        federation = register_federation(nodes, network.root, workdir / "assets")
        # The first plan after start shows what a user waits for the first
        # task; it also warms the components up (imports, first parse).
        first = _run_on_airflow(
            federation,
            federation.plan(1),
            orchestrator,
            nodes,
            network.root,
            ledger=ledger,
        )
        # The same plan, compiled anew each time; the run of median length
        # is reported, with every run's length beside it.
        runs = []
        for _ in range(repeat):
            spec = federation.plan(rounds)
            runs.append(
                _run_on_airflow(
                    federation, spec, orchestrator, nodes, network.root, ledger=ledger
                )
            )
    airflow = sorted(runs, key=lambda r: float(r["seconds"]))[len(runs) // 2]
    airflow["every_run_seconds"] = [r["seconds"] for r in runs]
    limit = _run_in_process(federation, spec)
    levels = max(task.rank for task in spec.tasks) + 1
    overhead = airflow["seconds"] - limit["seconds"]
    airflow_only = airflow["seconds"] - airflow["node_critical_path_seconds"]
    return {
        "mode": mode,
        "ledger": ledger,
        "first_plan_submit_to_first_task_running_seconds": first[
            "submit_to_first_task_running_seconds"
        ],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "nodes": nodes_count,
        "rounds": rounds,
        "tasks": len(spec.tasks),
        "dependency_levels": levels,
        "airfed_on_airflow": {
            **airflow,
            "seconds_per_round": round(airflow["seconds"] / rounds, 3),
            "seconds_per_level": round(airflow["seconds"] / levels, 3),
        },
        "in_process_limit": {
            **limit,
            "seconds_per_round": round(limit["seconds"] / rounds, 3),
            "seconds_per_level": round(limit["seconds"] / levels, 3),
        },
        "overhead_per_level_seconds": round(overhead / levels, 3),
        # Once the plan runs: submission and the DAG's first parse excluded.
        "overhead_per_level_after_first_task_seconds": round(
            (overhead - airflow["submit_to_first_task_running_seconds"]) / levels, 3
        ),
        "airflow_overhead_per_level_seconds": round(airflow_only / levels, 3),
        "node_overhead_per_level_seconds": round(
            (airflow["node_critical_path_seconds"] - limit["seconds"]) / levels, 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="Runs of the plan; the one of median length is reported.",
    )
    parser.add_argument(
        "--parse-only", action="store_true", help="Measure DAG parsing only."
    )
    parser.add_argument(
        "--ledger",
        action="store_true",
        help=(
            "Run with the ledger on, as `airfed orchestrator start` and the "
            "quickstart do: plans registered, every task run written to the log."
        ),
    )
    parser.add_argument(
        "--mode",
        choices=sorted(MODES),
        default="worker",
        help=(
            "worker: a task waits for its node on a worker for up to [airfed] "
            "wait_on_worker seconds, then defers (the default); triggerer: "
            "every task starts in the triggerer; finish-in-triggerer: and ends "
            "there too."
        ),
    )
    args = parser.parse_args()

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="airfed-bench-") as tmp:
        results["parse_1000_task_plan"] = measure_parse(Path(tmp) / "parse")
        measured = (
            None
            if args.parse_only
            else run(
                args.nodes,
                args.rounds,
                Path(tmp),
                mode=args.mode,
                ledger=args.ledger,
                repeat=args.repeat,
            )
        )
    if measured is not None:
        mode = args.mode.replace("-", "_")
        name = f"{args.nodes}_nodes_{args.rounds}_rounds_{mode}"
        if args.ledger:
            name += "_ledger"
        results.setdefault("runs", {})[name] = {
            **measured,
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    results["command"] = (
        "PYTHONPATH=. python benchmarks/orchestration.py --nodes N --rounds R"
    )
    results["machine"] = {"cpus": _cpus(), "python": platform.python_version()}
    results["airflow_settings_tuned"] = _tuned_settings()
    results["target_overhead_per_level_seconds"] = 0.5
    results["design"] = (
        "By default (mode worker) a task posts itself to its node from a worker "
        "and polls it for up to [airfed] wait_on_worker seconds; a task that "
        "ends by then ends there, a longer one defers to the triggerer and "
        "resumes on a worker when its node is done. Mode triggerer starts every "
        "task in the triggerer (start_from_trigger); finish-in-triggerer also "
        "ends it there, without listeners."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(measured or results["parse_1000_task_plan"], indent=2))


def _cpus() -> int:
    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
