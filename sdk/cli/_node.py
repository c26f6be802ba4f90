"""``airfed node start`` and ``airfed node token create``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from airfed.sdk.cli._apps import node_app
from airfed.sdk.cli._output import console, print_json
from airfed.sdk.network import load_node_config

_token_app = typer.Typer(help="API tokens of the node's users.", no_args_is_help=True)
node_app.add_typer(_token_app, name="token")

ConfigOption = Annotated[
    Path, typer.Option("--config", help="The node's node.yaml (DIR/<org>/node.yaml).")
]


@node_app.command("start")
def node_start(config: ConfigOption) -> None:
    """Serve the organization's node over HTTPS with mutual TLS."""
    from airfed.node_api.server import serve

    serve(config)


@_token_app.command("create")
def token_create(
    user: Annotated[str, typer.Argument(help="User name within the organization.")],
    config: ConfigOption,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Issue an API token for USER; it is printed once and stored hashed."""
    from airfed.node_api._auth import issue_token
    from airfed.node_api._db import Database

    node = load_node_config(config)
    db = Database(node.database_url)
    try:
        db.migrate()
        token = issue_token(db, user)
    finally:
        db.dispose()
    identity = f"{node.organization}/{user}"
    if json_out:
        print_json({"user": identity, "token": token})
        return
    console.print(f"Token for {identity} (shown once, keep it safe):")
    console.print(token, highlight=False, soft_wrap=True)
