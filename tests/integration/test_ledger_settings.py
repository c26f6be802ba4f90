"""Whether a node works with the ledger: node.yaml, then the environment."""

from __future__ import annotations

import pytest
import yaml

from airfed.node_api._context import NodeContext
from airfed.node_api._ledger import LEDGER_ENV, node_ledger
from airfed.sdk.errors import ConfigError
from airfed.sdk.network import Network, load_node_config


def _context(network: Network, **settings: object) -> NodeContext:
    path = network.root / "a" / "node.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(settings)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return NodeContext.open(load_node_config(path), migrate=False)


def test_ledger_is_on_by_default_when_the_network_names_a_log(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LEDGER_ENV, raising=False)

    ledger = node_ledger(_context(network))

    assert ledger is not None
    assert ledger.settings.witness is True


def test_node_yaml_turns_the_ledger_off_and_the_environment_wins(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LEDGER_ENV, raising=False)
    context = _context(network, ledger=False, ledger_witness="off")

    assert node_ledger(context) is None
    monkeypatch.setenv(LEDGER_ENV, "on")
    forced = node_ledger(context)
    assert forced is not None
    assert forced.settings.witness is False


def test_a_ledger_setting_that_is_neither_on_nor_off_is_refused(
    network: Network, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LEDGER_ENV, raising=False)

    with pytest.raises(ConfigError, match="ledger must be on or off, not 'maybe'"):
        node_ledger(_context(network, ledger="maybe"))
