"""Build task workdirs (contract B) for runtime and executor tests."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

MODEL_AND_ACCURACY = [
    {"identifier": "model", "kind": "model"},
    {"identifier": "accuracy", "kind": "performance"},
]


def task_spec(key: str = "8d1c2f0e-0000-4000-8000-000000000001") -> dict[str, Any]:
    return {
        "key": key,
        "plan_key": "8d1c2f0e-0000-4000-8000-0000000000aa",
        "function_key": "8d1c2f0e-0000-4000-8000-0000000000ff",
        "worker": "a",
        "category": "train",
        "rank": 1,
        "round": 2,
        "metadata": {"lr": "0.1"},
    }


def make_workdir(
    root: Path,
    code: str,
    *,
    name: str = "task",
    entrypoint: str = "algo:train",
    inputs: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
    staged: dict[str, list[str]] | None = None,
    opener: str | None = None,
    files: dict[str, bytes | str] | None = None,
) -> Path:
    """A workdir whose function's ``algo.py`` is ``code``.

    ``files`` are extra files relative to the workdir (inputs, the opener).
    """
    workdir = root / name
    (workdir / "function").mkdir(parents=True)
    (workdir / "outputs").mkdir()
    (workdir / "function" / "algo.py").write_text(textwrap.dedent(code))
    for relative, content in (files or {}).items():
        path = workdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))
    task = {
        "task": task_spec(),
        "function": {
            "name": "test function",
            "description": "",
            "entrypoint": entrypoint,
            "inputs": inputs or [],
            "outputs": MODEL_AND_ACCURACY if outputs is None else outputs,
            "permissions": {},
        },
        "inputs": staged or {},
        "opener": opener,
    }
    (workdir / "task.json").write_text(json.dumps(task))
    return workdir
