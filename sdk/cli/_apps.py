"""The command groups of the ``airfed`` CLI; modules attach commands to them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="airfed",
    help="Federated learning on Apache Airflow.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _group(name: str, help_text: str) -> typer.Typer:
    group = typer.Typer(help=help_text, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


network_app = _group("network", "Create and inspect a network of organizations.")
node_app = _group("node", "Run an organization's node and manage its users.")
orchestrator_app = _group("orchestrator", "Run Airflow, the orchestrator.")
dataset_app = _group("dataset", "Register and list datasets.")
sample_app = _group("sample", "Register data samples on a node.")
function_app = _group("function", "Register and list functions.")
plan_app = _group("plan", "Build, submit and follow compute plans.")
task_app = _group("task", "Tasks of compute plans.")
model_app = _group("model", "List and download models.")
ledger_app = _group("ledger", "Read and verify the ledger.")
org_app = _group("org", "Organizations of the network.")
