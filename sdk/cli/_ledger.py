"""``airfed ledger serve|relay|witness|verify|show|prove``."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from airfed.ledger.audit import audit_store
from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import parse_entry
from airfed.ledger.errors import EntryError, LedgerError
from airfed.ledger.evidence import prove_entry
from airfed.ledger.server import serve_log, serve_replica
from airfed.ledger.store import LedgerStore, StoredEntry
from airfed.ledger.witness import Witness
from airfed.sdk.cli._apps import ledger_app
from airfed.sdk.cli._output import console, err_console, print_json, print_table
from airfed.sdk.network import ORCHESTRATOR_ID, load_network

NetworkOption = Annotated[
    Path, typer.Option("--network", help="The network folder (holds network.yaml).")
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="The log's database; default DIR/orchestrator/ledger.db.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _log_url(network_dir: Path, database_url: str | None) -> str:
    if database_url:
        return database_url
    path = Path(network_dir).resolve() / ORCHESTRATOR_ID / "ledger.db"
    if not path.exists():
        raise LedgerError(
            f"{path} does not exist; pass --database-url, or run "
            "'airfed ledger serve' first"
        )
    return f"sqlite:///{path}"


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(1.0):
        pass


@ledger_app.command("serve")
def ledger_serve(
    network: NetworkOption,
    database_url: DatabaseOption = None,
    address: Annotated[
        str | None, typer.Option(help="host:port; default from network.yaml.")
    ] = None,
) -> None:
    """Run the network's log: appends, checkpoints and proofs over gRPC."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = serve_log(network, database_url, address=address)
    err_console.print(f"ledger log listening on {server.address}")
    try:
        _wait_for_signal()
    finally:
        server.stop()


@ledger_app.command("relay")
def ledger_relay(
    network: NetworkOption,
    socket_path: Annotated[
        Path,
        typer.Option(
            "--socket",
            help="Where to listen: the path set as Airflow's [airfed] ledger_relay.",
        ),
    ],
    address: Annotated[
        str | None, typer.Option(help="The log's host:port; default from network.yaml.")
    ] = None,
) -> None:
    """Sign and send the task processes' ledger entries over one channel.

    Run it beside Airflow's workers (on the scheduler with LocalExecutor);
    'airfed orchestrator start' runs one of its own.
    """
    from airfed.sdk._ledger_relay import LedgerRelay

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    profile = Path(network).resolve() / ORCHESTRATOR_ID
    if not (profile / "identity.key").is_file():
        raise LedgerError(
            f"{profile / 'identity.key'} does not exist; the relay signs with the "
            "orchestrator's identity key"
        )
    relay = LedgerRelay(profile, socket_path, address=address)
    err_console.print(f"ledger relay listening on {relay.socket_path}")
    try:
        _wait_for_signal()
    finally:
        relay.stop()


