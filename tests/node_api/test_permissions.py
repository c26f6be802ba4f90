"""The permission matrix on a real node over mutual TLS, SQLite and PostgreSQL."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from airfed.sdk.errors import NodeRequestError
from airfed.sdk.network import Network, init_network
from airfed.sdk.node_client import NodeClient
from tests.node_api.conftest import (
    permissions,
    profile,
    register_dataset_and_function,
    sum_task,
    wait_task,
)
from tests.support.nodes import RunningNode, create_token, start_node
from tests.support.ports import free_port_block


@dataclass
class Setup:
    node: RunningNode
    network: Network
    model_key: str
    checksum: str
    alice: str
    bob: str


@pytest.fixture
def setup(network: Network, database_url: str, tmp_path: Path) -> Iterator[Setup]:
    """Node a holding a model that b may process and a/alice may download."""
    config = network.root / "a" / "node.yaml"
    alice = create_token(config, "alice", database_url)
    bob = create_token(config, "bob", database_url)
    with start_node(config, database_url) as node:
        with node.client(profile(network, "a")) as client:
            registered = register_dataset_and_function(client, tmp_path)
            spec = sum_task(
                registered, "a", model_permissions=permissions(["b"], ["a/alice"])
            )
            client.submit_task(spec)
            task = wait_task(client, spec["key"])
        assert task["status"] == "done", task
        model = task["outputs"]["model"]
        yield Setup(node, network, model["model_key"], model["checksum"], alice, bob)


def _as(setup: Setup, org: str, token: str | None = None) -> NodeClient:
    return setup.node.client(profile(setup.network, org), token)


def test_client_without_certificate_cannot_complete_the_handshake(
    setup: Setup,
) -> None:
    context = ssl.create_default_context(cafile=str(setup.node.config.ca_file))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    host, port = setup.node.config.host, setup.node.config.port
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        context.wrap_socket(raw, server_hostname=host)

    tls13 = ssl.create_default_context(cafile=str(setup.node.config.ca_file))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{setup.node.url}/health", verify=tls13)


def test_certificate_from_another_ca_is_refused(setup: Setup, tmp_path: Path) -> None:
    other = init_network(tmp_path / "other", ["a"], base_port=free_port_block(3))
    context = ssl.create_default_context(cafile=str(setup.node.config.ca_file))
    context.load_cert_chain(
        str(other.root / "a/tls/tls.crt"), str(other.root / "a/tls/tls.key")
    )

    with (
        NodeClient(setup.node.url, context) as client,
        pytest.raises(NodeRequestError) as err,
    ):
        client.health()
    assert err.value.status == 0


def test_organization_without_permission_gets_403_problem(setup: Setup) -> None:
    with (
        _as(setup, "c") as client,
        client._http.stream("GET", f"/models/{setup.model_key}") as response,
    ):
        body = response.read()
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 403 and "c is not permitted" in problem["detail"]
    assert b"sum" not in body


def test_user_without_permission_gets_403(setup: Setup, tmp_path: Path) -> None:
    dest = tmp_path / "download"
    with _as(setup, "a", setup.bob) as client, pytest.raises(NodeRequestError) as err:
        client.download_model(setup.model_key, dest / "m")
    assert err.value.status == 403
    assert "a/bob is not permitted" in err.value.detail
    assert list(dest.iterdir()) == []


def test_unknown_token_or_token_from_another_organization_is_401(setup: Setup) -> None:
    with (
        _as(setup, "a", "afn_not-a-token") as client,
        pytest.raises(NodeRequestError) as err,
    ):
        client.health()
    assert err.value.status == 401
    with _as(setup, "b", setup.alice) as client, pytest.raises(NodeRequestError) as err:
        client.health()
    assert err.value.status == 401


def test_permitted_callers_get_the_content_and_accesses_are_recorded(
    setup: Setup, tmp_path: Path
) -> None:
    with _as(setup, "b") as client:
        assert client.download_model(setup.model_key, tmp_path / "b") == setup.checksum
    with _as(setup, "a", setup.alice) as client:
        assert (
            client.download_model(setup.model_key, tmp_path / "alice") == setup.checksum
        )
        assert client.health()["caller"] == "a/alice"
    assert (tmp_path / "b").read_bytes() == (tmp_path / "alice").read_bytes()

    with _as(setup, "a") as client:
        accesses = client.model_accesses(setup.model_key)
    assert [(a["caller"], a["purpose"]) for a in accesses] == [
        ("b", "process"),
        ("a/alice", "download"),
    ]
    assert all(a["at"] for a in accesses)
    with _as(setup, "c") as client, pytest.raises(NodeRequestError) as err:
        client.model_accesses(setup.model_key)
    assert err.value.status == 403


def test_metadata_is_listed_to_every_member(setup: Setup) -> None:
    with _as(setup, "c") as client:
        assert [m["key"] for m in client.list_models()] == [setup.model_key]
        assert client.list_datasets()[0]["owner"] == "a"
        assert len(client.list_samples()) == 2
        assert client.get_model_metadata(setup.model_key)["checksum"] == setup.checksum


def test_token_create_prints_the_token_once_and_stores_its_hash(
    network: Network, database_url: str
) -> None:
    from sqlalchemy import create_engine, text

    token = create_token(network.root / "a" / "node.yaml", "carol", database_url)

    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT user_name, token_hash FROM api_tokens")).all()
    engine.dispose()
    assert token.startswith("afn_") and len(token) > 40
    assert [r[0] for r in rows] == ["carol"]
    assert token not in rows[0][1]
