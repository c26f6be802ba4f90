"""Accuracy benchmark: federated strategies against pooled and local-only training.

Runs in simulation (``airfed.sdk.simulation``: every task through the node's
runtime, in process). For each setting (data set and model, 3 or 10
organizations, IID or Dirichlet(0.5) split, seeded) it measures, on the union
of the organizations' held-out test parts:

- pooled: one organization holding all training data, trained for as many
  local steps as all organizations together in the federated plans (the
  limit, which only a benchmark can compute);
- local-only mean: each organization trains alone with the federated budget
  (same rounds and local steps), the mean of their accuracies;
- every strategy of ``airfed.sdk.strategies``, at its default settings.

The round budget is 15 rounds on breast cancer and 30 on digits, where the
CNN needs that many to converge when its steps are averaged across
organizations; pooled training gets the same total number of steps.

Targets: FedAvg within 1 point of pooled on IID splits and within 3 on
non-IID; every federated strategy above the local-only mean on non-IID.

    .venv/bin/python benchmarks/accuracy.py            # everything, 2 processes
    .venv/bin/python benchmarks/accuracy.py --quick    # one setting, smoke run
    # one cell: a setting and some strategies, printed, nothing written
    .venv/bin/python benchmarks/accuracy.py --dataset digits --organizations 3 \
        --split dirichlet --strategies fedavg,cyclic
    # or in two commands, one per data set, then the table:
    .venv/bin/python benchmarks/accuracy.py --dataset breast_cancer --jobs 1 &
    .venv/bin/python benchmarks/accuracy.py --dataset digits --jobs 1; wait
    .venv/bin/python benchmarks/accuracy.py --report

Writes ``benchmarks/results/accuracy.json`` and ``accuracy.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_models import BreastCancerLogistic, BreastCancerMLP, DigitsCNN

from airfed.sdk.algorithms import Algorithm, TrainRules
from airfed.sdk.datasets import (
    FederatedDataset,
    OrganizationSplit,
    make_federated_dataset,
)
from airfed.sdk.evaluation import Evaluation
from airfed.sdk.privacy import DifferentialPrivacy
from airfed.sdk.simulation import SimulationResult, prepare_local_federation, simulate
from airfed.sdk.strategies import (
    STRATEGIES,
    SingleOrganization,
    Strategy,
    make_strategy,
)

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 2026
NOT_FEDERATED = {"single_organization"}


@dataclass(frozen=True)
class Setting:
    dataset: str
    model: type[Algorithm]
    organizations: int
    scheme: str
    rounds: int

    @property
    def label(self) -> str:
        split = "IID" if self.scheme == "iid" else "Dirichlet 0.5"
        model = self.model.__name__
        return f"{self.dataset} / {model} / {self.organizations} orgs / {split}"

    @property
    def cost(self) -> int:
        """Rough relative run time, to start the longest settings first."""
        per_task = 4 if self.dataset == "digits" else 1
        return per_task * self.organizations * self.rounds


MODELS: dict[str, tuple[str, type[Algorithm], int]] = {
    "BreastCancerLogistic": ("breast_cancer", BreastCancerLogistic, 15),
    "BreastCancerMLP": ("breast_cancer", BreastCancerMLP, 15),
    "DigitsCNN": ("digits", DigitsCNN, 30),
}


def settings(args: argparse.Namespace) -> list[Setting]:
    if args.quick:
        return [Setting("breast_cancer", BreastCancerLogistic, 3, "dirichlet", 10)]
    return [
        Setting(name, model, n, scheme, args.rounds or rounds)
        for model_name, (name, model, rounds) in MODELS.items()
        for n in (3, 10)
        for scheme in ("iid", "dirichlet")
        if args.dataset in (None, name)
        and args.model in (None, model_name)
        and args.organizations in (None, n)
        and args.split in (None, scheme)
    ]


def _union_accuracy(
    result: SimulationResult, model: str, data: FederatedDataset
) -> float:
    """Accuracy on the union of the test parts: test-size-weighted mean."""
    result_rounds = result.values("accuracy", model)
    if result.status != "done" or not result_rounds:
        raise RuntimeError(f"simulation {result.status}: {result.error}")
    final = result_rounds[max(result_rounds)]
    sizes = {s.organization: len(s.y_test) for s in data.splits}
    total = sum(sizes[o] for o in final)
    return 100 * sum(final[o] * sizes[o] for o in final) / total


@dataclass(frozen=True)
class _PooledTraining(SingleOrganization):
    """One organization with every training sample, making in each round the
    local steps of all organizations together: the same steps, in the same
    order, as that many rounds of the algorithm's own budget, in fewer tasks."""

    name: ClassVar[str] = "pooled"
    organizations: int = 1

    def train_rules(self, privacy: DifferentialPrivacy | None) -> TrainRules:
        return TrainRules(privacy=privacy, step_fraction=float(self.organizations))