@ledger_app.command("witness")
def ledger_witness(
    profile: Annotated[
        Path, typer.Option(help="The organization's profile DIR/<org>.")
    ],
    database_url: Annotated[
        str | None, typer.Option(help="The replica's database.")
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between syncs.")] = 1.0,
    once: Annotated[bool, typer.Option(help="Sync once and exit.")] = False,
    serve: Annotated[
        bool,
        typer.Option(
            help="Serve the replica read-only on the organization's "
            "ledger address from network.yaml."
        ),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Replicate the log, check it and cosign its checkpoints."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with LedgerClient.for_profile(profile) as client:
        witness = Witness(profile, client, database_url=database_url)
        try:
            if once:
                result = witness.sync()
                if json_out:
                    print_json({**witness.health(), "cosigned": result.cosigned})
                else:
                    console.print(
                        f"replica at size {result.size}; "
                        f"{'cosigned' if result.cosigned else 'already cosigned'}"
                    )
                return
            replica = serve_replica(witness) if serve else None
            stop = threading.Event()
            runner = threading.Thread(target=witness.run, args=(stop, interval))
            runner.start()
            try:
                _wait_for_signal()
            finally:
                stop.set()
                runner.join()
                if replica is not None:
                    replica.stop()
        finally:
            witness.close()


@ledger_app.command("verify")
def ledger_verify(
    network: NetworkOption,
    database_url: DatabaseOption = None,
    json_out: JsonOption = False,
) -> None:
    """Replay the whole log: signatures, tree, checkpoints, consistency."""
    net = load_network(network)
    store = LedgerStore(_log_url(network, database_url))
    try:
        report = audit_store(store, net)
    finally:
        store.close()
    if json_out:
        print_json(report.to_json())
    else:
        rows = [
            ("entries", report.entries, _counts(report.kinds)),
            ("authors", len(report.authors), _counts(report.authors)),
            ("checkpoints", report.checkpoints, f"{report.final_checkpoints} final"),
            ("cosignatures", report.cosignatures, ""),
            ("problems", len(report.problems), "; ".join(report.problems[:3])),
        ]
        print_table("ledger verification", ["what", "count", "detail"], rows)
    if not report.ok:
        where = (
            f"first bad entry: {report.first_bad_entry}; "
            if report.first_bad_entry is not None
            else ""
        )
        raise LedgerError(f"the ledger does not verify: {where}{report.problems[0]}")
    if not json_out:
        console.print("the ledger verifies")


def _counts(counter: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counter.items()))


def _entry_row(stored: StoredEntry) -> dict[str, Any]:
    try:
        entry = parse_entry(stored.data, canonical=False)
        time = entry.time
    except EntryError:
        time = ""
    return {
        "index": stored.index,
        "time": time,
        "kind": stored.kind,
        "author": stored.author,
        "key": stored.key,
        "leaf_hash": stored.leaf_hash.hex(),
    }


@ledger_app.command("show")
def ledger_show(
    network: NetworkOption,
    database_url: DatabaseOption = None,
    limit: Annotated[int, typer.Option(help="How many recent entries.")] = 20,
    key: Annotated[str | None, typer.Option(help="Only entries about KEY.")] = None,
    json_out: JsonOption = False,
) -> None:
    """The most recent ledger entries (or those about one key)."""
    store = LedgerStore(_log_url(network, database_url))
    try:
        rows = store.entries_by_key(key, limit) if key else store.latest_entries(limit)
        checkpoint = store.checkpoint()
    finally:
        store.close()
    shown = [_entry_row(r) for r in rows]
    if json_out:
        print_json(
            {"entries": shown, "checkpoint": checkpoint.text() if checkpoint else None}
        )
        return
    size = checkpoint.checkpoint.size if checkpoint else 0
    print_table(
        f"ledger entries (log size {size})",
        ["index", "time", "kind", "author", "key"],
        [(r["index"], r["time"], r["kind"], r["author"], r["key"]) for r in shown],
    )


@ledger_app.command("prove")
def ledger_prove(
    key: Annotated[str, typer.Argument(help="Asset, plan, task or model key.")],
    profile: Annotated[
        Path, typer.Option(help="Your organization's profile DIR/<org>.")
    ],
    any_checkpoint: Annotated[
        bool,
        typer.Option(help="Accept the latest checkpoint even if not final."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """The inclusion proof of the latest entry about KEY, checked locally."""
    with LedgerClient.for_profile(profile) as client:
        evidence = prove_entry(client, key, final_only=not any_checkpoint)
    if json_out:
        print_json(evidence.to_json())
        return
    data = evidence.to_json()
    print_table(
        f"ledger proof for {key}",
        ["field", "value"],
        [
            ("entry", f"{data['index']} ({data['kind']})"),
            ("leaf hash", data["leaf_hash"]),
            ("checkpoint size", data["tree_size"]),
            ("root", data["root"]),
            ("cosigned by", ", ".join(data["cosigners"]) or "nobody yet"),
            ("final", data["final"]),
            ("proof", "\n".join(data["proof"]) or "(empty: a one-entry tree)"),
        ],
    )
    console.print("the inclusion proof verifies")
