"""Whether a node works with the ledger: node.yaml, then the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airfed.node_api._context import NodeContext
from airfed.node_api._ledger import LEDGER_ENV, ledger_profile, node_ledger
from airfed.sdk.errors import ConfigError
from airfed.sdk.network import Network, load_network, load_node_config


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


def test_a_node_whose_files_are_mounted_apart_gets_a_profile_of_links(
    network: Network, tmp_path: Path
) -> None:
    home = network.root / "a"
    mounted = tmp_path / "etc" / "node"
    mounted.mkdir(parents=True)
    config = yaml.safe_load((home / "node.yaml").read_text())
    config.update(
        network=str(network.root / "network.yaml"),
        tls={key: str(home / path) for key, path in config["tls"].items()},
        identity_key=str(home / "identity.key"),
        master_key=str(home / "master.key"),
        storage_dir=str(tmp_path / "storage"),
    )
    (mounted / "node.yaml").write_text(yaml.safe_dump(config))

    profile = ledger_profile(load_node_config(mounted / "node.yaml"))

    assert profile == tmp_path / "storage" / "ledger-profile" / "a"
    assert (profile / "tls" / "tls.key").read_bytes() == (
        home / "tls" / "tls.key"
    ).read_bytes()
    assert load_network(profile.parent).organization("a").id == "a"
    assert ledger_profile(load_node_config(home / "node.yaml")) == home
