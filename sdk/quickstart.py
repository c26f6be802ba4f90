"""``airfed quickstart``: a federated compute plan on a real data set, here.

:func:`run_quickstart` does everything a newcomer needs to see airfed work,
on this machine and on loopback only:

1. creates a network of organizations (``org1``, ``org2``, ...) in a work
   folder: their keys and certificates, ``node.yaml`` each;
2. starts the ledger's log and each organization's node (which runs the
   organization's ledger witness) as local processes, and the orchestrator
   (Airflow on SQLite with its LocalExecutor), while the data and the
   function are written;
3. gives each organization its share of the Wisconsin breast cancer set
   (scikit-learn; a seeded IID partition, a held-out test part each) and
   registers it on the organization's own node as a dataset with two data
   samples (training and test);
4. registers a logistic model's train, aggregate and evaluate functions on
   every node, builds a plan with the chosen strategy (Federated Averaging
   by default) plus each organization's local-only baseline, submits it, and
   follows it round by round;
5. collects the accuracy of every round, federated model against
   local-only models, and stops everything it started, also on Ctrl-C and
   on errors.

Work folder layout: ``network/`` (the network; ``network/<org>`` is each
organization's profile), ``airflow/`` (``AIRFLOW_HOME``, with Airflow's
logs), ``data/`` (each organization's data sample folders and the opener),
``function/`` (the registered code), ``logs/`` (nodes, ledger, quickstart)
and ``quickstart.json`` (the processes and ports this run uses).
"""

from __future__ import annotations

import _thread
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from airfed.sdk._airflow import RunningOrchestrator, start_orchestrator
from airfed.sdk.algorithms import Algorithm, AlgorithmPackage, package_algorithm
from airfed.sdk.client import Client
from airfed.sdk.datasets import (
    make_federated_dataset,
    write_opener,
    write_organization_data,
)
from airfed.sdk.errors import AirfedError
from airfed.sdk.evaluation import Evaluation
from airfed.sdk.local import (
    LocalProcess,
    LocalServices,
    free_port,
    free_port_block,
    stop_process_groups,
)
from airfed.sdk.network import init_network
from airfed.sdk.orchestrator import FINAL_PLAN_STATUSES, dag_id_for
from airfed.sdk.performance import (
    FEDERATED,
    MODEL_LABEL_KEY,
    PerformanceTable,
    performance_table,
)
from airfed.sdk.profile import write_profile
from airfed.sdk.spec import Permission, Permissions, PlanSpec
from airfed.sdk.strategies import (
    Federation,
    Krum,
    OrganizationData,
    Strategy,
    make_strategy,
    register_package,
)

__all__ = [
    "DEFAULT_WORKDIR",
    "METRICS",
    "QUICKSTART_FILE",
    "QuickstartError",
    "QuickstartOptions",
    "QuickstartResult",
    "algorithm_for",
    "organization_ids",
    "prepare_workdir",
    "quickstart_plan",
    "run_quickstart",
    "stop_on_sigterm",
]

logger = logging.getLogger(__name__)

DEFAULT_WORKDIR = Path("airfed-work")
QUICKSTART_FILE = "quickstart.json"
METRICS = ("accuracy",)
MAX_NODES = 20
_OWN_ENTRIES = ("network", "airflow", "data", "function", "logs", QUICKSTART_FILE)
_DATA_SET = "breast_cancer"
_POLL_SECONDS = 2.0
_STOP_GRACE = 10.0
# Airflow's four components import for minutes on a slow or busy machine; a
# component that dies fails the start at once.
_AIRFLOW_START_TIMEOUT = 600.0


class QuickstartError(AirfedError):  # type: ignore[misc,unused-ignore]
    """The quickstart cannot start, or something it started failed."""


@dataclass(frozen=True)
class QuickstartOptions:
    """What ``airfed quickstart`` takes on its command line."""

    workdir: Path = DEFAULT_WORKDIR
    nodes: int = 3
    rounds: int = 3
    strategy: str = "fedavg"
    force: bool = False
    keep_running: bool = False
    seed: int = 0
    orchestrator_port: int = 8080
    base_port: int = 7400


@dataclass(frozen=True)
class QuickstartResult:
    """How the plan ended and its metrics per round, by model."""

    status: str
    plan_key: str
    table: PerformanceTable
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status == "done"

    def to_json(self) -> dict[str, Any]:
        """``status``, ``plan_key`` and ``performances``: ``{model: {metric:
        {round: value}}}`` with models ``federated`` and ``local:<org>``."""
        data: dict[str, Any] = {
            "status": self.status,
            "plan_key": self.plan_key,
            "performances": self.table.to_json(),
        }
        if self.error is not None:
            data["error"] = self.error
        return data