def _pooled(setting: Setting, data: FederatedDataset, root: Path) -> float:
    x_train, y_train = data.pooled_train()
    x_test, y_test = data.pooled_test()
    pooled = FederatedDataset(
        data.name,
        data.scheme,
        data.num_classes,
        data.num_features,
        (OrganizationSplit("pooled", x_train, y_train, x_test, y_test),),
    )
    federation, assets = prepare_local_federation(
        pooled, setting.model, root / "pooled"
    )
    spec = _PooledTraining(organizations=setting.organizations).build_plan(
        federation, rounds=setting.rounds, evaluation=Evaluation(every=None)
    )
    return _union_accuracy(simulate(spec, assets), "federated", pooled)


def run_setting(
    setting: Setting, root: Path, strategies: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Pooled, local-only and each strategy (all, or those named) on a setting."""
    names = [f"o{i}" for i in range(setting.organizations)]
    data = make_federated_dataset(
        setting.dataset, names, scheme=setting.scheme, seed=SEED
    )  # type: ignore[arg-type]
    federation, assets = prepare_local_federation(
        data, setting.model, root / "federated"
    )
    evaluation = Evaluation(every=None)
    row: dict[str, Any] = {"setting": setting.label, "strategies": {}}
    started, cpu = time.monotonic(), time.process_time()
    row["pooled"] = _pooled(setting, data, root)
    chosen = [n for n in STRATEGIES if not strategies or n in strategies]
    if "fedavg" not in chosen:
        chosen.insert(0, "fedavg")  # it carries the local-only baselines
    for name in chosen:
        strategy: Strategy = make_strategy(name)
        spec = strategy.build_plan(
            federation,
            rounds=setting.rounds,
            evaluation=evaluation,
            local_baselines=name == "fedavg",
        )
        result = simulate(spec, assets)
        row["strategies"][name] = _union_accuracy(result, "federated", data)
        if name == "fedavg":
            local = [_union_accuracy(result, f"local:{o}", data) for o in names]
            row["local_only"] = {o: a for o, a in zip(names, local, strict=True)}
            row["local_only_mean"] = sum(local) / len(local)
    row["seconds"] = time.monotonic() - started
    row["cpu_seconds"] = time.process_time() - cpu
    row["targets"] = check_targets(setting, row)
    return row


def check_targets(setting: Setting, row: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    fedavg_gap = row["pooled"] - row["strategies"]["fedavg"]
    allowed = 1.0 if setting.scheme == "iid" else 3.0
    checks.append(
        {
            "target": f"FedAvg within {allowed:g} point(s) of pooled",
            "met": fedavg_gap <= allowed,
            "detail": f"gap {fedavg_gap:.2f} points",
        }
    )
    if setting.scheme != "iid":
        for name, accuracy in row["strategies"].items():
            if name in NOT_FEDERATED:
                continue
            checks.append(
                {
                    "target": f"{name} above the local-only mean",
                    "met": accuracy > row["local_only_mean"],
                    "detail": f"{accuracy:.2f} vs {row['local_only_mean']:.2f}",
                }
            )
    return checks


def markdown(rows: list[dict[str, Any]], run: dict[str, Any]) -> str:
    names = list(STRATEGIES)
    header = ["setting", "pooled", "local-only mean", *names]
    lines = [
        "# Accuracy benchmark (simulation)",
        "",
        "Accuracy (%) on the union of the organizations' held-out test parts, "
        "after the last round. Command: `.venv/bin/python benchmarks/accuracy.py`.",
        f"Run: {run['wall_seconds']:.0f} s wall, {run['cpu_seconds']:.0f} CPU-s "
        f"({run['jobs']} processes) on {platform.machine()}, Python "
        f"{platform.python_version()}; load average {run['load_before']} before, "
        f"{run['load_after']} after; seed {SEED}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        cells = [
            row["setting"],
            f"{row['pooled']:.1f}",
            f"{row['local_only_mean']:.1f}",
        ]
        cells += [f"{row['strategies'][n]:.1f}" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    missed = [
        f"- {row['setting']}: {check['target']} — missed ({check['detail']})"
        for row in rows
        for check in row["targets"]
        if not check["met"]
    ]
    lines += ["", "## Targets", ""]
    met = sum(c["met"] for row in rows for c in row["targets"])
    total = sum(len(row["targets"]) for row in rows)
    lines.append(f"{met} of {total} target checks met.")
    if missed:
        lines += ["", "Missed:", "", *missed]
    return "\n".join(lines) + "\n"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small setting")
    parser.add_argument(
        "--dataset",
        choices=["breast_cancer", "digits"],
        help="run one data set's settings and write them as a part "
        "(accuracy.<dataset>.json); --report joins the parts",
    )
    parser.add_argument("--model", choices=list(MODELS), help="one model only")
    parser.add_argument("--organizations", type=int, choices=[3, 10])
    parser.add_argument("--split", choices=["iid", "dirichlet"])
    parser.add_argument(
        "--strategies",
        type=lambda text: tuple(text.split(",")),
        default=(),
        help="comma-separated strategy names (fedavg always runs: it carries "
        "the local-only baselines); the cell is printed, nothing is written",
    )
    parser.add_argument("--rounds", type=int, help="override the round budget")
    parser.add_argument(
        "--jobs", type=int, default=2, help="settings run in this many processes"
    )
    parser.add_argument(
        "--report", action="store_true", help="write the table from the parts"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    logging.basicConfig(level=logging.WARNING)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.report:
        parts = [
            json.loads(p.read_text())
            for p in sorted(args.output.glob("accuracy.*.json"))
        ]
        if not parts:
            sys.exit(
                f"no accuracy.<dataset>.json parts in {args.output}: run with "
                "--dataset first"
            )
        rows = [row for part in parts for row in part["settings"]]
        runs = [part["run"] for part in parts]
        joined = {
            "jobs": sum(r["jobs"] for r in runs),
            "wall_seconds": max(r["wall_seconds"] for r in runs),
            "cpu_seconds": sum(r["cpu_seconds"] for r in runs),
            "load_before": runs[0]["load_before"],
            "load_after": runs[-1]["load_after"],
        }
        _write(args.output, rows, joined)
        return
    partial = bool(
        args.strategies or args.model or args.organizations or args.split or args.rounds
    )
    run = {"jobs": args.jobs, "load_before": _load()}
    started = time.monotonic()
    rows = _run_all(settings(args), args.strategies, args.jobs)
    run.update(
        wall_seconds=time.monotonic() - started,
        cpu_seconds=_cpu_seconds(),
        load_after=_load(),
    )
    if partial:
        return  # a cell: printed only, the recorded results stay as they are
    if args.dataset:
        document = {"seed": SEED, "run": run, "settings": rows}
        part = args.output / f"accuracy.{args.dataset}.json"
        part.write_text(json.dumps(document, indent=1) + "\n")
    else:
        _write(args.output, rows, run)


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu_seconds() -> float:
    """CPU time of this process and of the worker processes it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(usage.ru_utime + usage.ru_stime for usage in (own, children))


def _run_one(setting: Setting, strategies: tuple[str, ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="airfed-accuracy-") as tmp:
        row = run_setting(setting, Path(tmp), strategies)
    fedavg = row["strategies"]["fedavg"]
    others = ", ".join(
        f"{n} {a:.1f}" for n, a in row["strategies"].items() if n != "fedavg"
    )
    print(
        f"{row['setting']}: pooled {row['pooled']:.1f}, local "
        f"{row['local_only_mean']:.1f}, fedavg {fedavg:.1f}; {others} "
        f"({row['seconds']:.0f} s, {row['cpu_seconds']:.0f} CPU-s)",
        flush=True,
    )
    return row


def _run_all(
    chosen: list[Setting], strategies: tuple[str, ...], jobs: int
) -> list[dict[str, Any]]:
    """Run the settings, the longest first, in ``jobs`` processes; rows come
    back in the order of ``chosen``."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process
    if jobs <= 1 or len(chosen) == 1:
        return [_run_one(setting, strategies) for setting in chosen]
    order = sorted(range(len(chosen)), key=lambda i: -chosen[i].cost)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {i: pool.submit(_run_one, chosen[i], strategies) for i in order}
        return [futures[i].result() for i in range(len(chosen))]


def _write(output: Path, rows: list[dict[str, Any]], run: dict[str, Any]) -> None:
    document = {"seed": SEED, "run": run, "settings": rows}
    (output / "accuracy.json").write_text(json.dumps(document, indent=1) + "\n")
    (output / "accuracy.md").write_text(markdown(rows, run))
    print((output / "accuracy.md").read_text())


if __name__ == "__main__":
    main()
