"""Algorithms: the model code a compute plan trains, packaged as functions.

A user subclasses one of three bases and fills in a few lines:

- :class:`TorchAlgorithm`: a PyTorch model, optimizer and loss; batches come
  from a seeded :class:`BatchSampler` whose position carries across rounds;
- :class:`SklearnAlgorithm`: a scikit-learn linear model trained with
  ``partial_fit`` from the shared ``coef_`` and ``intercept_``
  (``SGDClassifier``);
- :class:`NumpyAlgorithm`: any model whose state is NumPy arrays.

:func:`package_algorithm` turns the user's module into a function folder with
three entrypoints (``train``, ``aggregate``, ``evaluate``) that take a
:class:`~airfed.sdk.function.TaskContext`, and the metadata of the three
functions to register (contract A).

What travels and what stays: a train task writes two outputs. ``shared`` (a
:class:`~airfed.sdk.model_state.ModelState`: weights, the number of samples,
strategy extras) goes to the aggregator. ``local`` (optimizer state, sampler
position, random generator state, SCAFFOLD's client control variate) is
permitted to the worker alone and read back by the same organization's train
task in the next round.

Strategies steer training through the task's metadata: ``airfed.train``
(JSON: proximal term, SCAFFOLD, differential privacy, seed lane),
``airfed.strategy`` (the aggregation rule, for aggregate tasks) and
``airfed.metrics`` (for test tasks).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airfed.sdk._algorithm_base import (
    CLIENT_CONTROL,
    CONTROL,
    CONTROL_DELTA,
    LOCAL_BLOB,
    METRICS_KEY,
    STRATEGY_KEY,
    TRAIN_RULES_KEY,
    Algorithm,
    AlgorithmError,
    LocalTraining,
    LocalUpdate,
    TrainRules,
    derive_seed,
)
from airfed.sdk._frameworks import (
    BatchSampler,
    NumpyAlgorithm,
    SklearnAlgorithm,
    TorchAlgorithm,
)
from airfed.sdk.evaluation import compute_metrics
from airfed.sdk.function import TaskContext
from airfed.sdk.model_state import Arrays, ModelState
from airfed.sdk.privacy import DifferentialPrivacy, clip_and_noise, epsilon
from airfed.sdk.spec import Permission, Permissions

__all__ = [
    "CONTROL",
    "CONTROL_DELTA",
    "DEFAULT_METRICS",
    "METRICS_KEY",
    "STRATEGY_KEY",
    "TRAIN_RULES_KEY",
    "Algorithm",
    "AlgorithmError",
    "AlgorithmPackage",
    "BatchSampler",
    "LocalTraining",
    "LocalUpdate",
    "NumpyAlgorithm",
    "SklearnAlgorithm",
    "TorchAlgorithm",
    "TrainRules",
    "derive_seed",
    "load_algorithm",
    "merge_meta",
    "model_epsilon",
    "package_algorithm",
    "run_aggregate",
    "run_evaluate",
    "run_train",
    "train_round",
]

# --- task entrypoints --------------------------------------------------------


def run_train(ctx: TaskContext, algorithm: Algorithm) -> None:
    """A train task: shared model and local state in, update and local state out."""
    rules = TrainRules.from_metadata(ctx.metadata)
    if (
        rules.proximal_mu > 0 or rules.scaffold
    ) and not algorithm.supports_gradient_rules:
        raise AlgorithmError(
            f"{type(algorithm).__name__} cannot apply FedProx or SCAFFOLD "
            "(they change gradients); use a TorchAlgorithm"
        )
    data = ctx.load_data()
    shared = (
        ModelState.load(ctx.input_path("model"))
        if ctx.has_input("model")
        else ModelState(algorithm.initial_params())
    )
    local = ModelState.load(ctx.input_path("local")) if ctx.has_input("local") else None
    shared_out, local_out = train_round(
        algorithm, shared, local, data, rules, organization=ctx.worker, round=ctx.round
    )
    shared_out.save(ctx.output_path("shared"))
    local_out.save(ctx.output_path("local"))


def train_round(
    algorithm: Algorithm,
    shared: ModelState,
    local: ModelState | None,
    data: Any,
    rules: TrainRules,
    *,
    organization: str,
    round: int,
) -> tuple[ModelState, ModelState]:
    """One organization's round: fit, then SCAFFOLD and privacy bookkeeping."""
    seed = derive_seed(algorithm.seed, organization, rules.lane)
    client_control = (local.groups.get(CLIENT_CONTROL) if local else None) or {}
    correction = (
        _scaffold_correction(shared, client_control) if rules.scaffold else None
    )
    training = LocalTraining(
        organization=organization,
        round=round,
        seed=seed,
        round_seed=derive_seed(seed, round),
        proximal_mu=rules.proximal_mu,
        correction=correction,
        step_fraction=rules.step_fraction,
    )
    blob = local.params.get(LOCAL_BLOB) if local else None
    update = algorithm.fit(
        shared.params, None if blob is None else blob.tobytes(), data, training
    )
    params = update.params
    if rules.privacy is not None:
        params = _privatize(shared.params, params, rules.privacy, training.round_seed)

    meta = _next_meta(
        shared.meta, organization, rules.privacy, algorithm.num_samples(data)
    )
    shared_out = ModelState(params, {}, meta)
    local_out = ModelState({LOCAL_BLOB: np.frombuffer(update.local, dtype=np.uint8)})
    if rules.scaffold:
        new_control, delta = _scaffold_controls(shared, params, client_control, update)
        shared_out.groups[CONTROL_DELTA] = delta
        local_out.groups[CLIENT_CONTROL] = new_control
    return shared_out, local_out


