"""Fixtures shared by every suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from airfed.sdk.network import Network, init_network
from tests.support.ports import free_port_block
from tests.support.postgres import temporary_database


@pytest.fixture
def network(tmp_path: Path) -> Network:
    """A development network of organizations a, b, c on free loopback ports."""
    base = free_port_block(7)
    return init_network(tmp_path / "net", ["a", "b", "c"], base_port=base)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database, dropped after the test."""
    with temporary_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs against SQLite and against PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        with temporary_database() as url:
            yield url
