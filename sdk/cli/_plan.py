"""Compute plan commands: ``plan submit|list|show|wait|cancel|perf``, ``task``.

``plan submit FILE`` takes a plan description (YAML or JSON, see
:func:`airfed.sdk.plan.builder_from_description`) or a compiled plan spec
(JSON with ``schema_version``); either is checked against the network's
catalog before anything is submitted, and submitted in one piece.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from airfed.sdk.cli._apps import plan_app, task_app
from airfed.sdk.cli._output import console, print_json, print_table
from airfed.sdk.cli._session import (
    JsonOption,
    OrchestratorUrlOption,
    PasswordOption,
    ProfileOption,
    TokenOption,
    UsernameOption,
    open_client,
)
from airfed.sdk.client import Client, PlanProgress
from airfed.sdk.errors import AirfedError, ConfigError
from airfed.sdk.performance import PerformanceTable, compare_models
from airfed.sdk.plan import ComputePlanBuilder, builder_from_description
from airfed.sdk.spec import PlanSpec, parse_plan_spec

__all__ = [
    "plan_cancel",
    "plan_list",
    "plan_perf",
    "plan_show",
    "plan_submit",
    "plan_wait",
    "read_plan_file",
    "task_list",
    "task_logs",
]

PlanKey = Annotated[str, typer.Argument(help="Key of the compute plan.")]
TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", help="Give up waiting after this many seconds."),
]


class _Session:
    """The client options every plan command takes, gathered once."""

    def __init__(
        self,
        profile: Path | None,
        token: str | None,
        orchestrator_url: str | None,
        username: str | None,
        password: str | None,
    ) -> None:
        self.args = (profile, token, orchestrator_url, username, password)

    def client(self) -> Client:
        return open_client(*self.args)


@plan_app.command("submit")
def plan_submit(
    file: Annotated[Path, typer.Argument(help="Plan description or plan spec.")],
    wait: Annotated[bool, typer.Option(help="Wait until the plan ends.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and print the spec only.")
    ] = False,
    timeout: TimeoutOption = None,
    profile: ProfileOption = None,
    token: TokenOption = None,
    orchestrator_url: OrchestratorUrlOption = None,
    username: UsernameOption = None,
    password: PasswordOption = None,
    json_out: JsonOption = False,
) -> None:
    """Check a compute plan against the network and submit it to Airflow."""
    session = _Session(profile, token, orchestrator_url, username, password)
    with session.client() as client:
        plan = read_plan_file(file, client.organization)
        if dry_run:
            spec = client.compile(plan)
            print_json(spec.model_dump(mode="json"))
            return
        answer = client.submit(plan)
        plan_key = str(answer.get("plan_key"))
        if not json_out:
            console.print(f"plan {plan_key} submitted (DAG {answer.get('dag_id')})")
        if wait:
            _wait(client, plan_key, timeout, json_out)
        elif json_out:
            print_json(answer)


@plan_app.command("list")
def plan_list(
    profile: ProfileOption = None,
    token: TokenOption = None,
    orchestrator_url: OrchestratorUrlOption = None,
    username: UsernameOption = None,
    password: PasswordOption = None,
    json_out: JsonOption = False,
) -> None:
    """List the compute plans submitted to the orchestrator."""
    session = _Session(profile, token, orchestrator_url, username, password)
    with session.client() as client:
        plans = client.list_plans()
    if json_out:
        print_json(plans)
        return
    rows = [
        (p.get("plan_key") or p.get("key"), p.get("name"), p.get("status"))
        for p in plans
    ]
    print_table("Compute plans", ("key", "name", "status"), rows)


@plan_app.command("show")
def plan_show(
    plan_key: PlanKey,
    profile: ProfileOption = None,
    token: TokenOption = None,
    orchestrator_url: OrchestratorUrlOption = None,
    username: UsernameOption = None,
    password: PasswordOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show a compute plan's status and its tasks' states."""
    session = _Session(profile, token, orchestrator_url, username, password)
    with session.client() as client:
        progress = client.progress(plan_key)
    if json_out:
        print_json(progress.status)
        return
    console.print(f"plan {plan_key}: {progress.state}")
    _print_rounds(progress)


@plan_app.command("wait")
def plan_wait(
    plan_key: PlanKey,
    timeout: TimeoutOption = None,
    profile: ProfileOption = None,
    token: TokenOption = None,
    orchestrator_url: OrchestratorUrlOption = None,
    username: UsernameOption = None,
    password: PasswordOption = None,
    json_out: JsonOption = False,
) -> None:
    """Follow a compute plan until it ends; fails unless it ends done."""
    session = _Session(profile, token, orchestrator_url, username, password)
    with session.client() as client:
        _wait(client, plan_key, timeout, json_out)


