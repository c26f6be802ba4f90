"""A node's witness shown a forked log raises an alarm on the node's /health."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airfed.ledger.client import LedgerClient
from airfed.ledger.entries import make_entry
from airfed.ledger.server import serve_log
from airfed.sdk.network import (
    Network,
    client_ssl_context,
    init_network,
    load_identity_key,
)
from airfed.sdk.node_client import NodeClient
from tests.support.ledger import fast_witnesses, wait_for
from tests.support.nodes import start_node
from tests.support.ports import free_port_block


def _append_plan(network: Network, plan_key: str) -> None:
    profile = network.root / "orchestrator"
    entry = make_entry(
        "plan_registered",
        author="orchestrator",
        key=plan_key,
        body={"spec_hash": "0" * 64},
        identity_key=load_identity_key(profile / "identity.key"),
    )
    with LedgerClient(network.ledger_address, profile) as client:
        client.append([entry])


def test_split_view_is_an_alarm_on_the_nodes_health(tmp_path: Path) -> None:
    network = init_network(tmp_path / "net", ["a"], base_port=free_port_block(3))
    fast_witnesses(network)
    first = serve_log(network.root, f"sqlite:///{tmp_path / 'log-1.db'}")
    stopped = False
    try:
        _append_plan(network, "plan-seen-by-everyone")
        with start_node(
            network.root / "a" / "node.yaml", env={"AIRFED_NODE_LEDGER": "on"}
        ) as node:
            client = NodeClient(node.url, client_ssl_context(network.root / "a"))

            def ledger_health() -> dict[str, Any]:
                return dict(client.health()["ledger"]["witness"])

            wait_for("the witness cosigning", lambda: ledger_health()["cosigned_size"])
            assert client.health()["status"] == "ok"

            # The same log key now serves another history of the same size.
            first.stop()
            stopped = True
            forked = serve_log(network.root, f"sqlite:///{tmp_path / 'log-2.db'}")
            try:
                _append_plan(network, "plan-shown-to-a-only")
                alarm = wait_for(
                    "the split-view alarm",
                    lambda: client.health() if ledger_health()["alarms"] else None,
                )
            finally:
                forked.stop()
                client.close()
    finally:
        if not stopped:
            first.stop()

    assert alarm["status"] == "alarm"
    alarms = alarm["ledger"]["witness"]["alarms"]
    assert alarms[0]["kind"] == "split view"
    assert "differs from the root this witness holds" in alarms[0]["message"]
