"""How long the SDK takes to build, check and serialize a 1,000-task plan.

A federated-averaging plan over 3 organizations (3 train tasks and one
aggregate task per round, 250 rounds, 1,000 tasks) is built with
:class:`~airfed.sdk.plan.ComputePlanBuilder`, compiled against a catalog
(every check: cycles, parents, functions, inputs, permissions), written as
the spec's JSON (what ``airfed plan submit`` sends in one request) and read
back. Each step is timed separately; the best of ``--repeat`` runs is
printed.

Run from the repository root::

    PYTHONPATH=. .venv/bin/python benchmarks/plan_compile.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from airfed.sdk.catalog import Asset, Catalog
from airfed.sdk.plan import ComputePlanBuilder, asset_input, parent_input
from airfed.sdk.spec import Permission, Permissions, PlanSpec, parse_plan_spec

ORGANIZATIONS = ("a", "b", "c")
PUBLIC = Permissions(process=Permission(public=True))
TRAIN = {
    "inputs": [
        {"identifier": "data", "kind": "datasamples", "multiple": True},
        {"identifier": "model", "kind": "model", "optional": True},
    ],
    "outputs": [{"identifier": "model", "kind": "model"}],
}
AGGREGATE = {
    "inputs": [{"identifier": "models", "kind": "model", "multiple": True}],
    "outputs": [{"identifier": "model", "kind": "model"}],
}


def catalog() -> Catalog:
    assets = [
        Asset("function", "train", "a", "train", PUBLIC, TRAIN, ORGANIZATIONS),
        Asset("function", "aggregate", "a", "agg", PUBLIC, AGGREGATE, ORGANIZATIONS),
    ]
    assets += [Asset("datasample", f"data-{org}", org) for org in ORGANIZATIONS]
    return Catalog(assets)


def build(rounds: int) -> ComputePlanBuilder:
    builder = ComputePlanBuilder("benchmark", "fedavg", "a")
    previous: str | None = None
    for round_ in range(rounds):
        start = [parent_input("model", previous, "model")] if previous else []
        updates = [
            builder.add_task(
                "train",
                org,
                category="train",
                round=round_,
                inputs=[asset_input("data", f"data-{org}"), *start],
            )
            for org in ORGANIZATIONS
        ]
        previous = builder.add_task(
            "aggregate",
            "a",
            category="aggregate",
            round=round_,
            inputs=[parent_input("models", key, "model") for key in updates],
        )
    return builder


def best(repeat: int, step: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    network = catalog()
    builder = build(args.rounds)
    spec: PlanSpec = builder.compile(network)
    text = spec.to_json()
    timings = {
        "build": best(args.repeat, lambda: build(args.rounds)),
        "compile": best(args.repeat, lambda: builder.compile(network)),
        "to_json": best(args.repeat, spec.to_json),
        "parse": best(args.repeat, lambda: parse_plan_spec(text)),
    }
    print(f"tasks: {len(spec.tasks)}, spec: {len(text) / 1e6:.2f} MB")
    for name, seconds in timings.items():
        print(f"{name:>8}: {seconds * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
