"""Profiles: an organization's folder of a network, plus profile.yaml."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from airfed.sdk.errors import ConfigError
from airfed.sdk.network import Network
from airfed.sdk.profile import load_profile, write_profile


def test_profile_reads_organization_and_network(network: Network) -> None:
    profile = load_profile(network.root / "b")
    assert profile.organization == "b"
    assert profile.partners == ("a", "b", "c")
    assert profile.node_url("c") == network.organization("c").node_url
    assert profile.token is None
    assert isinstance(profile.ssl_context(), ssl.SSLContext)


def test_written_settings_are_read_back_and_private(network: Network) -> None:
    path = write_profile(
        network.root / "a",
        token="secret-token",
        orchestrator_url="http://127.0.0.1:9",
        username="admin",
        password="pw",
    )
    assert path.stat().st_mode & 0o777 == 0o600
    write_profile(network.root / "a", token="other-token")
    profile = load_profile(network.root / "a")
    assert profile.token == "other-token"
    assert profile.orchestrator_url == "http://127.0.0.1:9"
    assert (profile.orchestrator_username, profile.orchestrator_password) == (
        "admin",
        "pw",
    )


def test_missing_folder_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pass --profile DIR/<org>"):
        load_profile(tmp_path / "nowhere")


def test_folder_without_tls_files_is_refused(network: Network) -> None:
    (network.root / "a" / "tls" / "tls.key").unlink()
    with pytest.raises(ConfigError, match=r"lacks tls/tls\.key"):
        load_profile(network.root / "a")


def test_unreadable_profile_yaml_is_refused(network: Network) -> None:
    (network.root / "a" / "profile.yaml").write_text("token: [unclosed")
    with pytest.raises(ConfigError, match=r"profile\.yaml is not valid YAML"):
        load_profile(network.root / "a")


def test_folder_outside_the_network_is_refused(network: Network) -> None:
    stray = network.root / "ca"
    (stray / "tls").mkdir()
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (stray / "tls" / name).write_bytes(
            (network.root / "a" / "tls" / name).read_bytes()
        )
    with pytest.raises(ConfigError, match="organization 'ca' is not in"):
        load_profile(stray)
