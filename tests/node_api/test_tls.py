"""The caller is the organization in the client certificate, on both HTTP stacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from airfed.sdk.network import Network
from tests.node_api.conftest import profile, write_node_options
from tests.support.nodes import start_node


@pytest.mark.parametrize("implementation", ["h11", "httptools"])
def test_caller_organization_reaches_the_app(
    network: Network, implementation: str, tmp_path: Path
) -> None:
    config = write_node_options(network, "a", http=implementation)
    with start_node(config) as node:
        for org in ("a", "b", "c"):
            with node.client(profile(network, org)) as client:
                health = client.health()
                assert health["caller"] == org
                assert health["organization"] == "a"
        with node.client(profile(network, "b")) as client:
            orgs = {o["id"]: o for o in client.organizations()}
    assert set(orgs) == {"a", "b", "c", "orchestrator"}
    assert (
        orgs["b"]["identity_public_key"]
        == network.organization("b").identity_public_key
    )