def organization_ids(count: int) -> list[str]:
    """``org1`` to ``org<count>``."""
    return [f"org{index}" for index in range(1, count + 1)]


# -- the work folder ------------------------------------------------------------


def prepare_workdir(workdir: Path, *, force: bool) -> Path:
    """Make ``workdir`` ready for a new run; return its absolute path.

    A missing or empty folder is used as is; an earlier quickstart's folder is
    replaced. Any other content is refused unless ``force`` is given, which
    replaces only what a quickstart writes (and leaves the rest alone). A
    quickstart still running in the folder is always refused.
    """
    workdir = Path(workdir).expanduser().resolve()
    if workdir.exists() and not workdir.is_dir():
        raise QuickstartError(f"work folder {workdir} is a file; choose another")
    if not workdir.exists():
        workdir.mkdir(parents=True)
        return workdir
    entries = sorted(p.name for p in workdir.iterdir())
    state = workdir / QUICKSTART_FILE
    if state.is_file():
        running = _running_pid(state)
        if running is not None:
            raise QuickstartError(
                f"a quickstart is still running in {workdir} (pid {running}); "
                "stop it with Ctrl-C, or choose another --workdir"
            )
    elif entries and not force:
        raise QuickstartError(
            f"work folder {workdir} is not empty (it holds {entries[0]}"
            f"{' and more' if len(entries) > 1 else ''}); pass --force to replace "
            "what a quickstart writes there, or choose another --workdir"
        )
    for name in _OWN_ENTRIES:
        _remove(workdir / name)
    return workdir


def _running_pid(state: Path) -> int | None:
    try:
        pid = int(json.loads(state.read_text()).get("pid", 0))
    except (OSError, ValueError, AttributeError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"quickstart" in cmdline else None


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@dataclass
class _State:
    """``quickstart.json``: this run's pid, the processes it started, ports."""

    path: Path
    processes: dict[str, int] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    status: str = "starting"

    def add_process(self, process: LocalProcess) -> None:
        self.processes[process.name] = process.pid
        self.save()

    def save(self) -> None:
        data = {
            "pid": os.getpid(),
            "status": self.status,
            "processes": self.processes,
            "ports": self.ports,
        }
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(data, indent=1))
        partial.replace(self.path)


# -- data, functions and plan ---------------------------------------------------


@dataclass(frozen=True)
class _OrganizationFiles:
    organization: str
    train: Path
    test: Path


def _write_data(
    folder: Path, organizations: list[str], seed: int
) -> tuple[Path, list[_OrganizationFiles]]:
    data = make_federated_dataset(_DATA_SET, organizations, scheme="iid", seed=seed)
    opener = write_opener(folder / "opener.py")
    files = []
    for split in data.splits:
        train, test = write_organization_data(split, folder / split.organization)
        files.append(_OrganizationFiles(split.organization, train, test))
    return opener, files


def quickstart_plan(
    strategy: Strategy, federation: Federation, rounds: int
) -> PlanSpec:
    """The quickstart's plan: ``strategy`` for ``rounds`` rounds, each
    organization's local-only baseline, every model tested after every
    round (local-only models on their own organization's test data)."""
    return strategy.build_plan(
        federation,
        rounds=rounds,
        evaluation=Evaluation(local_models_tested_on="own"),
        local_baselines=True,
        name=f"quickstart: {strategy.name} on breast cancer",
    )


def algorithm_for(strategy: Strategy) -> type[Algorithm]:
    """The quickstart's model: NumPy, or PyTorch for a strategy that changes
    local gradients (FedProx, SCAFFOLD)."""
    from airfed.sdk._quickstart_models import (
        BreastCancerLogistic,
        BreastCancerTorchLogistic,
    )

    rules = strategy.train_rules(None)
    if rules.proximal_mu > 0 or rules.scaffold:
        return BreastCancerTorchLogistic
    return BreastCancerLogistic


