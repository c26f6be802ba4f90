from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from airfed.sdk.errors import ConfigError
from airfed.sdk.network import init_network, load_network, load_node_config


def test_init_writes_identities_with_private_modes(tmp_path: Path) -> None:
    net = init_network(tmp_path, ["a", "b"], base_port=9100)

    assert [o.id for o in net.partners] == ["a", "b"]
    for name in ("tls/tls.key", "identity.key", "master.key"):
        mode = stat.S_IMODE((tmp_path / "a" / name).stat().st_mode)
        assert mode == 0o600, name
    cert = x509.load_pem_x509_certificate((tmp_path / "a/tls/tls.crt").read_bytes())
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    assert cn[0].value == "a"
    ca = x509.load_pem_x509_certificate((tmp_path / "a/tls/ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)


def test_node_config_points_at_network(tmp_path: Path) -> None:
    init_network(tmp_path, ["a", "b"], base_port=9100)
    config = load_node_config(tmp_path / "b" / "node.yaml")
    assert config.organization == "b"
    assert config.url == "https://127.0.0.1:9102"
    assert config.cert_file.exists()
    assert config.database_url == f"sqlite:///{tmp_path / 'b' / 'node.db'}"


def test_second_init_refuses_to_overwrite_keys(tmp_path: Path) -> None:
    init_network(tmp_path, ["a"], base_port=9100)
    key_before = (tmp_path / "a" / "identity.key").read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        init_network(tmp_path, ["a"], base_port=9100)
    assert (tmp_path / "a" / "identity.key").read_bytes() == key_before

    init_network(tmp_path, ["a"], base_port=9100, force=True)
    assert (tmp_path / "a" / "identity.key").read_bytes() != key_before


@pytest.mark.parametrize("orgs", [[], ["a", "a"], ["a/b"], ["orchestrator"]])
def test_bad_organization_ids_are_refused(tmp_path: Path, orgs: list[str]) -> None:
    with pytest.raises(ConfigError):
        init_network(tmp_path, orgs)
    assert not (tmp_path / "network.yaml").exists()


def test_load_network_names_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="network init"):
        load_network(tmp_path)