def _floating(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if v.dtype.kind == "f"}


def _scaffold_correction(shared: ModelState, client_control: Arrays) -> Arrays:
    server = shared.groups.get(CONTROL, {})
    return {
        name: server.get(name, np.zeros_like(value))
        - client_control.get(name, np.zeros_like(value))
        for name, value in _floating(shared.params).items()
    }


def _scaffold_controls(
    shared: ModelState, params: Arrays, client_control: Arrays, update: LocalUpdate
) -> tuple[Arrays, Arrays]:
    """SCAFFOLD option II (Karimireddy et al. 2020, Alg. 1 line 12):
    ``c_i+ = c_i - c + (x - y_i) / (K * lr)``; returns ``c_i+`` and ``c_i+ - c_i``."""
    if not update.steps or not update.learning_rate:
        raise AlgorithmError("SCAFFOLD needs the number of steps and the learning rate")
    scale = 1.0 / (update.steps * update.learning_rate)
    server = shared.groups.get(CONTROL, {})
    new_control: Arrays = {}
    delta: Arrays = {}
    for name, x in _floating(shared.params).items():
        c_i = client_control.get(name, np.zeros_like(x))
        c = server.get(name, np.zeros_like(x))
        new_control[name] = (c_i - c + (x - params[name]) * scale).astype(x.dtype)
        delta[name] = new_control[name] - c_i
    return new_control, delta


def _privatize(
    before: Arrays, after: Arrays, privacy: DifferentialPrivacy, seed: int
) -> Arrays:
    update = {k: v - before[k] if v.dtype.kind == "f" else v for k, v in after.items()}
    noisy = clip_and_noise(update, privacy, np.random.default_rng([seed, 7]))
    return {k: before[k] + v if v.dtype.kind == "f" else v for k, v in noisy.items()}


def _next_meta(
    meta: Mapping[str, Any],
    organization: str,
    privacy: DifferentialPrivacy | None,
    num_samples: int,
) -> dict[str, Any]:
    result: dict[str, Any] = {"num_samples": int(num_samples)}
    steps = dict(meta.get("dp_steps", {}))
    if privacy is not None:
        steps[organization] = int(steps.get(organization, 0)) + 1
        result["privacy"] = privacy.to_dict()
    elif "privacy" in meta:
        result["privacy"] = meta["privacy"]
    if steps:
        result["dp_steps"] = steps
    return result


