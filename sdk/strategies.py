"""Federated learning strategies: each builds a compute plan.

A strategy lays out, round by round, which organization trains which model,
where updates are aggregated and how (:meth:`Strategy.aggregate`). It builds
the plan through a :class:`PlanContext`, which knows the plan's functions and
data and keeps the bookkeeping: initial model, each node's local state carried
from round to round, the aggregator's state, test tasks, permissions.

Writing your own strategy means overriding :meth:`Strategy.add_round` (the
tasks of one round) and, when it aggregates, :meth:`Strategy.aggregate`::

    @dataclass(frozen=True)
    class Momentum(Strategy):
        name: ClassVar[str] = "momentum"
        uses_previous_model: ClassVar[bool] = True
        beta: float = 0.5

        def add_round(self, plan, round, model):
            updates = [plan.train(org, round, model) for org in plan.organizations]
            return plan.aggregate(round, updates, previous=model)

        def aggregate(self, updates, previous, state):
            mean = weighted_mean([u.params for u in updates])
            ...

A plan then comes from ``strategy.build_plan(federation, rounds=10)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from airfed.sdk._plan_context import (
    AlgorithmFunctions,
    Federation,
    ModelRef,
    OrganizationData,
    PlanContext,
    StrategyError,
    add_local_baselines,
    check_privacy,
    register_package,
)
from airfed.sdk.aggregation import (
    coordinate_median,
    krum_select,
    server_optimizer_step,
    trimmed_mean,
    weighted_mean,
)
from airfed.sdk.algorithms import (
    CONTROL,
    CONTROL_DELTA,
    STRATEGY_KEY,
    TrainRules,
)
from airfed.sdk.catalog import Catalog
from airfed.sdk.errors import PlanError
from airfed.sdk.evaluation import Evaluation
from airfed.sdk.model_state import ModelState
from airfed.sdk.plan import ComputePlanBuilder
from airfed.sdk.privacy import DifferentialPrivacy
from airfed.sdk.spec import PlanSpec

__all__ = [
    "STRATEGIES",
    "AlgorithmFunctions",
    "Cyclic",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedProx",
    "FedYogi",
    "Federation",
    "Krum",
    "ModelRef",
    "OrganizationData",
    "PlanContext",
    "RandomWalk",
    "Scaffold",
    "SingleOrganization",
    "Strategy",
    "StrategyError",
    "TrimmedMean",
    "make_strategy",
    "register_package",
    "strategy_from_config",
]

# --- the base class ----------------------------------------------------------


@dataclass(frozen=True)
class Strategy(ABC):
    """Base of every strategy: lays out rounds and, if it aggregates, combines."""

    name: ClassVar[str] = "custom"
    uses_previous_model: ClassVar[bool] = False
    uses_server_state: ClassVar[bool] = False

    @abstractmethod
    def add_round(self, plan: PlanContext, round: int, model: ModelRef) -> ModelRef:
        """Add the tasks of ``round``, starting from ``model``; return the model
        that the round produces (the one test tasks evaluate)."""

    def aggregate(
        self,
        updates: Sequence[ModelState],
        previous: ModelState | None,
        state: ModelState | None,
    ) -> tuple[ModelState, ModelState | None]:
        """Combine one round's updates; returns the model and the server state."""
        raise StrategyError(f"strategy {self.name} does not aggregate")

    def train_rules(self, privacy: DifferentialPrivacy | None) -> TrainRules:
        """What local training must do for this strategy."""
        return TrainRules(privacy=privacy)

    def config(self) -> dict[str, Any]:
        """How an aggregate task rebuilds this strategy: class path and fields."""
        cls = type(self)
        return {
            "class": f"{cls.__module__}:{cls.__qualname__}",
            "params": dataclasses.asdict(self),
        }

    def build_plan(
        self,
        federation: Federation,
        *,
        rounds: int,
        evaluation: Evaluation | None = None,
        local_baselines: bool = False,
        privacy: DifferentialPrivacy | None = None,
        name: str | None = None,
        key: str | None = None,
        catalog: Catalog | None = None,
    ) -> PlanSpec:
        """The compiled plan: ``rounds`` rounds, tests, optional local baselines.

        ``evaluation`` defaults to testing after every round; local baselines
        train the same model on each organization's data alone, with the same
        number of rounds and local steps, tested on the same test data.
        """
        if rounds < 1:
            raise PlanError("a compute plan needs at least one round")
        builder = ComputePlanBuilder(
            name or f"{self.name} over {len(federation.organizations)} organizations",
            self.name,
            federation.creator,
            key=key,
            metadata={STRATEGY_KEY: json.dumps(self.config(), sort_keys=True)},
            rounds=rounds,
        )
        plan = PlanContext(
            builder, federation, self, rounds, evaluation or Evaluation(), privacy
        )
        check_privacy(plan)
        self._check(plan)
        initial = plan.initial_model()
        model = initial
        for round in range(1, rounds + 1):
            model = self.add_round(plan, round, model)
            if plan.evaluation is not None and plan.evaluation.is_due(round, rounds):
                plan.test(round, model)
        if local_baselines:
            add_local_baselines(plan, initial)
        return builder.compile(catalog)

    def _check(self, plan: PlanContext) -> None:  # noqa: B027 (optional hook)
        """Reject settings the strategy cannot honour, before any task is added."""


