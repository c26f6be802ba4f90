"""User API tokens on a real node: list, revoke, refused at once afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airfed.sdk.errors import NodeRequestError
from airfed.sdk.network import Network
from tests.support.nodes import create_token, start_node

_LAUNCH = "from airfed.sdk.cli import main; main()"


def _cli(
    config: Path, database_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, AIRFED_NODE_DATABASE_URL=database_url)
    return subprocess.run(
        [
            sys.executable,
            "-c",
            _LAUNCH,
            "node",
            "token",
            *args,
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_revoked_token_is_refused_at_once_and_listed_as_revoked(
    network: Network, database_url: str
) -> None:
    config = network.root / "a" / "node.yaml"
    alice = create_token(config, "alice", database_url)
    bob = create_token(config, "bob", database_url)
    listed = _json(_cli(config, database_url, "list", "--json"))
    assert [(t["user"], t["status"]) for t in listed] == [
        ("a/alice", "active"),
        ("a/bob", "active"),
    ]
    assert alice not in json.dumps(listed) and bob not in json.dumps(listed)
    alice_id = listed[0]["id"]

    with start_node(config, database_url) as node:
        profile = network.root / "a"
        with node.client(profile, alice) as as_alice:
            assert as_alice.health()["caller"] == "a/alice"
            revoked = _json(
                _cli(config, database_url, "revoke", str(alice_id), "--json")
            )
            with pytest.raises(NodeRequestError) as err:
                as_alice.health()
        with node.client(profile, bob) as as_bob:
            assert as_bob.health()["caller"] == "a/bob"

    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    assert err.value.status == 401 and "revoked" in err.value.detail
    after = _json(_cli(config, database_url, "list", "--user", "alice", "--json"))
    assert [(t["id"], t["status"]) for t in after] == [(alice_id, "revoked")]
    again = _json(_cli(config, database_url, "revoke", str(alice_id), "--json"))
    assert again["revoked_at"] == revoked["revoked_at"]


def test_revoked_token_answer_is_problem_details(
    network: Network, database_url: str
) -> None:
    import httpx

    from airfed.sdk.network import client_ssl_context

    config = network.root / "a" / "node.yaml"
    token = create_token(config, "carol", database_url)
    token_id = _json(_cli(config, database_url, "list", "--json"))[0]["id"]
    _json(_cli(config, database_url, "revoke", str(token_id), "--json"))
    with start_node(config, database_url) as node:
        response = httpx.get(
            f"{node.url}/models",
            headers={"Authorization": f"Bearer {token}"},
            verify=client_ssl_context(network.root / "a"),
        )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert "revoked" in response.json()["detail"]
    assert "Traceback" not in response.text


def test_revoking_an_unknown_token_says_so_in_one_line(
    network: Network, database_url: str
) -> None:
    config = network.root / "a" / "node.yaml"
    result = _cli(config, database_url, "revoke", "999")
    assert result.returncode == 1
    assert "no token with id 999" in result.stderr
    assert "airfed node token list" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
