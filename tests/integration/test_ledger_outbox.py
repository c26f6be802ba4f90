"""A node's ledger entries survive a stop while the log is unreachable.

Real processes: the node runs as ``airfed node start`` and the log as the
gRPC service over mutual TLS. The node registers a dataset while no log
listens, is stopped, and is started again once the log is up: the entry,
kept in the node's database, arrives.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import sqlalchemy as sa
import yaml

from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import EntryKind, parse_entry
from airfed.ledger.server import serve_log
from airfed.sdk.network import Network
from tests.support.ledger import wait_for
from tests.support.nodes import start_node

_LEDGER_ON = {"AIRFED_NODE_LEDGER": "on"}
_PUBLIC = {"public": True, "authorized_ids": []}


def _outbox(database_url: str) -> list[tuple[str, str, str | None]]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT kind, subject_key, problem FROM ledger_outbox")
            )
            return [(r.kind, r.subject_key, r.problem) for r in rows]
    finally:
        engine.dispose()


def _witness_off(network: Network, org: str) -> Path:
    """The node's config, without the witness (it has no log to follow here)."""
    path = network.root / org / "node.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(ledger_witness="off")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_entries_made_while_the_log_is_down_arrive_after_a_restart(
    network: Network, database_url: str, tmp_path: Path
) -> None:
    config = _witness_off(network, "b")
    opener = tmp_path / "opener.py"
    opener.write_text(
        textwrap.dedent(
            """
            def load(paths):
                return paths
            """
        )
    )

    with (
        start_node(config, database_url, env=_LEDGER_ON) as node,
        node.client(network.root / "b") as client,
    ):
        dataset = client.create_dataset(
            {
                "name": "kept while the log is down",
                "description": "",
                "permissions": {"process": _PUBLIC, "download": _PUBLIC},
                "logs_permission": _PUBLIC,
            },
            opener,
        )
    kept = _outbox(database_url)
    assert ("dataset_registered", dataset["key"], None) in kept

    log = serve_log(network.root, batch_interval=0.05)
    try:
        with start_node(config, database_url, env=_LEDGER_ON):
            with LedgerClient(network.ledger_address, network.root / "a") as client:

                def arrived() -> list[object]:
                    found = [parse_entry(d) for _, d in client.find(dataset["key"])]
                    return [e for e in found if e.kind is EntryKind.DATASET_REGISTERED]

                entries = wait_for("the dataset's entry on the log", arrived)
            assert len(entries) == 1
            wait_for("an empty outbox", lambda: _outbox(database_url) == [] or None)
    finally:
        log.stop()
