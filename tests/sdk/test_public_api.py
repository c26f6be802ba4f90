"""The SDK's public surface: ``airfed.sdk.__all__`` is sorted and exact."""

from __future__ import annotations

import subprocess
import sys
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
    lazy = set(airfed.sdk._LAZY)
    assert public | lazy == set(airfed.sdk.__all__)
    assert not public & lazy


def test_the_task_runtime_does_not_import_the_whole_sdk() -> None:
    # A task's process on a node imports the runtime and the task context
    # only; pydantic and the plan builder would cost every task half a second.
    probe = (
        "import sys, airfed.node_api.runtime, airfed.sdk.function;"
        "print(sorted(m for m in ('pydantic', 'airfed.sdk.plan') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout

    assert output.strip() == "[]"


def test_client_loads_on_first_use() -> None:
    from airfed.sdk.client import Client

    assert airfed.sdk.Client is Client


def test_plan_builder_is_the_exported_one() -> None:
    from airfed.sdk.plan import ComputePlanBuilder

    assert airfed.sdk.ComputePlanBuilder is ComputePlanBuilder
