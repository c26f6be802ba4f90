"""Asset commands: ``dataset``, ``sample``, ``function``, ``model``, ``org``.

Registering writes to the profile's own node; listing and showing gather the
metadata of every node of the network. Permissions are given as ``public`` or
as ids separated by commas (``a,b,c/alice``); without them only the owner may
use the asset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from airfed.sdk.cli._apps import (
    dataset_app,
    function_app,
    model_app,
    org_app,
    sample_app,
)
from airfed.sdk.cli._output import console, print_json, print_table
from airfed.sdk.cli._session import (
    JsonOption,
    ProfileOption,
    TokenOption,
    open_client,
    parse_permission,
    parse_permissions,
)
from airfed.sdk.client import ListableKind
from airfed.sdk.errors import ConfigError

__all__ = [
    "dataset_add",
    "dataset_list",
    "dataset_show",
    "function_add",
    "function_list",
    "function_show",
    "model_download",
    "model_list",
    "org_list",
    "sample_add",
]

FUNCTION_FILE = "function.yaml"

ProcessOption = Annotated[
    str | None,
    typer.Option("--process", help="Who may process it: 'public' or ids (a,b/alice)."),
]
DownloadOption = Annotated[
    str | None,
    typer.Option(
        "--download", help="Who may download it: 'public' or ids (a,b/alice)."
    ),
]
FromLedgerOption = Annotated[
    bool,
    typer.Option(
        "--from-ledger",
        help="List what the ledger's signed entries record instead of asking "
        "the nodes.",
    ),
]
QueryOption = Annotated[
    str | None, typer.Option("--query", "-q", help="Search names and descriptions.")
]


# -- datasets and data samples ---------------------------------------------------


@dataset_app.command("add")
def dataset_add(
    name: Annotated[str, typer.Argument(help="Name of the dataset.")],
    opener: Annotated[
        Path, typer.Option(help="Python file defining load(paths) -> data.")
    ],
    description: Annotated[str, typer.Option(help="What the data is.")] = "",
    process: ProcessOption = None,
    download: DownloadOption = None,
    logs: Annotated[
        str | None,
        typer.Option("--logs", help="Who may read logs of tasks on this data."),
    ] = None,
    profile: ProfileOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Register a dataset (its opener) on your organization's node."""
    permissions = parse_permissions(process, download)
    logs_permission = parse_permission(logs)
    with open_client(profile, token) as client:
        dataset = client.register_dataset(
            name,
            opener,
            description=description,
            permissions=permissions,
            logs_permission=logs_permission,
        )
    _print_created("dataset", dataset, json_out)


@dataset_app.command("list")
def dataset_list(
    query: QueryOption = None,
    profile: ProfileOption = None,
    token: TokenOption = None,
    from_ledger: FromLedgerOption = False,
    json_out: JsonOption = False,
) -> None:
    """List the datasets of every node of the network."""
    if from_ledger:
        _list_from_ledger("dataset", query, profile, json_out)
        return
    _list("dataset", query, profile, token, json_out)


