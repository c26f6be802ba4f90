"""Running the orchestrator: Airflow's four components as child processes.

:func:`start_orchestrator` prepares an ``AIRFLOW_HOME`` (secrets shared by
the components, the login, the plans folder), migrates the metadata
database, starts ``api-server`` on 127.0.0.1, ``scheduler``,
``dag-processor`` and ``triggerer`` (without their log servers, which would
listen on every interface), waits until Airflow reports every component
healthy, and stops them all by pid when the ``with`` block ends. With the
ledger on, it also runs the ledger relay (``airfed.sdk._ledger_relay``) in
this process, through which the task processes write their ledger entries.

Airflow reads the repository's ``airflow.cfg`` (``AIRFLOW_CONFIG``); what
depends on the run is set through ``AIRFLOW__<SECTION>__<KEY>`` variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from airfed.sdk.errors import ConfigError, OrchestratorError
from airfed.sdk.network import ORCHESTRATOR_ID
from airfed.sdk.orchestrator import OrchestratorClient

if TYPE_CHECKING:
    from airfed.sdk._ledger_relay import LedgerRelay

__all__ = [
    "COMPONENTS",
    "RunningOrchestrator",
    "airflow_config_file",
    "airflow_environment",
    "start_orchestrator",
]

_RELAY_ENV = "AIRFLOW__AIRFED__LEDGER_RELAY"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
_DEFAULT_PORT = 8080
_STOP_TIMEOUT = 20.0
_HEALTH_KEYS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


def _dags_folder() -> Path:
    import airfed.dags

    return Path(airfed.dags.__file__).resolve().parent


def airflow_config_file() -> Path:
    """The ``airflow.cfg`` airfed runs with (``AIRFED_AIRFLOW_CONFIG`` overrides)."""
    override = os.environ.get("AIRFED_AIRFLOW_CONFIG")
    path = Path(override) if override else _dags_folder().parent / "airflow.cfg"
    if not path.is_file():
        raise ConfigError(
            f"Airflow configuration {path} not found; set AIRFED_AIRFLOW_CONFIG "
            "to the airflow.cfg of an airfed checkout"
        )
    return path


@dataclass(frozen=True)
class _Secrets:
    jwt_secret: str
    fernet_key: str
    secret_key: str
    password: str


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _home_secrets(home: Path, password: str | None) -> _Secrets:
    """Secrets every component must share; made once per home, kept 0600."""
    path = home / "airfed-secrets.json"
    stored: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    if not stored:
        from cryptography.fernet import Fernet

        stored = {
            "jwt_secret": secrets.token_urlsafe(48),
            "fernet_key": Fernet.generate_key().decode(),
            "secret_key": secrets.token_urlsafe(32),
            "password": secrets.token_urlsafe(12),
        }
    if password is not None:
        stored["password"] = password
    _write_private(path, json.dumps(stored, indent=1))
    return _Secrets(**stored)


def airflow_environment(
    home: Path,
    network: Path,
    *,
    port: int = _DEFAULT_PORT,
    database_url: str | None = None,
    username: str = "admin",
    password: str | None = None,
) -> dict[str, str]:
    """The environment Airflow's commands need for this home (creates secrets)."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    (home / "plans").mkdir(exist_ok=True)
    shared = _home_secrets(home, password)
    passwords = home / "simple_auth_manager_passwords.json"
    _write_private(passwords, json.dumps({username: shared.password}))
    base_url = f"http://127.0.0.1:{port}"
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW_CONFIG": str(airflow_config_file()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(_dags_folder()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{username}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__CORE__FERNET_KEY": shared.fernet_key,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__API__SECRET_KEY": shared.secret_key,
        "AIRFLOW__API_AUTH__JWT_SECRET": shared.jwt_secret,
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(home / "bundles"),
        "AIRFLOW__AIRFED__NETWORK": str(Path(network).resolve()),
        "AIRFLOW__AIRFED__PLANS_FOLDER": str(home / "plans"),
        "PYTHONUNBUFFERED": "1",
    }
    if database_url:
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = database_url
    return env