def _register_dataset(
    profile: Path, opener: Path, files: _OrganizationFiles, everyone: tuple[str, ...]
) -> OrganizationData:
    """Register an organization's dataset on its own node, with its client."""
    with Client(profile) as own:
        dataset = own.register_dataset(
            f"breast cancer ({files.organization})",
            opener,
            description=(
                "Wisconsin breast cancer: this organization's share, "
                "a training and a held-out test data sample"
            ),
            permissions=Permissions(process=Permission(authorized_ids=everyone)),
            logs_permission=Permission(authorized_ids=everyone),
        )
        train = own.add_samples(dataset["key"], [files.train])[0]
        test = own.add_samples(dataset["key"], [files.test])[0]
    return OrganizationData(
        files.organization,
        str(dataset["key"]),
        (str(train["key"]),),
        (str(test["key"]),),
    )


def _table_metadata(spec: PlanSpec) -> dict[str, dict[str, str]]:
    """Which model each test task evaluates, in the words of
    :func:`~airfed.sdk.performance.performance_table`."""
    metadata: dict[str, dict[str, str]] = {}
    for task in spec.tasks:
        label = task.metadata.get(MODEL_LABEL_KEY, FEDERATED)
        if label.startswith("local:"):
            metadata[task.key] = {"model": "local", "organization": label[6:]}
        else:
            metadata[task.key] = {"model": FEDERATED}
    return metadata


# -- following the plan ---------------------------------------------------------


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _round_label(round_: int) -> str:
    return "initial model" if round_ == 0 else f"round {round_}"