@dataset_app.command("show")
def dataset_show(
    key: Annotated[str, typer.Argument(help="Key of the dataset.")],
    profile: ProfileOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show a dataset's metadata."""
    _show("dataset", key, profile, token, json_out)


@sample_app.command("add")
def sample_add(
    dataset: Annotated[str, typer.Argument(help="Key of the dataset.")],
    folders: Annotated[
        list[Path] | None,
        typer.Argument(help="Folders to upload, one data sample each."),
    ] = None,
    on_node: Annotated[
        list[str] | None,
        typer.Option(
            "--on-node", help="Absolute path of a folder already on the node."
        ),
    ] = None,
    profile: ProfileOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Add data samples to a dataset of your organization's node."""
    with open_client(profile, token) as client:
        samples = client.add_samples(dataset, folders or [], node_paths=on_node or [])
    if json_out:
        print_json(samples)
        return
    for sample in samples:
        console.print(f"data sample {sample.get('key')} added to dataset {dataset}")


# -- functions -------------------------------------------------------------------


@function_app.command("add")
def function_add(
    folder: Annotated[Path, typer.Argument(help="Folder with the function's code.")],
    name: Annotated[str | None, typer.Option(help="Name of the function.")] = None,
    entrypoint: Annotated[
        str | None, typer.Option(help="module:callable, e.g. algo:train.")
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="identifier:kind[:multiple][:optional]; kind is dataset, "
            "datasamples or model.",
        ),
    ] = None,
    outputs: Annotated[
        list[str] | None,
        typer.Option("--output", help="identifier:kind; kind is model or performance."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="What it does.")] = None,
    process: ProcessOption = None,
    download: DownloadOption = None,
    nodes: Annotated[
        str | None,
        typer.Option(help="Register on these nodes only (a,b); default: all."),
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Key (UUID) to register it under.")
    ] = None,
    profile: ProfileOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Register a function on the nodes: its code and what it takes and gives.

    Settings missing on the command line come from FOLDER/function.yaml
    (keys name, description, entrypoint, inputs, outputs), when it exists.
    """
    defaults = _function_file(folder)
    declared_inputs = (
        [_parse_input(item) for item in inputs]
        if inputs
        else defaults.get("inputs", [])
    )
    declared_outputs = (
        [_parse_output(item) for item in outputs]
        if outputs
        else defaults.get("outputs", [])
    )
    permissions = parse_permissions(process, download)
    with open_client(profile, token) as client:
        function = client.register_function(
            folder,
            name=_setting(name, defaults, "name"),
            entrypoint=_setting(entrypoint, defaults, "entrypoint"),
            inputs=declared_inputs,
            outputs=declared_outputs,
            description=description or str(defaults.get("description", "")),
            permissions=permissions,
            nodes=[n.strip() for n in nodes.split(",") if n.strip()] if nodes else None,
            key=key,
        )
    _print_created("function", function, json_out)


@function_app.command("list")
def function_list(
    query: QueryOption = None,
    profile: ProfileOption = None,
    token: TokenOption = None,
    from_ledger: FromLedgerOption = False,
    json_out: JsonOption = False,
) -> None:
    """List the functions of every node of the network."""
    if from_ledger:
        _list_from_ledger("function", query, profile, json_out)
        return
    _list("function", query, profile, token, json_out)


@function_app.command("show")
def function_show(
    key: Annotated[str, typer.Argument(help="Key of the function.")],
    profile: ProfileOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show a function's metadata: entrypoint, inputs, outputs, permissions."""
    _show("function", key, profile, token, json_out)


# -- models and organizations ------------------------------------------------------


@model_app.command("list")
def model_list(
    plan: Annotated[
        str | None, typer.Option("--plan", help="Only models of this compute plan.")
    ] = None,
    profile: ProfileOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """List the models of every node of the network."""
    with open_client(profile, token) as client:
        models = client.list_assets("model", plan_key=plan)
    if json_out:
        print_json(models)
        return
    rows = [
        (m.get("key"), m.get("owner"), m.get("plan_key"), m.get("task_key"))
        for m in models
    ]
    print_table("Models", ("key", "node", "plan", "task"), rows)


@model_app.command("download")
def model_download(
    key: Annotated[str, typer.Argument(help="Key of the model.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="File or folder to write to.")
    ] = Path(),
    profile: ProfileOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Download a model that its permissions let you download."""
    with open_client(profile, token) as client:
        path = client.download_model(key, output)
    if json_out:
        print_json({"key": key, "path": str(path)})
        return
    console.print(f"model {key} written to {path}")


@org_app.command("list")
def org_list(
    profile: ProfileOption = None,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """List the organizations of the network."""
    with open_client(profile, token) as client:
        organizations = client.organizations()
    if json_out:
        print_json(organizations)
        return
    rows = [(o.get("id"), o.get("role"), o.get("node_url")) for o in organizations]
    print_table("Organizations", ("id", "role", "node"), rows)


# -- shared ------------------------------------------------------------------------

_LIST_COLUMNS: Mapping[str, Sequence[str]] = {
    "dataset": ("key", "name", "owner", "description"),
    "function": ("key", "name", "owner", "entrypoint", "nodes"),
}


def _list(
    kind: ListableKind,
    query: str | None,
    profile: Path | None,
    token: str | None,
    json_out: bool,
) -> None:
    with open_client(profile, token) as client:
        items = client.list_assets(kind, query=query)
    if json_out:
        print_json(items)
        return
    columns = _LIST_COLUMNS[kind]
    rows = [tuple(_cell(item.get(column)) for column in columns) for item in items]
    print_table(f"{kind.capitalize()}s", columns, rows)


def _list_from_ledger(
    kind: ListableKind, query: str | None, profile: Path | None, json_out: bool
) -> None:
    """List what the ledger's signed entries record, not what nodes answer."""
    from airfed.ledger.client import LedgerClient
    from airfed.sdk.catalog import Catalog

    with open_client(profile, None) as client:
        directory = client.profile.directory
    with LedgerClient.for_profile(directory) as ledger:
        catalog = Catalog.from_ledger(ledger)
    items = [
        dict(asset.data)
        for asset in catalog.assets(kind)
        if not query or query.lower() in asset.name.lower()
    ]
    if json_out:
        print_json(items)
        return
    columns = ("key", "name", "owner", "nodes", "ledger_index")
    rows = [tuple(_cell(item.get(column)) for column in columns) for item in items]
    print_table(f"{kind.capitalize()}s on the ledger", columns, rows)


def _show(
    kind: ListableKind,
    key: str,
    profile: Path | None,
    token: str | None,
    json_out: bool,
) -> None:
    with open_client(profile, token) as client:
        item = client.show_asset(kind, key)
    if json_out:
        print_json(item)
        return
    rows = [
        (field, value if isinstance(value, str) else json.dumps(value))
        for field, value in item.items()
    ]
    print_table(f"{kind.capitalize()} {key}", ("field", "value"), rows)


def _cell(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _print_created(kind: str, asset: Mapping[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(asset)
        return
    console.print(f"{kind} {asset.get('key')} registered ({asset.get('name')})")


def _function_file(folder: Path) -> dict[str, Any]:
    path = folder / FUNCTION_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping")
    return data


def _setting(given: str | None, defaults: Mapping[str, Any], name: str) -> str:
    value = given or defaults.get(name)
    if not value:
        raise ConfigError(f"the function needs --{name} (or {name} in {FUNCTION_FILE})")
    return str(value)


def _parse_input(text: str) -> dict[str, Any]:
    parts = text.split(":")
    flags = set(parts[2:])
    if len(parts) < 2 or not flags <= {"multiple", "optional"}:
        raise ConfigError(
            f"--input {text!r} must read identifier:kind[:multiple][:optional]"
        )
    return {
        "identifier": parts[0],
        "kind": parts[1],
        "multiple": "multiple" in flags,
        "optional": "optional" in flags,
    }


def _parse_output(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) != 2:
        raise ConfigError(f"--output {text!r} must read identifier:kind")
    return {"identifier": parts[0], "kind": parts[1]}
