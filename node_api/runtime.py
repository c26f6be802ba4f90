"""The task runtime: run one task's function in a prepared workdir.

The same code runs in a node's isolated subprocess, in a Kubernetes pod
(``airfed task run --workdir /airfed/task``) and in-process for simulation
(:func:`run_task_workdir`). It:

1. reads ``W/task.json`` and builds the function's :class:`TaskContext`;
2. imports the entrypoint ``module:callable`` from ``W/function`` and calls it;
3. checks that every declared output was produced: a model file at
   ``W/outputs/<identifier>``, a performance recorded with
   ``ctx.record_performance``;
4. writes ``W/result.json`` atomically: status ``done`` or ``failed``, the
   outputs, the performances and a one-line error.

An exception in the function makes the task failed: its traceback goes to the
log (stderr), one line of it to ``result.json``. ``python -m
airfed.node_api.runtime W`` exits 0 when the task is done and 1 otherwise.
Nothing heavy is imported here: the function imports what it needs.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from airfed.sdk.function import (
    RESULT_FILE,
    FunctionError,
    TaskContext,
    TaskFile,
    read_task_file,
)

__all__ = ["main", "run_task_workdir"]

logger = logging.getLogger(__name__)


def run_task_workdir(workdir: Path) -> dict[str, Any]:
    """Run the task prepared in ``workdir``; write and return its result.

    Raises FunctionError only when ``workdir`` is not a folder; every other
    problem is reported as a failed result. In-process runs change
    ``sys.path`` for the call, so run one task at a time per process.
    """
    workdir = Path(workdir).resolve()
    if not workdir.is_dir():
        raise FunctionError(f"task workdir {workdir} does not exist")
    started = time.monotonic()
    try:
        result = _run(workdir)
    except (Exception, SystemExit) as exc:
        result = _failed(exc)
    _write_result(workdir, result)
    logger.info(
        "task finished status=%s duration_s=%.3f",
        result["status"],
        time.monotonic() - started,
    )
    return result


def _run(workdir: Path) -> dict[str, Any]:
    task_file = read_task_file(workdir)
    ctx = TaskContext(workdir, task_file)
    (workdir / "outputs").mkdir(exist_ok=True)
    logger.info(
        "task started task=%s plan=%s round=%s function=%s",
        ctx.task_key,
        ctx.plan_key,
        ctx.round,
        task_file.entrypoint,
    )
    with _function_on_path(workdir / "function"):
        function = _load_entrypoint(task_file.entrypoint, workdir / "function")
        try:
            function(ctx)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise FunctionError(f"the function exited with {exc.code!r}") from exc
    return {
        "status": "done",
        "outputs": _collect_outputs(workdir, task_file),
        "performances": _collect_performances(ctx, task_file),
        "error": None,
    }


def _failed(exc: BaseException) -> dict[str, Any]:
    if not isinstance(exc, FunctionError):
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.write(f"task failed: {_one_line(exc)}\n")
    sys.stderr.flush()
    return {
        "status": "failed",
        "outputs": {},
        "performances": {},
        "error": _one_line(exc),
    }


def _one_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()
    text = message[0] if message else ""
    if isinstance(exc, FunctionError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def _function_on_path(code_dir: Path) -> Iterator[None]:
    """Put the function's code first on sys.path and forget its modules after."""
    if not code_dir.is_dir():
        raise FunctionError(f"the function's code is missing: {code_dir} is absent")
    saved_path = list(sys.path)
    saved_modules = set(sys.modules)
    sys.path.insert(0, str(code_dir))
    # A finder cached for this folder (or one below it) by an earlier task in
    # the same process would not see the new files; dropping those few is
    # enough, and far cheaper than importlib.invalidate_caches(), which visits
    # every finder of every path entry.
    folder = str(code_dir)
    for entry in [p for p in sys.path_importer_cache if p.startswith(folder)]:
        del sys.path_importer_cache[entry]
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            if _defined_in(sys.modules[name], code_dir):
                del sys.modules[name]


def _defined_in(module: Any, folder: Path) -> bool:
    location = getattr(module, "__file__", None)
    return location is not None and Path(location).is_relative_to(folder)


def _load_entrypoint(entrypoint: str, code_dir: Path) -> Callable[[TaskContext], Any]:
    module_name, _, attribute = entrypoint.partition(":")
    existing = sys.modules.get(module_name.split(".")[0])
    if existing is not None and not _defined_in(existing, code_dir):
        raise FunctionError(
            f"the function's module {module_name!r} has the name of an installed "
            "module; rename it"
        )
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0] and exc.name != module_name:
            raise
        raise FunctionError(
            f"entrypoint {entrypoint!r}: module {module_name!r} is not in the "
            "function's archive"
        ) from exc
    for part in attribute.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise FunctionError(
            f"entrypoint {entrypoint!r}: {module_name} defines no callable "
            f"{attribute!r}"
        )
    return cast(Callable[[TaskContext], Any], target)


def _collect_outputs(workdir: Path, task_file: TaskFile) -> dict[str, str]:
    outputs: dict[str, str] = {}
    for output in task_file.outputs:
        if output.kind != "model":
            continue
        relative = f"outputs/{output.identifier}"
        path = workdir / relative
        if path.is_symlink() or not path.is_file():
            raise FunctionError(
                f"output {output.identifier!r} was not written: the function must "
                f"write a file at ctx.output_path({output.identifier!r})"
            )
        outputs[output.identifier] = relative
    return outputs


def _collect_performances(ctx: TaskContext, task_file: TaskFile) -> dict[str, float]:
    recorded: dict[str, float] = ctx.performances
    for output in task_file.outputs:
        if output.kind == "performance" and output.identifier not in recorded:
            raise FunctionError(
                f"performance {output.identifier!r} was not recorded: call "
                f"ctx.record_performance({output.identifier!r}, value)"
            )
    return recorded


def _write_result(workdir: Path, result: dict[str, Any]) -> None:
    text = json.dumps(result, indent=2, sort_keys=True) + "\n"
    fd, tmp_name = tempfile.mkstemp(prefix=".result.", dir=workdir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp_name).replace(workdir / RESULT_FILE)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """``python -m airfed.node_api.runtime W``: 0 when done, 1 otherwise."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m airfed.node_api.runtime WORKDIR\n")
        return 2
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    try:
        result = run_task_workdir(Path(args[0]))
    except FunctionError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0 if result["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