# --- strategies that aggregate every round -----------------------------------


def _with_params(params: dict[str, np.ndarray]) -> ModelState:
    return ModelState(params)


@dataclass(frozen=True)
class FedAvg(Strategy):
    """Federated Averaging: McMahan, Moore, Ramage, Hampson and Agüera y Arcas,
    "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS 2017.

    Each round, every organization runs the algorithm's fixed number of local
    steps from the current model; the aggregator takes the mean of the updates
    weighted by each organization's number of samples and sends it back to
    all.
    """

    name: ClassVar[str] = "fedavg"

    def add_round(self, plan: PlanContext, round: int, model: ModelRef) -> ModelRef:
        updates = [plan.train(org, round, model) for org in plan.organizations]
        return plan.aggregate(round, updates, previous=model)

    def aggregate(
        self,
        updates: Sequence[ModelState],
        previous: ModelState | None,
        state: ModelState | None,
    ) -> tuple[ModelState, ModelState | None]:
        weights = [max(u.num_samples, 0) for u in updates]
        if sum(weights) == 0:
            weights = [1] * len(updates)
        return _with_params(weighted_mean([u.params for u in updates], weights)), None


@dataclass(frozen=True)
class FedProx(FedAvg):
    """FedProx: Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, "Federated
    Optimization in Heterogeneous Networks", MLSys 2020.

    FedAvg whose local objective adds the proximal term
    ``mu / 2 * ||w - w_global||^2``, which keeps local models near the
    global one on heterogeneous data (needs a TorchAlgorithm).
    """

    name: ClassVar[str] = "fedprox"
    mu: float = 0.01

    def train_rules(self, privacy: DifferentialPrivacy | None) -> TrainRules:
        return TrainRules(proximal_mu=self.mu, privacy=privacy)


@dataclass(frozen=True)
class Scaffold(Strategy):
    """SCAFFOLD: Karimireddy, Kale, Mohri, Reddi, Stich and Suresh, "SCAFFOLD:
    Stochastic Controlled Averaging for Federated Learning", ICML 2020.

    Local gradients are corrected by ``c - c_i`` (server and client control
    variates); clients update ``c_i`` by option II of Algorithm 1 and keep it
    on their node. The server moves ``x += lr_g * mean(y_i - x)`` and
    ``c += mean(delta c_i)`` (every organization takes part in every round).
    Needs a TorchAlgorithm; with SGD momentum, ``lr / (1 - momentum)`` is
    taken as the step size. Not combined with differential privacy (the
    control variates would leave the node without noise).
    """

    name: ClassVar[str] = "scaffold"
    uses_previous_model: ClassVar[bool] = True
    server_learning_rate: float = 1.0

    def add_round(self, plan: PlanContext, round: int, model: ModelRef) -> ModelRef:
        updates = [plan.train(org, round, model) for org in plan.organizations]
        return plan.aggregate(round, updates, previous=model)

    def train_rules(self, privacy: DifferentialPrivacy | None) -> TrainRules:
        return TrainRules(scaffold=True)

    def _check(self, plan: PlanContext) -> None:
        if plan.privacy is not None:
            raise PlanError(
                "SCAFFOLD cannot be combined with differential privacy: the "
                "control variates would leave the nodes without noise"
            )

    def aggregate(
        self,
        updates: Sequence[ModelState],
        previous: ModelState | None,
        state: ModelState | None,
    ) -> tuple[ModelState, ModelState | None]:
        if previous is None:
            raise StrategyError("SCAFFOLD aggregation needs the previous model")
        mean = weighted_mean([u.params for u in updates])
        params = {
            k: (x + self.server_learning_rate * (mean[k] - x)).astype(x.dtype)
            if x.dtype.kind == "f"
            else mean[k]
            for k, x in previous.params.items()
        }
        deltas = weighted_mean([u.groups[CONTROL_DELTA] for u in updates])
        control = previous.groups.get(CONTROL) or {
            k: np.zeros_like(v) for k, v in deltas.items()
        }
        new_control = {
            k: (control[k] + deltas[k]).astype(control[k].dtype) for k in deltas
        }
        return ModelState(params, {CONTROL: new_control}), None


