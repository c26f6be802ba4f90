"""``airfed orchestrator start``: Airflow's components on this machine."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from airfed.sdk._airflow import start_orchestrator
from airfed.sdk.cli._apps import orchestrator_app
from airfed.sdk.cli._output import console, print_json


def _stop_on_sigterm(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


@contextlib.contextmanager
def _ledger_log(network: Path) -> Iterator[None]:
    """Run the network's log in this process unless it already answers."""
    from airfed.ledger.server import serve_log
    from airfed.sdk.network import load_network

    host, _, port = load_network(network).ledger_address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=1).close()
        already_running = True
    except OSError:
        already_running = False
    if already_running:
        yield
        return
    server = serve_log(network)
    console.print(f"ledger log listening on {server.address}")
    try:
        yield
    finally:
        server.stop()


@orchestrator_app.command("start")
def orchestrator_start(
    network: Annotated[
        Path, typer.Option(help="Network folder written by 'airfed network init'.")
    ],
    home: Annotated[
        Path, typer.Option(help="AIRFLOW_HOME: database, logs, plans, secrets.")
    ],
    database_url: Annotated[
        str | None,
        typer.Option(help="Airflow's database (default: SQLite in the home)."),
    ] = None,
    port: Annotated[int, typer.Option(help="Port of Airflow's api-server.")] = 8080,
    ledger: Annotated[
        bool,
        typer.Option(
            help="Also run the ledger's log (as 'airfed ledger serve' does, unless "
            "it already runs) and write every task run to it."
        ),
    ] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run Airflow's api-server, scheduler, dag-processor and triggerer."""
    stop = threading.Event()
    _stop_on_sigterm(stop)
    with (
        _ledger_log(network) if ledger else contextlib.nullcontext(),
        start_orchestrator(
            home,
            network,
            port=port,
            database_url=database_url,
            extra_environment={"AIRFLOW__AIRFED__LEDGER": "on" if ledger else "off"},
        ) as running,
    ):
        if json_out:
            print_json(
                {
                    "url": running.url,
                    "username": running.username,
                    "password": running.password,
                    "home": str(running.home),
                    "pids": {n: p.pid for n, p in running.processes.items()},
                }
            )
        else:
            console.print(f"Airflow is up at {running.url}")
            console.print(f"  login: {running.username} / {running.password}")
            console.print(f"  home:  {running.home} (logs in {running.home}/logs)")
            console.print("Press Ctrl-C to stop.")
        while not stop.wait(1.0):
            running.check_alive()
    console.print("Airflow stopped.")
