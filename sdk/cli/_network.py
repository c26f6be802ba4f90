"""``airfed network init``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from airfed.sdk.cli._apps import network_app
from airfed.sdk.cli._output import console, print_json
from airfed.sdk.network import init_network


@network_app.command("init")
def network_init(
    directory: Annotated[Path, typer.Argument(help="Folder for the network.")],
    orgs: Annotated[str, typer.Option(help="Organization ids, comma-separated.")],
    host: Annotated[str, typer.Option(help="Address the nodes listen on.")] = (
        "127.0.0.1"
    ),
    base_port: Annotated[int, typer.Option(help="First port to hand out.")] = 7400,
    quorum: Annotated[
        int | None, typer.Option(help="Cosignatures that make a checkpoint final.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace existing keys.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a development CA, every organization's keys and node.yaml."""
    org_ids = [o.strip() for o in orgs.split(",") if o.strip()]
    network = init_network(
        directory,
        org_ids,
        host=host,
        base_port=base_port,
        witness_quorum=quorum,
        force=force,
    )
    if json_out:
        print_json(
            {
                "root": str(network.root),
                "organizations": [
                    {"id": o.id, "role": o.role, "node_url": o.node_url}
                    for o in network.organizations
                ],
            }
        )
        return
    console.print(f"Network written to {network.root}")
    for org in network.partners:
        console.print(f"  {org.id}: {org.node_url}  (config {network.root / org.id})")