@dataclass
class RunningOrchestrator:
    """Airflow started by :func:`start_orchestrator`."""

    home: Path
    url: str
    username: str
    password: str
    environment: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ledger_relay: LedgerRelay | None = None

    @property
    def plans_folder(self) -> Path:
        return self.home / "plans"

    def client(self) -> OrchestratorClient:
        return OrchestratorClient(self.url, self.username, self.password)

    def log_path(self, component: str) -> Path:
        return self.home / "logs" / f"{component}.log"

    def log_tail(self, component: str, lines: int = 40) -> str:
        path = self.log_path(component)
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise OrchestratorError(
                    f"airflow {name} exited with status {process.returncode}; "
                    f"its log is {self.log_path(name)}:\n{self.log_tail(name)}"
                )

    def stop(self) -> None:
        """Stop every component: SIGTERM to its process group, then SIGKILL."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=5)
        for process in self.processes.values():
            # Workers the executor forked may outlive their parent.
            _signal_group(process, signal.SIGKILL)
        self.processes.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _airflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "airflow", *args]


def _component_command(name: str, port: int) -> list[str]:
    if name == "api-server":
        return _airflow("api-server", "--host", "127.0.0.1", "--port", str(port))
    if name in ("scheduler", "triggerer"):
        return _airflow(name, "--skip-serve-logs")
    return _airflow(name)


def _migrate(env: Mapping[str, str], home: Path) -> None:
    log = home / "logs" / "db-migrate.log"
    with log.open("wb") as out:
        result = subprocess.run(
            _airflow("db", "migrate"),
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=600,
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise OrchestratorError(
            f"'airflow db migrate' failed (status {result.returncode}); "
            f"see {log}:\n{tail}"
        )


def _launch(
    name: str, env: Mapping[str, str], home: Path, port: int
) -> subprocess.Popen[bytes]:
    log = (home / "logs" / f"{name}.log").open("ab")
    try:
        return subprocess.Popen(
            _component_command(name, port),
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        log.close()


def _healthy(url: str) -> bool:
    try:
        response = httpx.get(f"{url}/api/v2/monitor/health", timeout=5.0)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    body = response.json()
    return all((body.get(key) or {}).get("status") == "healthy" for key in _HEALTH_KEYS)


def _wait_healthy(running: RunningOrchestrator, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not _healthy(running.url):
        running.check_alive()
        if time.monotonic() > deadline:
            raise OrchestratorError(
                f"Airflow at {running.url} is not healthy after {timeout:.0f} s; "
                f"see the logs in {running.home / 'logs'}"
            )
        time.sleep(0.5)
    _warm_execution_api(running.url, max(5.0, deadline - time.monotonic()))


def _warm_execution_api(url: str, timeout: float) -> None:
    """Have the api-server build its Execution API before any task calls it.

    The api-server builds the Execution API (the one task processes call) on
    its first request, which takes several seconds; a task that came first
    would time out, retry, and start its plan seconds late.
    """
    try:
        response = httpx.get(f"{url}/execution/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise OrchestratorError(
            f"Airflow's Execution API at {url}/execution does not answer: {exc}"
        ) from exc
    if response.status_code != 200:
        raise OrchestratorError(
            f"Airflow's Execution API at {url}/execution answered "
            f"{response.status_code}"
        )


@contextlib.contextmanager
def start_orchestrator(
    home: Path,
    network: Path,
    *,
    port: int = _DEFAULT_PORT,
    database_url: str | None = None,
    username: str = "admin",
    password: str | None = None,
    extra_environment: Mapping[str, str] | None = None,
    startup_timeout: float = 240.0,
) -> Iterator[RunningOrchestrator]:
    """Run Airflow for airfed until the ``with`` block ends."""
    if not (Path(network) / "network.yaml").is_file():
        raise ConfigError(
            f"{network} holds no network.yaml; create one with 'airfed network init'"
        )
    env = {**os.environ}
    env.update(
        airflow_environment(
            home,
            network,
            port=port,
            database_url=database_url,
            username=username,
            password=password,
        )
    )
    env.update(extra_environment or {})
    home = Path(env["AIRFLOW_HOME"])
    (home / "logs").mkdir(parents=True, exist_ok=True)
    _migrate(env, home)
    secrets_file = json.loads((home / "airfed-secrets.json").read_text())
    running = RunningOrchestrator(
        home=home,
        url=env["AIRFLOW__API__BASE_URL"],
        username=username,
        password=str(secrets_file["password"]),
        environment=env,
    )
    relay = running.ledger_relay = _start_relay(env, Path(network), home)
    try:
        for name in COMPONENTS:
            running.processes[name] = _launch(name, env, home, port)
        _wait_healthy(running, startup_timeout)
        yield running
    finally:
        running.stop()
        if relay is not None:
            relay.stop()


def _start_relay(env: dict[str, str], network: Path, home: Path) -> LedgerRelay | None:
    """The ledger relay for the task processes, when the ledger is on.

    Sets ``[airfed] ledger_relay`` in ``env``; a value already there (even
    empty, which keeps every process on its own channel) is left alone.
    """
    ledger = env.get("AIRFLOW__AIRFED__LEDGER", "off").strip().lower()
    if ledger not in ("on", "true", "yes", "1") or _RELAY_ENV in env:
        return None
    from airfed.sdk._ledger_relay import LedgerRelay

    relay = LedgerRelay.in_folder(network.resolve() / ORCHESTRATOR_ID, home)
    env[_RELAY_ENV] = str(relay.socket_path)
    return relay
