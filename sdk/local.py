"""Running a network's services on this machine, as child processes.

:class:`LocalServices` starts an organization's node (``airfed node start
--config DIR/<org>/node.yaml``), the ledger's log (``airfed ledger serve``)
and, when a node does not run it, an organization's witness (``airfed
ledger witness``) as processes of their own session, with their output in
a log file each. It waits until a node answers ``/health`` over mutual
TLS and until the log accepts connections, and stops every process it
started by its process group: SIGTERM first, SIGKILL for what does not stop
in time. Used as a context manager, it stops them when the block ends,
however it ends::

    with LocalServices(network_root, log_dir) as services:
        services.start_ledger()
        for org in ("a", "b"):
            services.start_node(org)
        services.wait_until_ready()
        ...

Everything listens on the addresses of ``network.yaml`` (loopback for a
network made by ``airfed network init``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from airfed.sdk.errors import AirfedError, NodeRequestError
from airfed.sdk.network import (
    client_ssl_context,
    load_network,
    load_node_config,
)
from airfed.sdk.node_client import NodeClient

__all__ = [
    "LocalProcess",
    "LocalServiceError",
    "LocalServices",
    "airfed_command",
    "free_port",
    "free_port_block",
    "port_is_free",
    "stop_process_groups",
]

logger = logging.getLogger(__name__)

_STOP_TIMEOUT = 15.0
_START_TIMEOUT = 180.0
_POLL_SECONDS = 0.2
_LAUNCH = "from airfed.sdk.cli import main; main()"


class LocalServiceError(AirfedError):  # type: ignore[misc,unused-ignore]
    """A service started on this machine exited or never became ready."""


def airfed_command(*args: str) -> list[str]:
    """The ``airfed`` command of this interpreter's environment, with ``args``."""
    script = Path(sys.executable).parent / "airfed"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), *args]
    return [sys.executable, "-c", _LAUNCH, *args]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``host:port`` (and it can be bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else a port the system hands out."""
    if preferred is not None and port_is_free(preferred, host):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_block(
    size: int, preferred: int | None = None, host: str = "127.0.0.1"
) -> int:
    """First port of ``size`` consecutive free ports (``preferred`` if it fits)."""
    candidates = [preferred] if preferred is not None else []
    candidates += [free_port(host=host) for _ in range(100)]
    for base in candidates:
        if base + size < 65000 and all(
            port_is_free(base + offset, host) for offset in range(size)
        ):
            return base
    raise LocalServiceError(f"no {size} consecutive free ports on {host}")


@dataclass
class LocalProcess:
    """A service process: its name, the process and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise :class:`LocalServiceError` when the process has exited."""
        if self.alive():
            return
        last = [line for line in self.log_tail().splitlines() if line.strip()]
        reason = f" ({last[-1].strip()[:200]})" if last else ""
        raise LocalServiceError(
            f"{self.name} exited with status {self.process.returncode}{reason}; "
            f"its log is {self.log_path}"
        )

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout`` seconds."""
        stop_process_groups([self.process], timeout)


def stop_process_groups(
    processes: Sequence[subprocess.Popen[bytes]], timeout: float = _STOP_TIMEOUT
) -> None:
    """Stop processes that lead their own process group, all at once.

    Each group gets SIGTERM; a process still running after ``timeout``
    seconds gets SIGKILL with its group, and so does anything the processes
    forked that outlives them in their groups.
    """
    for process in processes:
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("process did not stop in time pid=%d", process.pid)
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(_STOP_TIMEOUT)
    for process in processes:
        _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass
class _Readiness:
    process: LocalProcess
    check: Callable[[], bool]


@dataclass
class LocalServices:
    """The node, log and witness processes of a network; see the module."""

    network_root: Path
    log_dir: Path
    environment: Mapping[str, str] | None = None
    on_start: Callable[[LocalProcess], None] | None = None
    processes: list[LocalProcess] = field(default_factory=list)
    _pending: list[_Readiness] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.network_root = Path(self.network_root).resolve()
        self.log_dir = Path(self.log_dir).resolve()
        self.network = load_network(self.network_root / "network.yaml")

    def __enter__(self) -> LocalServices:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- starting

    def start(self, name: str, args: Sequence[str]) -> LocalProcess:
        """Launch ``airfed ARGS`` as service ``name``; return at once."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.environment or {})}
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                airfed_command(*args),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        started = LocalProcess(name, process, log_path)
        self.processes.append(started)
        logger.info("service started name=%s pid=%d", name, process.pid)
        if self.on_start is not None:
            self.on_start(started)
        return started

    def start_node(self, organization: str) -> LocalProcess:
        """Launch the node of ``organization``; :meth:`wait_until_ready` waits."""
        config_path = self.network_root / organization / "node.yaml"
        config = load_node_config(config_path)
        started = self.start(
            f"node-{organization}", ["node", "start", "--config", str(config_path)]
        )
        profile = self.network_root / organization

        def healthy() -> bool:
            try:
                with NodeClient(config.url, client_ssl_context(profile)) as client:
                    client.health()
            except NodeRequestError:
                return False
            return True

        self._pending.append(_Readiness(started, healthy))
        return started

    def start_ledger(
        self, witnesses: Sequence[str] = (), interval: float = 2.0
    ) -> None:
        """Launch the ledger's log and the witnesses of ``witnesses``."""
        log = self.start(
            "ledger-log", ["ledger", "serve", "--network", str(self.network_root)]
        )
        host, _, port = self.network.ledger_address.rpartition(":")
        self._pending.append(_Readiness(log, lambda: _accepts(host, int(port))))
        for organization in witnesses:
            self.start(
                f"witness-{organization}",
                [
                    "ledger",
                    "witness",
                    "--profile",
                    str(self.network_root / organization),
                    "--interval",
                    str(interval),
                ],
            )

    def wait_until_ready(
        self, timeout: float = _START_TIMEOUT, cancel: threading.Event | None = None
    ) -> None:
        """Wait until every service launched so far answers; raise if one died.

        Setting ``cancel`` (from another thread) ends the wait early.
        """
        deadline = time.monotonic() + timeout
        while self._pending and not (cancel is not None and cancel.is_set()):
            for process in self.processes:
                process.check_alive()
            self._pending = [r for r in self._pending if not r.check()]
            if not self._pending:
                break
            if time.monotonic() > deadline:
                late = self._pending[0].process
                raise LocalServiceError(
                    f"{late.name} is not ready after {timeout:.0f} s; "
                    f"its log is {late.log_path}"
                )
            time.sleep(_POLL_SECONDS)

    def check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()

    # -- stopping

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop every service: all asked at once, killed after ``timeout``."""
        stop_process_groups([p.process for p in self.processes], timeout)
        for process in self.processes:
            logger.info("service stopped name=%s pid=%d", process.name, process.pid)
        self.processes.clear()
        self._pending.clear()


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False