def _follow(
    client: Client,
    spec: PlanSpec,
    out: Console,
    check_alive: Callable[[], None],
    timeout: float,
) -> dict[str, Any]:
    """Poll the plan, one progress bar per round, until it ends."""
    totals: dict[int, int] = {}
    for task in spec.tasks:
        totals[task.round] = totals.get(task.round, 0) + 1
    columns = (
        TextColumn("{task.description:>14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=out, transient=False) as bar:
        lines = {
            r: bar.add_task(_round_label(r), total=n, detail="")
            for r, n in sorted(totals.items())
        }

        def show(status: dict[str, Any]) -> None:
            check_alive()
            progress = client.progress(spec.key, status)
            for round_, line in lines.items():
                counts = progress.by_round.get(round_, {})
                pending = ", ".join(
                    f"{n} {state}"
                    for state, n in sorted(counts.items())
                    if state != "done" and n
                )
                bar.update(line, completed=counts.get("done", 0), detail=pending)

        status = client.wait(
            spec.key, timeout=timeout, poll_seconds=_POLL_SECONDS, on_progress=show
        )
    return status


def _failure(client: Client, status: Mapping[str, Any]) -> str:
    """What went wrong: the first failed task and, if its node says, why."""
    state = str(status.get("status"))
    failed = [t for t in status.get("tasks") or () if t.get("state") == "failed"]
    if not failed:
        return f"the compute plan ended {state}"
    task = failed[0]
    reason = ""
    with contextlib.suppress(AirfedError):
        error = client.node(str(task["worker"])).get_task(str(task["task_key"]))
        lines = str(error.get("error") or "").strip().splitlines()
        reason = f": {lines[-1]}" if lines else ""
    return f"task {task['task_id']} on {task['worker']} failed{reason}"


# -- the run ----------------------------------------------------------------------


@dataclass
class _Run:
    options: QuickstartOptions
    workdir: Path
    out: Console
    started: float = field(default_factory=time.monotonic)

    @property
    def network_root(self) -> Path:
        return self.workdir / "network"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def step(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        self.out.print(f"[dim]{elapsed:6.1f}s[/dim] {message}", highlight=False)
        logger.info("quickstart step=%s", message)

    def logs_hint(self) -> str:
        return f"logs are in {self.log_dir} and {self.workdir / 'airflow' / 'logs'}"


def run_quickstart(
    options: QuickstartOptions,
    out: Console,
    *,
    on_result: Callable[[QuickstartResult], None] | None = None,
) -> QuickstartResult:
    """Run the quickstart (see the module); ``on_result`` sees the result while
    everything still runs (before ``keep_running`` waits for Ctrl-C)."""
    _check_options(options)
    strategy = make_strategy(options.strategy)
    _check_strategy(strategy, options.nodes)
    workdir = prepare_workdir(options.workdir, force=options.force)
    run = _Run(options, workdir, out)
    run.log_dir.mkdir(parents=True, exist_ok=True)
    state = _State(workdir / QUICKSTART_FILE)
    state.save()
    with _log_to(run.log_dir / "quickstart.log"):
        try:
            return _run(run, strategy, state, on_result)
        except AirfedError as exc:
            logger.exception("quickstart failed")
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
            raise QuickstartError(f"{message} ({run.logs_hint()})") from exc
        except Exception as exc:
            logger.exception("quickstart failed")
            raise QuickstartError(
                f"unexpected {type(exc).__name__}: {exc} ({run.logs_hint()})"
            ) from exc
        finally:
            state.status = "stopped"
            state.save()


def _check_options(options: QuickstartOptions) -> None:
    if not 1 <= options.nodes <= MAX_NODES:
        raise QuickstartError(
            f"--nodes must be between 1 and {MAX_NODES}, not {options.nodes}"
        )
    if options.rounds < 1:
        raise QuickstartError(f"--rounds must be at least 1, not {options.rounds}")


def _check_strategy(strategy: Strategy, organizations: int) -> None:
    if isinstance(strategy, Krum):
        needed = 2 * strategy.byzantine + 3
        if 1 < organizations < needed:
            raise QuickstartError(
                f"krum with {strategy.byzantine} byzantine organizations needs at "
                f"least {needed} organizations; pass --nodes {needed} or more"
            )


def _run(
    run: _Run,
    strategy: Strategy,
    state: _State,
    on_result: Callable[[QuickstartResult], None] | None,
) -> QuickstartResult:
    options = run.options
    organizations = organization_ids(options.nodes)
    base_port = free_port_block(2 * len(organizations) + 1, options.base_port)
    init_network(
        run.network_root, organizations, base_port=base_port, name="airfed-quickstart"
    )
    state.ports = list(range(base_port, base_port + 2 * len(organizations) + 1))
    run.step(
        f"network of {_count(len(organizations), 'organization')} in "
        f"{run.network_root} "
        f"({', '.join(organizations)})"
    )
    with contextlib.ExitStack() as stack:
        services = stack.enter_context(
            LocalServices(run.network_root, run.log_dir, on_start=state.add_process)
        )
        services.start_ledger()  # each node runs its organization's witness
        for organization in organizations:
            services.start_node(organization)
        run.step("ledger log and nodes starting")
        preparation = _Preparation(run, services, organizations, strategy)
        preparation.start()
        stack.callback(preparation.cancel)
        port = free_port(options.orchestrator_port)
        state.ports.append(port)
        state.save()
        run.step(f"starting Airflow on 127.0.0.1:{port} (SQLite, LocalExecutor)")
        try:
            orchestrator = stack.enter_context(
                start_orchestrator(
                    run.workdir / "airflow",
                    run.network_root,
                    port=port,
                    extra_environment={"AIRFLOW__AIRFED__LEDGER": "on"},
                    startup_timeout=_AIRFLOW_START_TIMEOUT,
                )
            )
            state.processes.update(
                {f"airflow-{n}": p.pid for n, p in orchestrator.processes.items()}
            )
            state.status = "running"
            state.save()
            opener, files, package = preparation.outcome()
        except KeyboardInterrupt:
            preparation.raise_failure()  # a node that died stopped the start
            raise
        run.step(f"Airflow is up at {orchestrator.url}; every node answers")
        # Run first when the block ends, last registered first: a second
        # Ctrl-C must not cut the stopping short, and every process is asked
        # to stop at once (Airflow's components take seconds each).
        stack.callback(
            stop_process_groups,
            [
                *orchestrator.processes.values(),
                *(p.process for p in services.processes),
            ],
            _STOP_GRACE,
        )
        stack.callback(_ignore_stop_signals)

        def check_alive() -> None:
            services.check_alive()
            orchestrator.check_alive()

        plan = _PlanInputs(strategy, organizations, opener, files, package)
        result = _run_plan(run, plan, orchestrator, check_alive)
        if on_result is not None:
            on_result(result)
        if options.keep_running:
            _hold(run, orchestrator, result, check_alive)
        run.step("stopping every process")
    return result


class _Preparation(threading.Thread):
    """What runs while Airflow starts: the organizations' data and the
    function are written, and the nodes are waited for. A node that dies
    interrupts the main thread (like Ctrl-C), which then reports the node."""

    def __init__(
        self,
        run: _Run,
        services: LocalServices,
        organizations: list[str],
        strategy: Strategy,
    ) -> None:
        super().__init__(name="quickstart-preparation", daemon=True)
        self._run_ = run
        self._services = services
        self._organizations = organizations
        self._strategy = strategy
        self._cancel = threading.Event()
        self._failure: BaseException | None = None
        self._result: tuple[Path, list[_OrganizationFiles], AlgorithmPackage] | None
        self._result = None

    def run(self) -> None:
        try:
            workdir = self._run_.workdir
            opener, files = _write_data(
                workdir / "data", self._organizations, self._run_.options.seed
            )
            package = package_algorithm(
                algorithm_for(self._strategy),
                workdir / "function",
                name="breast cancer logistic model",
                metrics=METRICS,
            )
            self._services.wait_until_ready(cancel=self._cancel)
            self._result = (opener, files, package)
        except BaseException as exc:  # reported by the main thread
            self._failure = exc
            if not self._cancel.is_set():
                _thread.interrupt_main()

    def cancel(self) -> None:
        """Stop waiting (the run is ending); never interrupt the main thread."""
        self._cancel.set()
        self.join()

    def raise_failure(self) -> None:
        """Raise what failed here, if anything did."""
        if self._failure is not None:
            raise self._failure

    def outcome(self) -> tuple[Path, list[_OrganizationFiles], AlgorithmPackage]:
        self.join()
        self.raise_failure()
        assert self._result is not None
        return self._result


@dataclass(frozen=True)
class _PlanInputs:
    strategy: Strategy
    organizations: list[str]
    opener: Path
    files: list[_OrganizationFiles]
    package: AlgorithmPackage


def _run_plan(
    run: _Run,
    plan: _PlanInputs,
    orchestrator: RunningOrchestrator,
    check_alive: Callable[[], None],
) -> QuickstartResult:
    strategy = plan.strategy
    creator = plan.organizations[0]
    everyone = tuple(plan.organizations)
    write_profile(
        run.network_root / creator,
        orchestrator_url=orchestrator.url,
        username=orchestrator.username,
        password=orchestrator.password,
    )
    data = tuple(
        _register_dataset(run.network_root / f.organization, plan.opener, f, everyone)
        for f in plan.files
    )
    run.step("datasets registered: a training and a test data sample per organization")
    with Client(run.network_root / creator) as client:
        functions = register_package(client, plan.package)
        run.step("train, aggregate and evaluate functions registered on every node")
        spec = quickstart_plan(
            strategy, Federation(data, functions, creator), run.options.rounds
        )
        client.submit(spec)
        run.step(
            f"plan {spec.key} submitted: {strategy.name}, "
            f"{_count(run.options.rounds, 'round')}, {len(spec.tasks)} tasks "
            f"(DAG {dag_id_for(spec.key)})"
        )
        try:
            status = _follow(
                client, spec, run.out, check_alive, 1200 + 120 * run.options.rounds
            )
        except BaseException:
            _cancel_quietly(client, spec.key)
            raise
        outcome = str(status.get("status"))
        table = performance_table(client.performances(spec.key), _table_metadata(spec))
        if outcome == "success":
            run.step("plan done")
            return QuickstartResult("done", spec.key, table)
        error = f"{_failure(client, status)}; {run.logs_hint()}"
        return QuickstartResult(outcome, spec.key, table, error)


def _cancel_quietly(client: Client, plan_key: str) -> None:
    with contextlib.suppress(Exception):
        if str(client.plan_status(plan_key).get("status")) not in FINAL_PLAN_STATUSES:
            client.cancel(plan_key)


def _hold(
    run: _Run,
    orchestrator: RunningOrchestrator,
    result: QuickstartResult,
    check_alive: Callable[[], None],
) -> None:
    """Leave everything up until Ctrl-C (or SIGTERM)."""
    profile = run.network_root / organization_ids(1)[0]
    run.out.print(
        f"\nAirflow UI: {orchestrator.url}  (login {orchestrator.username} / "
        f"{orchestrator.password})\n"
        f"The plan's DAG: {orchestrator.url}/dags/{dag_id_for(result.plan_key)}\n"
        f"From the command line: airfed plan show {result.plan_key} "
        f"--profile {profile}\n"
        "Press Ctrl-C to stop everything.",
        highlight=False,
    )
    try:
        while True:
            time.sleep(1.0)
            check_alive()
    except KeyboardInterrupt:
        run.out.print("")


def _ignore_stop_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Log airfed's records to ``path`` while the block runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger("airfed")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    previous = _signal_handlers()
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
        _restore_signal_handlers(previous)


def _signal_handlers() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(handlers: Mapping[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """Make SIGTERM stop the quickstart the way Ctrl-C does."""
    signal.signal(signal.SIGTERM, _interrupt)
