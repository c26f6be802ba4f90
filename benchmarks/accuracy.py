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

Targets: FedAvg within 1 point of pooled on IID splits and within 3 on
non-IID; every federated strategy above the local-only mean on non-IID.

    .venv/bin/python benchmarks/accuracy.py            # everything (~10 min)
    .venv/bin/python benchmarks/accuracy.py --quick    # one setting, smoke run
    # or in two processes, one per data set, then the table:
    .venv/bin/python benchmarks/accuracy.py --dataset breast_cancer &
    .venv/bin/python benchmarks/accuracy.py --dataset digits; wait
    .venv/bin/python benchmarks/accuracy.py --report

Writes ``benchmarks/results/accuracy.json`` and ``accuracy.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_models import BreastCancerLogistic, BreastCancerMLP, DigitsCNN

from airfed.sdk.algorithms import Algorithm
from airfed.sdk.datasets import (
    FederatedDataset,
    OrganizationSplit,
    make_federated_dataset,
)
from airfed.sdk.evaluation import Evaluation
from airfed.sdk.simulation import SimulationResult, prepare_local_federation, simulate
from airfed.sdk.strategies import STRATEGIES, Strategy, make_strategy

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


def settings(quick: bool, dataset: str | None = None) -> list[Setting]:
    models = [
        ("breast_cancer", BreastCancerLogistic, 15),
        ("breast_cancer", BreastCancerMLP, 15),
        ("digits", DigitsCNN, 15),
    ]
    if quick:
        return [Setting("breast_cancer", BreastCancerLogistic, 3, "dirichlet", 10)]
    return [
        Setting(name, model, n, scheme, rounds)
        for name, model, rounds in models
        for n in (3, 10)
        for scheme in ("iid", "dirichlet")
        if dataset in (None, name)
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
    rounds = setting.rounds * setting.organizations
    spec = make_strategy("single_organization").build_plan(
        federation, rounds=rounds, evaluation=Evaluation(every=None)
    )
    return _union_accuracy(simulate(spec, assets), "federated", pooled)


def run_setting(setting: Setting, root: Path) -> dict[str, Any]:
    names = [f"o{i}" for i in range(setting.organizations)]
    data = make_federated_dataset(
        setting.dataset, names, scheme=setting.scheme, seed=SEED
    )  # type: ignore[arg-type]
    federation, assets = prepare_local_federation(
        data, setting.model, root / "federated"
    )
    evaluation = Evaluation(every=None)
    row: dict[str, Any] = {"setting": setting.label, "strategies": {}}
    started = time.monotonic()
    row["pooled"] = _pooled(setting, data, root)
    for name in STRATEGIES:
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


def markdown(rows: list[dict[str, Any]], seconds: float) -> str:
    names = list(STRATEGIES)
    header = ["setting", "pooled", "local-only mean", *names]
    lines = [
        "# Accuracy benchmark (simulation)",
        "",
        "Accuracy (%) on the union of the organizations' held-out test parts, "
        "after the last round. Command: `.venv/bin/python benchmarks/accuracy.py`.",
        f"Time: {seconds:.0f} s of simulation (summed over the runs) on "
        f"{platform.machine()}, Python {platform.python_version()}; seed {SEED}.",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small setting")
    parser.add_argument(
        "--dataset",
        choices=["breast_cancer", "digits"],
        help="run one data set's settings and write them as a part "
        "(accuracy.<dataset>.json); --report joins the parts",
    )
    parser.add_argument(
        "--report", action="store_true", help="write the table from the parts"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.output.mkdir(parents=True, exist_ok=True)
    if args.report:
        parts = [
            json.loads(p.read_text())
            for p in sorted(args.output.glob("accuracy.*.json"))
        ]
        rows = [row for part in parts for row in part["settings"]]
        _write(args.output, rows, sum(part["seconds"] for part in parts))
        return
    started = time.monotonic()
    part = args.output / f"accuracy.{args.dataset}.json" if args.dataset else None
    rows = _run_all(settings(args.quick, args.dataset), part)
    if part is None:
        _write(args.output, rows, time.monotonic() - started)


def _run_all(chosen: list[Setting], part: Path | None) -> list[dict[str, Any]]:
    """Run the settings; a part file is rewritten after each one."""
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="airfed-accuracy-") as tmp:
        for index, setting in enumerate(chosen):
            row = run_setting(setting, Path(tmp) / str(index))
            rows.append(row)
            if part is not None:
                seconds = time.monotonic() - started
                document = {"seed": SEED, "seconds": seconds, "settings": rows}
                part.write_text(json.dumps(document, indent=1) + "\n")
            fedavg = row["strategies"]["fedavg"]
            print(
                f"{row['setting']}: pooled {row['pooled']:.1f}, local "
                f"{row['local_only_mean']:.1f}, fedavg {fedavg:.1f} "
                f"({row['seconds']:.0f} s)",
                flush=True,
            )
    return rows


def _write(output: Path, rows: list[dict[str, Any]], seconds: float) -> None:
    document = {"seed": SEED, "seconds": seconds, "settings": rows}
    (output / "accuracy.json").write_text(json.dumps(document, indent=1) + "\n")
    (output / "accuracy.md").write_text(markdown(rows, seconds))
    print((output / "accuracy.md").read_text())


if __name__ == "__main__":
    main()
