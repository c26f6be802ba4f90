"""The SDK's public surface: ``airfed.sdk.__all__`` is sorted and exact."""

from __future__ import annotations

import types

import airfed.sdk


def test_all_is_sorted() -> None:
    assert list(airfed.sdk.__all__) == sorted(airfed.sdk.__all__)


def test_every_exported_name_is_importable() -> None:
    for name in airfed.sdk.__all__:
        assert getattr(airfed.sdk, name, None) is not None, name


def test_every_public_name_is_exported() -> None:
    public = {
        name
        for name, value in vars(airfed.sdk).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"Client"} == set(airfed.sdk.__all__)


def test_client_loads_on_first_use() -> None:
    from airfed.sdk.client import Client

    assert airfed.sdk.Client is Client


def test_plan_builder_is_the_exported_one() -> None:
    from airfed.sdk.plan import ComputePlanBuilder

    assert airfed.sdk.ComputePlanBuilder is ComputePlanBuilder
