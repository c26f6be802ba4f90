"""Task logs are encrypted at rest and still readable through the API."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, text

from airfed.node_api._context import NodeContext
from airfed.sdk.network import Network, load_node_config
from tests.node_api.conftest import (
    SUM_INPUTS,
    function_archive,
    profile,
    register_dataset_and_function,
    sum_task,
    wait_task,
)
from tests.support.nodes import start_node

CHATTY_FUNCTION = """
    def train(ctx):
        values = ctx.load_data()
        print("patient values", values, "marker-7f3a")
        raise ValueError("stop here")
"""


def _task_row(database_url: str, key: str) -> tuple[str | None, bytes | None]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT logs, sealed_logs FROM tasks WHERE key = :key"),
                {"key": key},
            ).one()
    finally:
        engine.dispose()
    sealed = bytes(row[1]) if row[1] is not None else None
    return row[0], sealed


def test_logs_are_sealed_in_the_database_and_served_in_clear(
    network: Network, database_url: str, tmp_path: Path
) -> None:
    config = network.root / "a" / "node.yaml"
    with start_node(config, database_url) as node:
        with node.client(profile(network, "a")) as client:
            registered = register_dataset_and_function(client, tmp_path, logs=["b"])
            chatty = client.create_function(
                {"name": "chatty", "entrypoint": "algo:train", "inputs": SUM_INPUTS},
                function_archive(tmp_path, CHATTY_FUNCTION),
            )
            registered.function_key = chatty["key"]
            spec = sum_task(registered, "a")
            spec["outputs"] = {}
            client.submit_task(spec)
            assert wait_task(client, spec["key"])["status"] == "failed"
        with node.client(profile(network, "b")) as b:
            served = b.task_logs(spec["key"])

    assert "marker-7f3a" in served and "ValueError" in served
    plain, sealed = _task_row(database_url, spec["key"])
    assert plain is None
    assert sealed is not None and b"marker-7f3a" not in sealed
    assert b"patient values" not in sealed


def test_plaintext_logs_of_an_older_node_are_sealed_at_start(
    network: Network, database_url: str, tmp_path: Path
) -> None:
    config = network.root / "a" / "node.yaml"
    with (
        start_node(config, database_url) as node,
        node.client(profile(network, "a")) as client,
    ):
        registered = register_dataset_and_function(client, tmp_path, logs=["b"])
        spec = sum_task(registered, "a")
        assert wait_task(client, client.submit_task(spec)["key"])["status"] == "done"
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE tasks SET logs = 'old plaintext marker-91c2', "
                "sealed_logs = NULL WHERE key = :key"
            ),
            {"key": spec["key"]},
        )
    engine.dispose()

    with (
        start_node(config, database_url) as node,
        node.client(profile(network, "b")) as b,
    ):
        served = b.task_logs(spec["key"])

    assert served == "old plaintext marker-91c2"
    plain, sealed = _task_row(database_url, spec["key"])
    assert plain is None and sealed is not None
    assert b"marker-91c2" not in sealed
    context = NodeContext.open(load_node_config(config), migrate=False)
    assert context.objects.unseal(sealed) == b"old plaintext marker-91c2"
    context.db.dispose()
