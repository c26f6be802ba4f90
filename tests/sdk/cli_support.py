"""Running the real ``airfed`` command in tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Run", "airfed"]

_LAUNCH = "from airfed.sdk.cli import main; main()"


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def assert_one_line_error(self, fragment: str) -> None:
        """Failed with one line on stderr naming the problem, no traceback."""
        assert self.code != 0, self.stdout
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert "Traceback" not in self.stderr
        assert lines[0].startswith("error: "), lines[0]
        assert fragment in lines[0], lines[0]


def airfed(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> Run:
    """Run ``airfed ARGS`` in a subprocess, as a user would."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFED_")}
    child_env["COLUMNS"] = "200"
    child_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", _LAUNCH, *map(str, args)],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)
