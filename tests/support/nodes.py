"""Real nodes for tests: ``airfed node start`` as a subprocess on loopback.

``start_node(config)`` launches the node, waits until ``/health`` answers over
mutual TLS, yields a :class:`RunningNode` and stops the process by its pid
at exit. ``start_nodes(network, orgs)`` does the same for several
organizations at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from airfed.sdk.errors import NodeRequestError
from airfed.sdk.network import Network, NodeConfig, load_node_config
from airfed.sdk.node_client import NodeClient

__all__ = ["RunningNode", "create_token", "start_node", "start_nodes"]

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0
_LAUNCH = "from airfed.sdk.cli import main; main()"


@dataclass
class RunningNode:
    """A node process started by a test."""

    config: NodeConfig
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return self.config.url

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def organization(self) -> str:
        return self.config.organization

    def client(self, org_profile_dir: Path, token: str | None = None) -> NodeClient:
        """A client of this node presenting the certificate of a profile."""
        from airfed.sdk.network import client_ssl_context

        return NodeClient(self.url, client_ssl_context(Path(org_profile_dir)), token)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _node_command(config_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", _LAUNCH, "node", *extra, "--config", str(config_path)]


def _wait_healthy(node: RunningNode) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    with node.client(node.config.home) as client:
        while time.monotonic() < deadline:
            if node.process.poll() is not None:
                raise RuntimeError(
                    f"node {node.organization} exited with {node.process.returncode}:"
                    f"\n{node.log()[-4000:]}"
                )
            try:
                client.health()
                return
            except NodeRequestError:
                time.sleep(0.2)
    raise RuntimeError(
        f"node {node.organization} did not answer /health within "
        f"{_START_TIMEOUT:.0f} s:\n{node.log()[-4000:]}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(_STOP_TIMEOUT)


def _launch(
    config_path: Path, database_url: str | None, env: Mapping[str, str] | None
) -> RunningNode:
    child_env = dict(os.environ)
    # Nodes of tests run without the ledger unless a test turns it on
    # (AIRFED_NODE_LEDGER=on in the environment or ``env``).
    child_env.setdefault("AIRFED_NODE_LEDGER", "off")
    if database_url is not None:
        child_env["AIRFED_NODE_DATABASE_URL"] = database_url
    child_env.update(env or {})
    config = load_node_config(config_path)
    log_path = config.home / "node.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            _node_command(config_path, "start"),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
        )
    return RunningNode(config, process, log_path)


@contextlib.contextmanager
def start_node(
    config_path: Path,
    database_url: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[RunningNode]:
    """Run ``airfed node start --config config_path`` until the block ends."""
    node = _launch(Path(config_path), database_url, env)
    try:
        _wait_healthy(node)
        yield node
    finally:
        _stop(node.process)


@contextlib.contextmanager
def start_nodes(
    network: Network,
    orgs: Iterable[str],
    database_urls: Mapping[str, str] | None = None,
) -> Iterator[dict[str, RunningNode]]:
    """Start the nodes of ``orgs`` side by side; yield them by organization."""
    nodes: dict[str, RunningNode] = {}
    try:
        for org in orgs:
            url = (database_urls or {}).get(org)
            nodes[org] = _launch(network.root / org / "node.yaml", url, None)
        for node in nodes.values():
            _wait_healthy(node)
        yield nodes
    finally:
        for node in nodes.values():
            _stop(node.process)


def create_token(config_path: Path, user: str, database_url: str | None = None) -> str:
    """Issue a user token with ``airfed node token create`` and return it."""
    child_env = dict(os.environ)
    if database_url is not None:
        child_env["AIRFED_NODE_DATABASE_URL"] = database_url
    result = subprocess.run(
        [*_node_command(Path(config_path), "token", "create", user), "--json"],
        capture_output=True,
        check=True,
        env=child_env,
        timeout=60,
    )
    import json

    return str(json.loads(result.stdout)["token"])