@plan_app.command("cancel")
def plan_cancel(
    plan_key: PlanKey,
    profile: ProfileOption = None,
    token: TokenOption = None,
    orchestrator_url: OrchestratorUrlOption = None,
    username: UsernameOption = None,
    password: PasswordOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stop a compute plan: its DAG run and the node tasks still running."""
    session = _Session(profile, token, orchestrator_url, username, password)
    with session.client() as client:
        answer = client.cancel(plan_key)
    if json_out:
        print_json(answer)
        return
    console.print(f"plan {plan_key} canceled")


@plan_app.command("perf")
def plan_perf(
    plan_key: PlanKey,
    profile: ProfileOption = None,
    token: TokenOption = None,
    orchestrator_url: OrchestratorUrlOption = None,
    username: UsernameOption = None,
    password: PasswordOption = None,
    json_out: JsonOption = False,
) -> None:
    """Print the metric per round: federated model and local-only models."""
    session = _Session(profile, token, orchestrator_url, username, password)
    with session.client() as client:
        table = client.performance_table(plan_key)
    if json_out:
        print_json({"plan_key": plan_key, "performances": table.to_json()})
        return
    if not table.rows:
        console.print(f"plan {plan_key} has recorded no performance yet")
        return
    _print_performance_table(plan_key, table)


@plan_app.command("compare")
def plan_compare(
    plan_key: PlanKey,
    profile: ProfileOption = None,
    token: TokenOption = None,
    orchestrator_url: OrchestratorUrlOption = None,
    username: UsernameOption = None,
    password: PasswordOption = None,
    json_out: JsonOption = False,
) -> None:
    """Compare the federated model with each organization's local-only model."""
    session = _Session(profile, token, orchestrator_url, username, password)
    with session.client() as client:
        comparisons = compare_models(client.performance_table(plan_key))
    if json_out:
        print_json(
            {"plan_key": plan_key, "comparisons": [c.to_json() for c in comparisons]}
        )
        return
    if not comparisons:
        console.print(f"plan {plan_key} has no performance of its federated model yet")
        return
    for comparison in comparisons:
        rows = [("federated", f"{comparison.federated:.4f}", "")]
        for org, value in sorted(comparison.local.items()):
            delta = comparison.federated - value
            rows.append((f"local {org}", f"{value:.4f}", f"{delta:+.4f}"))
        if comparison.local_mean is not None:
            mean = comparison.local_mean
            rows.append(
                ("local mean", f"{mean:.4f}", f"{comparison.federated - mean:+.4f}")
            )
        print_table(
            f"{comparison.metric} of plan {plan_key}, round {comparison.round}",
            ("model", comparison.metric, "federated minus it"),
            rows,
        )


@task_app.command("list")
def task_list(
    plan_key: PlanKey,
    profile: ProfileOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """List the tasks of a compute plan as their nodes report them."""
    with open_client(profile, token) as client:
        tasks = client.list_tasks(plan_key)
    if json_out:
        print_json(tasks)
        return
    rows = [
        (t.get("key"), t.get("worker"), t.get("status"), _one_line(t.get("error")))
        for t in tasks
    ]
    print_table(f"Tasks of plan {plan_key}", ("key", "node", "status", "error"), rows)


@task_app.command("logs")
def task_logs(
    task_key: Annotated[str, typer.Argument(help="Key of the task.")],
    worker: Annotated[
        str | None, typer.Option(help="Organization whose node ran the task.")
    ] = None,
    profile: ProfileOption = None,
    token: TokenOption = None,
) -> None:
    """Print a task's log (only under the dataset's logs permission)."""
    with open_client(profile, token) as client:
        text = client.task_logs(task_key, worker)
    typer.echo(text, nl=not text.endswith("\n"))


# -- reading plan files ------------------------------------------------------------


def read_plan_file(path: Path, creator: str) -> ComputePlanBuilder | PlanSpec:
    """A plan description (YAML/JSON) as a builder, or a compiled plan spec."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read plan file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError(
            f"plan file {path} is neither YAML nor JSON: {problem}"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"plan file {path} must hold a mapping")
    if "schema_version" in data:
        return parse_plan_spec(json.loads(json.dumps(data)))
    return builder_from_description(data, creator=creator)


# -- printing ----------------------------------------------------------------------


def _wait(client: Client, plan_key: str, timeout: float | None, json_out: bool) -> None:
    if json_out:
        status = client.wait(plan_key, timeout=timeout)
        print_json(status)
    else:
        status = _wait_with_progress(client, plan_key, timeout)
    state = str(status.get("status"))
    if state not in ("success", "done"):
        raise AirfedError(
            f"plan {plan_key} ended {state}; see 'airfed task list {plan_key}' and "
            "'airfed task logs TASK'"
        )


def _wait_with_progress(
    client: Client, plan_key: str, timeout: float | None
) -> dict[str, Any]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        line = bar.add_task(f"plan {plan_key}", total=None, detail="")

        def show(status: dict[str, Any]) -> None:
            progress = client.progress(plan_key, status)
            bar.update(
                line,
                total=progress.total or None,
                completed=progress.done,
                detail=progress.summary(),
            )

        status: dict[str, Any] = client.wait(
            plan_key, timeout=timeout, on_progress=show
        )
    console.print(f"plan {plan_key} ended {status.get('status')}")
    return status


def _print_rounds(progress: PlanProgress) -> None:
    rows = [
        (
            round_,
            counts.get("done", 0),
            counts.get("executing", 0),
            counts.get("waiting", 0),
            counts.get("failed", 0) + counts.get("canceled", 0),
            sum(counts.values()),
        )
        for round_, counts in sorted(progress.by_round.items())
    ]
    print_table(
        "Tasks per round",
        ("round", "done", "executing", "waiting", "failed/canceled", "total"),
        rows,
    )


def _print_performance_table(plan_key: str, table: PerformanceTable) -> None:
    headers = ["round", *(f"{model} {metric}" for model, metric in table.columns)]
    rows = [
        (round_, *("" if v is None else f"{v:.4f}" for v in values))
        for round_, values in table.rows
    ]
    print_table(f"Performances of plan {plan_key}", headers, rows)


def _one_line(text: Any) -> str:
    if not text:
        return ""
    first = str(text).strip().splitlines()
    return first[-1][:120] if first else ""