@dataclass(frozen=True)
class _ServerOptimizer(FedAvg):
    """FedOpt family: Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar
    and McMahan, "Adaptive Federated Optimization", ICLR 2021."""

    uses_previous_model: ClassVar[bool] = True
    uses_server_state: ClassVar[bool] = True
    optimizer: ClassVar[str] = "adam"
    server_learning_rate: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def aggregate(
        self,
        updates: Sequence[ModelState],
        previous: ModelState | None,
        state: ModelState | None,
    ) -> tuple[ModelState, ModelState | None]:
        if previous is None:
            raise StrategyError(f"{self.name} aggregation needs the previous model")
        average, _ = super().aggregate(updates, previous, state)
        moments = None
        if state is not None and "m" in state.groups:
            moments = (state.groups["m"], state.groups["v"])
        params, (m, v) = server_optimizer_step(
            self.optimizer,  # type: ignore[arg-type,unused-ignore]
            previous.params,
            average.params,
            moments,
            learning_rate=self.server_learning_rate,
            beta1=self.beta1,
            beta2=self.beta2,
            tau=self.tau,
        )
        return ModelState(params), ModelState({}, {"m": m, "v": v})


@dataclass(frozen=True)
class FedAdam(_ServerOptimizer):
    """FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021):
    FedAvg's mean update used as a pseudo-gradient for a server Adam step."""

    name: ClassVar[str] = "fedadam"
    optimizer: ClassVar[str] = "adam"


@dataclass(frozen=True)
class FedYogi(_ServerOptimizer):
    """FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021):
    a server Yogi step, whose second moment grows more cautiously than Adam's."""

    name: ClassVar[str] = "fedyogi"
    optimizer: ClassVar[str] = "yogi"


@dataclass(frozen=True)
class FedAdagrad(_ServerOptimizer):
    """FedAdagrad (Reddi et al., "Adaptive Federated Optimization", ICLR 2021):
    a server Adagrad step on FedAvg's mean update."""

    name: ClassVar[str] = "fedadagrad"
    optimizer: ClassVar[str] = "adagrad"


@dataclass(frozen=True)
class FedMedian(FedAvg):
    """FedMedian: coordinate-wise median of the updates. Yin, Chen,
    Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates", ICML 2018."""

    name: ClassVar[str] = "fedmedian"

    def aggregate(
        self,
        updates: Sequence[ModelState],
        previous: ModelState | None,
        state: ModelState | None,
    ) -> tuple[ModelState, ModelState | None]:
        return _with_params(coordinate_median([u.params for u in updates])), None


@dataclass(frozen=True)
class TrimmedMean(FedAvg):
    """Coordinate-wise trimmed mean: drop the ``floor(beta * n)`` largest and
    smallest values of each coordinate, average the rest. Yin, Chen,
    Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning: Towards
    Optimal Statistical Rates", ICML 2018."""

    name: ClassVar[str] = "trimmed_mean"
    beta: float = 0.2

    def aggregate(
        self,
        updates: Sequence[ModelState],
        previous: ModelState | None,
        state: ModelState | None,
    ) -> tuple[ModelState, ModelState | None]:
        return _with_params(trimmed_mean([u.params for u in updates], self.beta)), None


