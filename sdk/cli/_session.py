"""Options every data-scientist command shares, and the client they open.

``--profile DIR/<org>`` (or ``AIRFED_PROFILE``) names the organization's folder
of a network; ``--token`` (or ``AIRFED_TOKEN``, or ``profile.yaml``) makes
the caller one of its users. Plan commands also reach the orchestrator
(``--orchestrator-url``, ``--username``, ``--password``, each with an
``AIRFED_ORCHESTRATOR_*`` variable, or ``profile.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from airfed.sdk.client import Client
from airfed.sdk.errors import ConfigError
from airfed.sdk.spec import Permission, Permissions

__all__ = [
    "JsonOption",
    "OrchestratorUrlOption",
    "PasswordOption",
    "ProfileOption",
    "TokenOption",
    "UsernameOption",
    "open_client",
    "parse_permission",
    "parse_permissions",
]

ProfileOption = Annotated[
    Path | None,
    typer.Option(
        "--profile",
        envvar="AIRFED_PROFILE",
        help="Folder of your organization in the network (DIR/<org>).",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token", envvar="AIRFED_TOKEN", help="Your user token.", show_default=False
    ),
]
OrchestratorUrlOption = Annotated[
    str | None,
    typer.Option(
        "--orchestrator-url",
        envvar="AIRFED_ORCHESTRATOR_URL",
        help="URL of the Airflow api-server.",
        show_default=False,
    ),
]
UsernameOption = Annotated[
    str | None,
    typer.Option(
        "--username",
        envvar="AIRFED_ORCHESTRATOR_USERNAME",
        help="Airflow user.",
        show_default=False,
    ),
]
PasswordOption = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar="AIRFED_ORCHESTRATOR_PASSWORD",
        help="Airflow password.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def open_client(
    profile: Path | None,
    token: str | None = None,
    orchestrator_url: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Client:
    """The client for the command's profile; explains what is missing."""
    if profile is None:
        raise ConfigError(
            "no profile: pass --profile DIR/<org> (a folder made by "
            "'airfed network init') or set AIRFED_PROFILE"
        )
    return Client(
        profile,
        token=token,
        orchestrator_url=orchestrator_url,
        username=username,
        password=password,
    )


def parse_permission(value: str | None) -> Permission:
    """``public``, or ids separated by commas (``a,b,c/alice``); none = owner."""
    if value is None or not value.strip():
        return Permission()
    if value.strip() == "public":
        return Permission(public=True)
    ids = tuple(part.strip() for part in value.split(",") if part.strip())
    for item in ids:
        if item.count("/") > 1 or item.startswith("/") or item.endswith("/"):
            raise ConfigError(
                f"permission id {item!r} must name an organization (a) or a "
                "user (a/alice)"
            )
    return Permission(authorized_ids=ids)


def parse_permissions(process: str | None, download: str | None) -> Permissions:
    return Permissions(
        process=parse_permission(process), download=parse_permission(download)
    )
