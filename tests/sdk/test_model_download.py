"""NodeClient.download_model against a real node: bytes, checksum, refusals."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import update

from airfed.node_api._context import NodeContext
from airfed.node_api._db import Model
from airfed.sdk.errors import NodeRequestError
from airfed.sdk.network import Network, client_ssl_context, load_node_config
from airfed.sdk.node_client import NodeClient
from tests.support.nodes import RunningNode, start_node
from tests.support.ports import free_port

# Several of the client's 1 MiB buffers and a partial last one.
_SIZE = 3 * 1024 * 1024 + 12345


@dataclass
class Seeded:
    node: RunningNode
    network: Network
    key: str
    content: bytes


def _seed(config: Path, content: bytes, tmp_path: Path) -> str:
    context = NodeContext.open(load_node_config(config))
    source = tmp_path / "model.bin"
    source.write_bytes(content)
    stored = context.objects.put_file(source)
    key = str(uuid.uuid4())
    with context.db.session() as session:
        session.add(
            Model(
                key=key,
                owner="a",
                plan_key="plan",
                task_key="task",
                identifier="model",
                permissions={"process": {"authorized_ids": ["b"]}},
                transient=False,
                object_id=stored.object_id,
                checksum=stored.checksum,
                size=stored.size,
            )
        )
    context.db.dispose()
    return key


@pytest.fixture
def seeded(network: Network, tmp_path: Path) -> Iterator[Seeded]:
    """Node a holding a model of a few MiB that b may process."""
    config = network.root / "a" / "node.yaml"
    content = os.urandom(_SIZE)
    key = _seed(config, content, tmp_path)
    with start_node(config) as node:
        yield Seeded(node, network, key, content)


def _client(seeded: Seeded, org: str) -> NodeClient:
    return seeded.node.client(seeded.network.root / org)


def test_download_writes_the_model_and_returns_its_checksum(
    seeded: Seeded, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "model.bin"
    with _client(seeded, "b") as client:
        checksum = client.download_model(seeded.key, dest)
        again = client.download_model(seeded.key, dest)
    assert dest.read_bytes() == seeded.content
    assert checksum == again == hashlib.sha256(seeded.content).hexdigest()
    assert [p.name for p in dest.parent.iterdir()] == ["model.bin"]


def test_checksum_mismatch_leaves_nothing_behind(
    seeded: Seeded, tmp_path: Path
) -> None:
    config = load_node_config(seeded.network.root / "a" / "node.yaml")
    context = NodeContext.open(config, migrate=False)
    with context.db.session() as session:
        session.execute(
            update(Model).where(Model.key == seeded.key).values(checksum="0" * 64)
        )
    context.db.dispose()
    dest = tmp_path / "out" / "model.bin"
    with _client(seeded, "b") as client, pytest.raises(NodeRequestError) as err:
        client.download_model(seeded.key, dest)
    assert err.value.status == 502
    assert "checksum mismatch" in err.value.detail
    assert list(dest.parent.iterdir()) == []


def test_refusals_are_problem_details_and_write_nothing(
    seeded: Seeded, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "model.bin"
    with _client(seeded, "c") as client:
        with pytest.raises(NodeRequestError) as denied:
            client.download_model(seeded.key, dest)
        with pytest.raises(NodeRequestError) as missing:
            client.download_model("no-such-model", dest)
    assert denied.value.status == 403 and "c is not permitted" in denied.value.detail
    assert missing.value.status == 404
    assert list(dest.parent.iterdir()) == []


def test_unreachable_node_is_status_0(seeded: Seeded, tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    context = client_ssl_context(seeded.network.root / "b")
    with (
        NodeClient(url, context) as client,
        pytest.raises(NodeRequestError) as err,
    ):
        client.download_model(seeded.key, tmp_path / "model.bin")
    assert err.value.status == 0 and "cannot reach the node" in err.value.detail
