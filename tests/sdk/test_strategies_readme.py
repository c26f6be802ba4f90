"""The README's "Strategies" examples run as written."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def _python_files() -> dict[str, str]:
    """The section's Python blocks, keyed by the file name on their first line."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Strategies\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    files = {}
    for language, body in _FENCE.findall(section):
        if language == "python":
            first_line = body.partition("\n")[0]
            files[first_line.removeprefix("# ").strip()] = body
    return files


@pytest.fixture
def examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, body in _python_files().items():
        (tmp_path / name).write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_the_section_holds_the_examples() -> None:
    assert set(_python_files()) == {
        "my_algorithm.py",
        "simulate_fedavg.py",
        "run_on_network.py",
        "my_strategy.py",
        "simulate_my_strategy.py",
    }


def test_simulating_fedavg_prints_federated_and_local_accuracy(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(str(examples / "simulate_fedavg.py"), run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "done"
    assert lines[1].startswith("federated {'a': ")
    assert lines[2].startswith("a alone   {'a': ")


def test_a_user_strategy_runs_in_simulation(
    examples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(str(examples / "simulate_my_strategy.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.startswith("done {'a': ")
    assert (examples / "custom" / "function" / "my_strategy.py").is_file()


def test_the_network_example_names_real_functions(examples: Path) -> None:
    namespace = runpy.run_path(str(examples / "run_on_network.py"))
    assert callable(namespace["run"])