@dataclass(frozen=True)
class Krum(FedAvg):
    """Krum: Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning
    with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.

    Keeps the update closest to its ``n - byzantine - 2`` nearest neighbours;
    with ``selected > 1``, the mean of the best ``selected`` (Multi-Krum).
    """

    name: ClassVar[str] = "krum"
    byzantine: int = 0
    selected: int = 1

    def _check(self, plan: PlanContext) -> None:
        # Refused here rather than by the first aggregate task, mid-plan.
        count, needed = len(plan.organizations), 2 * self.byzantine + 3
        if 1 < count < needed:
            raise PlanError(
                f"Krum with {self.byzantine} byzantine organizations needs at "
                f"least {needed} organizations, the federation has {count}; add "
                "organizations or lower byzantine"
            )

    def aggregate(
        self,
        updates: Sequence[ModelState],
        previous: ModelState | None,
        state: ModelState | None,
    ) -> tuple[ModelState, ModelState | None]:
        params = [u.params for u in updates]
        chosen = krum_select(params, self.byzantine, min(self.selected, len(params)))
        return _with_params(weighted_mean([params[i] for i in chosen])), None


# --- strategies that pass one model along ------------------------------------


@dataclass(frozen=True)
class Cyclic(Strategy):
    """Cyclic (incremental) training: Chang, Balachandar, Lam, Yi, Brown, Beers,
    Rosen, Rubin and Kalpathy-Cramer, "Distributed deep learning networks among
    institutions for medical imaging", JAMIA 2018.

    A round trains on the first organization, passes the model to the second,
    and so on to the last; the last model of the round is tested.
    """

    name: ClassVar[str] = "cyclic"

    def add_round(self, plan: PlanContext, round: int, model: ModelRef) -> ModelRef:
        for organization in plan.organizations:
            model = plan.train(
                organization, round, model, share_with=plan.organizations
            )
        return model


@dataclass(frozen=True)
class RandomWalk(Strategy):
    """Random walk: the model moves along a seeded random sequence of
    organizations, one local update per round, and each update is made
    available to all. Lopes and Sayed, "Incremental Adaptive Strategies Over
    Distributed Networks", IEEE TSP 2007; Sun, Lu and Yin, "Adaptive Random
    Walk Gradient Descent for Decentralized Optimization", ICML 2022.
    """

    name: ClassVar[str] = "random_walk"
    seed: int = 0

    def sequence(self, organizations: Sequence[str], rounds: int) -> list[str]:
        """The organization that trains in each round (the same for a seed)."""
        rng = np.random.default_rng(self.seed)
        return [
            organizations[int(i)] for i in rng.integers(len(organizations), size=rounds)
        ]

    def add_round(self, plan: PlanContext, round: int, model: ModelRef) -> ModelRef:
        organization = self.sequence(plan.organizations, plan.rounds)[round - 1]
        return plan.train(organization, round, model, share_with=plan.organizations)


@dataclass(frozen=True)
class SingleOrganization(Strategy):
    """Single-organization baseline: one organization trains alone for every
    round (the first of the federation by default); its model is tested on
    every organization's test data. The reference point of any federated
    study (e.g. Sheller et al., "Federated learning in medicine", Sci. Rep.
    2020)."""

    name: ClassVar[str] = "single_organization"
    organization: str | None = None

    def add_round(self, plan: PlanContext, round: int, model: ModelRef) -> ModelRef:
        organization = self.organization or plan.organizations[0]
        return plan.train(organization, round, model, share_with=plan.organizations)


# --- registry ----------------------------------------------------------------

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedProx,
        Scaffold,
        FedAdam,
        FedYogi,
        FedAdagrad,
        FedMedian,
        TrimmedMean,
        Krum,
        Cyclic,
        RandomWalk,
        SingleOrganization,
    )
}


def make_strategy(name: str, **params: Any) -> Strategy:
    """A built-in strategy by name (``fedavg``, ``cyclic``, ...)."""
    cls = STRATEGIES.get(name.replace("-", "_").lower())
    if cls is None:
        raise StrategyError(
            f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}"
        )
    try:
        return cls(**params)
    except TypeError as exc:
        raise StrategyError(f"strategy {name}: {exc}") from exc


def strategy_from_config(raw: str) -> Strategy:
    """The strategy an aggregate task's metadata describes (see ``config()``)."""
    try:
        data = json.loads(raw)
        module_name, _, qualname = str(data["class"]).partition(":")
        cls = getattr(importlib.import_module(module_name), qualname)
        params = dict(data.get("params", {}))
    except (ValueError, KeyError, TypeError, ImportError, AttributeError) as exc:
        raise StrategyError(f"the task's strategy cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise StrategyError(f"{data['class']} is not an airfed Strategy")
    try:
        return cls(**params)
    except TypeError as exc:
        raise StrategyError(f"strategy {qualname}: {exc}") from exc
