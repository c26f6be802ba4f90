"""Profiles: who the data scientist is on the network, read from one folder.

A profile is the folder ``DIR/<org>`` that ``airfed network init`` writes for
an organization. It holds the organization's TLS files (``tls/ca.crt``,
``tls/tls.crt``, ``tls/tls.key``); the network is ``DIR/network.yaml``. An
optional ``profile.yaml`` next to them adds what a person would otherwise type
each time::

    token: 3f9c...                 # user token issued by the node's admin
    orchestrator:
      url: http://127.0.0.1:8080   # the Airflow api-server
      username: admin
      password: admin

``profile.yaml`` holds secrets: :func:`write_profile` creates it with mode
0600.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from airfed.sdk.errors import ConfigError
from airfed.sdk.network import Network, client_ssl_context, load_network

__all__ = ["PROFILE_FILE", "Profile", "load_profile", "write_profile"]

PROFILE_FILE = "profile.yaml"
_TLS_FILES = ("ca.crt", "tls.crt", "tls.key")


@dataclass(frozen=True)
class Profile:
    """An organization's identity on a network, and optional user settings."""

    directory: Path
    organization: str
    network: Network
    token: str | None = None
    orchestrator_url: str | None = None
    orchestrator_username: str | None = None
    orchestrator_password: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """TLS context that presents the organization's certificate."""
        try:
            context: ssl.SSLContext = client_ssl_context(self.directory)
            return context
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the TLS files of profile {self.directory}: {exc}"
            ) from exc

    def node_url(self, organization: str) -> str:
        """URL of ``organization``'s node, from network.yaml."""
        url = self.network.organization(organization).node_url
        if not url:
            raise ConfigError(f"organization {organization!r} runs no node")
        return str(url)

    @property
    def partners(self) -> tuple[str, ...]:
        """Every organization of the network that runs a node."""
        return tuple(org.id for org in self.network.partners)


def load_profile(directory: Path) -> Profile:
    """Read the profile in ``directory`` (``DIR/<org>``)."""
    directory = Path(directory).expanduser().resolve()
    if not directory.is_dir():
        raise ConfigError(
            f"profile {directory} is not a folder; pass --profile DIR/<org> of a "
            "network made by 'airfed network init' (or set AIRFED_PROFILE)"
        )
    missing = [name for name in _TLS_FILES if not (directory / "tls" / name).is_file()]
    if missing:
        raise ConfigError(
            f"profile {directory} lacks tls/{missing[0]}; pass the folder of one "
            "organization of a network made by 'airfed network init'"
        )
    network = load_network(directory.parent / "network.yaml")
    organization = _organization(directory)
    network.organization(organization)  # raises ConfigError when unknown
    settings = _read_settings(directory / PROFILE_FILE)
    orchestrator = settings.get("orchestrator") or {}
    if not isinstance(orchestrator, dict):
        raise ConfigError(f"{directory / PROFILE_FILE}: orchestrator must be a mapping")
    return Profile(
        directory=directory,
        organization=organization,
        network=network,
        token=_optional_str(settings.get("token")),
        orchestrator_url=_optional_str(orchestrator.get("url")),
        orchestrator_username=_optional_str(orchestrator.get("username")),
        orchestrator_password=_optional_str(orchestrator.get("password")),
    )


def write_profile(
    directory: Path,
    *,
    token: str | None = None,
    orchestrator_url: str | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Path:
    """Write (or update) ``profile.yaml`` in ``directory``; return its path.

    Settings passed as ``None`` keep their current value.
    """
    path = Path(directory) / PROFILE_FILE
    settings = _read_settings(path)
    if token is not None:
        settings["token"] = token
    orchestrator = dict(settings.get("orchestrator") or {})
    for name, value in (
        ("url", orchestrator_url),
        ("username", username),
        ("password", password),
    ):
        if value is not None:
            orchestrator[name] = value
    if orchestrator:
        settings["orchestrator"] = orchestrator
    text = yaml.safe_dump(settings, sort_keys=False)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)
    return path


def _organization(directory: Path) -> str:
    node_yaml = directory / "node.yaml"
    if node_yaml.is_file():
        data = _read_yaml(node_yaml)
        if data.get("organization"):
            return str(data["organization"])
    return directory.name


def _read_settings(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return _read_yaml(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping")
    return data


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