def merge_meta(
    updates: Sequence[ModelState], previous: ModelState | None
) -> dict[str, Any]:
    """Metadata of an aggregate: total samples, per-organization privacy steps."""
    steps: dict[str, int] = dict(
        (previous.meta if previous else {}).get("dp_steps", {})
    )
    meta: dict[str, Any] = {"num_samples": sum(u.num_samples for u in updates)}
    for update in updates:
        for organization, count in update.meta.get("dp_steps", {}).items():
            steps[organization] = max(steps.get(organization, 0), int(count))
        if "privacy" in update.meta:
            meta["privacy"] = update.meta["privacy"]
    if steps:
        meta["dp_steps"] = steps
    return meta


def run_aggregate(ctx: TaskContext, algorithm: Algorithm) -> None:
    """An aggregate task; with no input models it writes the initial model."""
    from airfed.sdk.strategies import strategy_from_config

    models = [ModelState.load(path) for path in ctx.input_paths("models")]
    previous = (
        ModelState.load(ctx.input_path("previous"))
        if ctx.has_input("previous")
        else None
    )
    server = (
        ModelState.load(ctx.input_path("state")) if ctx.has_input("state") else None
    )
    if not models:
        model, server = ModelState(algorithm.initial_params()), None
    else:
        strategy = strategy_from_config(ctx.metadata.get(STRATEGY_KEY, ""))
        model, server = strategy.aggregate(models, previous, server)
        model.meta = merge_meta(models, previous)
    model.save(ctx.output_path("model"))
    (server or ModelState({})).save(ctx.output_path("state"))


def run_evaluate(ctx: TaskContext, algorithm: Algorithm) -> None:
    """A test task: record each metric of the model on the node's test data."""
    names = tuple(json.loads(ctx.metadata.get(METRICS_KEY, '["accuracy"]')))
    model = ModelState.load(ctx.input_path("model"))
    data = ctx.load_data()
    wanted = tuple(n for n in names if n != "epsilon")
    values = compute_metrics(
        wanted,
        algorithm.labels(data),
        algorithm.predict(model.params, data),
        algorithm.metrics,
    )
    if "epsilon" in names:
        spent = model_epsilon(model)
        if spent is None:
            raise AlgorithmError(
                "this evaluation records epsilon, but the model was trained "
                "without differential privacy"
            )
        values["epsilon"] = spent
    for name, value in values.items():
        ctx.record_performance(name, value)


def model_epsilon(model: ModelState) -> float | None:
    """The privacy spent by the organization that spent most on this model."""
    privacy = model.meta.get("privacy")
    steps = model.meta.get("dp_steps") or {}
    if privacy is None or not steps:
        return None
    setting = DifferentialPrivacy.from_dict(privacy)
    if setting.noise_multiplier <= 0:
        return None
    return max(
        float(epsilon(setting.noise_multiplier, int(count), setting.delta))
        for count in steps.values()
    )


# --- packaging ---------------------------------------------------------------


@dataclass(frozen=True)
class AlgorithmPackage:
    """A function folder, the metadata of its three functions (contract A) and
    the metrics its evaluate function records."""

    folder: Path
    functions: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()

    @property
    def train(self) -> dict[str, Any]:
        return self.functions["train"]

    @property
    def aggregate(self) -> dict[str, Any]:
        return self.functions["aggregate"]

    @property
    def evaluate(self) -> dict[str, Any]:
        return self.functions["evaluate"]


_ENTRY_SOURCE = '''"""airfed entrypoints for {qualname}."""

from airfed.sdk.algorithms import run_aggregate, run_evaluate, run_train
from {module} import {qualname} as _Algorithm


def train(ctx):
    run_train(ctx, _Algorithm())


def aggregate(ctx):
    run_aggregate(ctx, _Algorithm())


def evaluate(ctx):
    run_evaluate(ctx, _Algorithm())
'''

DEFAULT_METRICS = ("accuracy", "roc_auc", "loss")


