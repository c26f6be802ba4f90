"""``airfed node start`` and ``airfed node token create|list|revoke``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from airfed.sdk.cli._apps import node_app
from airfed.sdk.cli._output import console, print_json, print_table
from airfed.sdk.network import NodeConfig, load_node_config

if TYPE_CHECKING:
    from airfed.node_api._db import Database

_token_app = typer.Typer(help="API tokens of the node's users.", no_args_is_help=True)
node_app.add_typer(_token_app, name="token")

ConfigOption = Annotated[
    Path, typer.Option("--config", help="The node's node.yaml (DIR/<org>/node.yaml).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@contextlib.contextmanager
def _node_database(config: Path) -> Iterator[tuple[NodeConfig, Database]]:
    """The node's database, migrated, for an admin command run on the node."""
    from airfed.node_api._db import Database

    node = load_node_config(config)
    db = Database(node.database_url)
    try:
        db.migrate()
        yield node, db
    finally:
        db.dispose()


@node_app.command("start")
def node_start(config: ConfigOption) -> None:
    """Serve the organization's node over HTTPS with mutual TLS."""
    from airfed.node_api.server import serve

    serve(config)


@_token_app.command("create")
def token_create(
    user: Annotated[str, typer.Argument(help="User name within the organization.")],
    config: ConfigOption,
    json_out: JsonOption = False,
) -> None:
    """Issue an API token for USER; it is printed once and stored hashed."""
    from airfed.node_api._auth import issue_token_with_id

    with _node_database(config) as (node, db):
        token_id, token = issue_token_with_id(db, user)
    identity = f"{node.organization}/{user}"
    if json_out:
        print_json({"id": token_id, "user": identity, "token": token})
        return
    console.print(f"Token {token_id} for {identity} (shown once, keep it safe):")
    console.print(token, highlight=False, soft_wrap=True)


@_token_app.command("list")
def token_list(
    config: ConfigOption,
    user: Annotated[
        str | None, typer.Option("--user", help="Only this user's tokens.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """List the node's API tokens (ids, users, dates; never the tokens)."""
    from airfed.node_api._auth import list_tokens

    with _node_database(config) as (node, db):
        tokens = list_tokens(db, user)
    for token in tokens:
        token["user"] = f"{node.organization}/{token['user']}"
    if json_out:
        print_json(tokens)
        return
    print_table(
        "API tokens",
        ["id", "user", "status", "created", "revoked"],
        [
            [t["id"], t["user"], t["status"], t["created_at"], t["revoked_at"] or ""]
            for t in tokens
        ],
    )


@_token_app.command("revoke")
def token_revoke(
    token_id: Annotated[
        int, typer.Argument(metavar="ID", help="Id from 'airfed node token list'.")
    ],
    config: ConfigOption,
    json_out: JsonOption = False,
) -> None:
    """Revoke token ID: the node refuses it from the next request on."""
    from airfed.node_api._auth import revoke_token

    with _node_database(config) as (node, db):
        token = revoke_token(db, token_id)
    token["user"] = f"{node.organization}/{token['user']}"
    if json_out:
        print_json(token)
        return
    console.print(
        f"token {token['id']} of {token['user']} revoked at {token['revoked_at']}",
        highlight=False,
    )