def package_algorithm(
    algorithm: type[Algorithm],
    folder: Path,
    *,
    name: str | None = None,
    permissions: Permissions | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    differential_privacy: bool = False,
    extra_files: Sequence[Path] = (),
) -> AlgorithmPackage:
    """Write a function folder for ``algorithm`` and describe its functions.

    The folder holds the module that defines the class (copied; a class defined
    in a script is copied as ``algorithm_main.py``, whose ``__main__`` block
    must be guarded), ``extra_files`` and an entry module whose ``train``,
    ``aggregate`` and ``evaluate`` run the class. The evaluate function records
    ``metrics`` (built-in names, see :mod:`airfed.sdk.evaluation`), the
    algorithm's own ``metrics`` and, with ``differential_privacy``, ``epsilon``.
    Functions are permitted to every organization by default (``permissions``
    changes that).
    """
    source = inspect.getsourcefile(algorithm)
    if source is None or "." in algorithm.__qualname__:
        raise AlgorithmError(
            f"{algorithm.__qualname__} must be a class defined at the top level "
            "of a module file"
        )
    module = algorithm.__module__.rsplit(".", 1)[-1]
    if module == "__main__":
        module = "algorithm_main"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / f"{module}.py")
    for extra in extra_files:
        shutil.copyfile(extra, folder / Path(extra).name)
    code = Path(source).read_bytes()
    digest = hashlib.sha256(code + algorithm.__qualname__.encode()).hexdigest()
    entry = f"airfed_entry_{digest[:12]}"
    (folder / f"{entry}.py").write_text(
        _ENTRY_SOURCE.format(module=module, qualname=algorithm.__qualname__)
    )
    label = name or algorithm.__name__
    allowed = permissions or Permissions(process=Permission(public=True))
    recorded = tuple(dict.fromkeys([*metrics, *algorithm.metrics]))
    if differential_privacy:
        recorded = (*recorded, "epsilon")
    return AlgorithmPackage(
        folder, _function_metadata(entry, label, allowed, recorded), recorded
    )


def _function_metadata(
    entry: str, label: str, permissions: Permissions, metrics: Sequence[str]
) -> dict[str, dict[str, Any]]:
    data = [
        {
            "identifier": "dataset",
            "kind": "dataset",
            "multiple": False,
            "optional": False,
        },
        {
            "identifier": "datasamples",
            "kind": "datasamples",
            "multiple": True,
            "optional": False,
        },
    ]

    def model(identifier: str, *, multiple: bool = False) -> dict[str, Any]:
        return {
            "identifier": identifier,
            "kind": "model",
            "multiple": multiple,
            "optional": True,
        }

    shared = {"permissions": permissions.model_dump(mode="json")}
    return {
        "train": {
            "name": f"{label} train",
            "description": f"Local training of {label}.",
            "entrypoint": f"{entry}:train",
            "inputs": [*data, model("model"), model("local")],
            "outputs": [
                {"identifier": "shared", "kind": "model"},
                {"identifier": "local", "kind": "model"},
            ],
            **shared,
        },
        "aggregate": {
            "name": f"{label} aggregate",
            "description": f"Aggregation of {label} (initial model without inputs).",
            "entrypoint": f"{entry}:aggregate",
            "inputs": [
                model("models", multiple=True),
                model("previous"),
                model("state"),
            ],
            "outputs": [
                {"identifier": "model", "kind": "model"},
                {"identifier": "state", "kind": "model"},
            ],
            **shared,
        },
        "evaluate": {
            "name": f"{label} evaluate",
            "description": f"Metrics of {label} on test data.",
            "entrypoint": f"{entry}:evaluate",
            "inputs": [*data, model("model")],
            "outputs": [{"identifier": m, "kind": "performance"} for m in metrics],
            **shared,
        },
    }


def load_algorithm(path: str) -> type[Algorithm]:
    """The algorithm class named ``module:Class`` (for the CLI)."""
    module_name, _, class_name = path.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise AlgorithmError(f"cannot import algorithm {path!r}: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, Algorithm)):
        raise AlgorithmError(f"{path} is not an airfed Algorithm subclass")
    return found
