"""What a plan is built from, and the plan under construction.

A :class:`Federation` names the organizations, their data and the registered
functions; a :class:`PlanContext` adds a strategy's tasks to a compute plan
and keeps the bookkeeping between rounds. Public through
:mod:`airfed.sdk.strategies`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airfed.sdk.algorithms import (
    METRICS_KEY,
    STRATEGY_KEY,
    TRAIN_RULES_KEY,
    AlgorithmPackage,
    TrainRules,
)
from airfed.sdk.errors import AirfedError, PlanError
from airfed.sdk.evaluation import Evaluation
from airfed.sdk.performance import FEDERATED, MODEL_LABEL_KEY
from airfed.sdk.plan import ComputePlanBuilder, asset_input, parent_input
from airfed.sdk.privacy import DifferentialPrivacy
from airfed.sdk.spec import InputRef, OutputSpec, Permission, Permissions

if TYPE_CHECKING:
    from airfed.sdk.strategies import Strategy

__all__ = [
    "AlgorithmFunctions",
    "Federation",
    "ModelRef",
    "OrganizationData",
    "PlanContext",
    "StrategyError",
    "add_local_baselines",
    "check_privacy",
    "register_package",
]


class StrategyError(AirfedError):  # type: ignore[misc,unused-ignore]
    """A strategy is unknown, misconfigured, or cannot aggregate."""


# --- what a plan is built from -----------------------------------------------


@dataclass(frozen=True)
class OrganizationData:
    """An organization's dataset (its opener) and its data samples."""

    organization: str
    dataset_key: str
    train_sample_keys: tuple[str, ...]
    test_sample_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class AlgorithmFunctions:
    """Keys of the three registered functions of an algorithm package."""

    train: str
    aggregate: str
    evaluate: str
    metrics: tuple[str, ...] = ("accuracy", "roc_auc", "loss")


def register_package(client: Any, package: AlgorithmPackage) -> AlgorithmFunctions:
    """Register the three functions of ``package`` with an
    :class:`airfed.sdk.client.Client` on every node; returns their keys."""
    keys = {}
    for role, metadata in package.functions.items():
        function = client.register_function(
            package.folder,
            name=metadata["name"],
            entrypoint=metadata["entrypoint"],
            inputs=metadata["inputs"],
            outputs=metadata["outputs"],
            description=metadata["description"],
            permissions=Permissions.model_validate(metadata["permissions"]),
        )
        keys[role] = str(function["key"])
    return AlgorithmFunctions(
        keys["train"], keys["aggregate"], keys["evaluate"], package.metrics
    )


@dataclass(frozen=True)
class Federation:
    """Who takes part, with which data and functions; who aggregates."""

    organizations: tuple[OrganizationData, ...]
    functions: AlgorithmFunctions
    creator: str
    aggregator: str | None = None
    initial_model_key: str | None = None

    def __post_init__(self) -> None:
        names = [o.organization for o in self.organizations]
        if not names:
            raise StrategyError("a federation needs at least one organization")
        if len(set(names)) != len(names):
            raise StrategyError("each organization may appear once in a federation")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.organization for o in self.organizations)

    def data(self, organization: str) -> OrganizationData:
        for item in self.organizations:
            if item.organization == organization:
                return item
        raise StrategyError(f"organization {organization!r} is not in the federation")


@dataclass(frozen=True)
class ModelRef:
    """A model in the plan: an output of a task, or a registered model."""

    task_key: str | None = None
    output: str | None = None
    asset_key: str | None = None

    def input(self, identifier: str) -> InputRef:
        if self.asset_key is not None:
            return asset_input(identifier, self.asset_key)
        assert self.task_key is not None and self.output is not None
        return parent_input(identifier, self.task_key, self.output)


def _permission(ids: Sequence[str]) -> Permission:
    return Permission(authorized_ids=tuple(dict.fromkeys(ids)))


# --- the plan under construction ---------------------------------------------


@dataclass
class PlanContext:
    """Adds tasks to a plan for a strategy and carries state between rounds."""

    builder: ComputePlanBuilder
    federation: Federation
    strategy: Strategy
    rounds: int
    evaluation: Evaluation | None
    privacy: DifferentialPrivacy | None = None
    _last_train: dict[tuple[str, str], str] = field(default_factory=dict)
    _last_aggregate: str | None = None

    @property
    def organizations(self) -> tuple[str, ...]:
        return self.federation.names

    @property
    def aggregator(self) -> str:
        return self.federation.aggregator or self.federation.creator

    def initial_model(self) -> ModelRef:
        """The registered initial model, or a round-0 task that makes one."""
        if self.federation.initial_model_key is not None:
            return ModelRef(asset_key=self.federation.initial_model_key)
        key = self.builder.add_task(
            self.federation.functions.aggregate,
            self.aggregator,
            category="aggregate",
            round=0,
            inputs=[],
            outputs=self._aggregate_outputs(),
            metadata={MODEL_LABEL_KEY: "initial"},
        )
        return ModelRef(key, "model")

    def train(
        self,
        organization: str,
        round: int,
        model: ModelRef,
        *,
        lane: str = FEDERATED,
        share_with: Sequence[str] | None = None,
    ) -> ModelRef:
        """A train task on ``organization``; returns its shared update.

        The update is permitted to ``share_with`` (default: the aggregator);
        the node's local state chains to its previous train task in ``lane``.
        """
        data = self.federation.data(organization)
        rules = (
            self.strategy.train_rules(self.privacy)
            if lane == FEDERATED
            else TrainRules(privacy=self.privacy, lane=lane)
        )
        inputs = [
            asset_input("dataset", data.dataset_key),
            *(asset_input("datasamples", key) for key in data.train_sample_keys),
            model.input("model"),
        ]
        previous = self._last_train.get((lane, organization))
        if previous is not None:
            inputs.append(parent_input("local", previous, "local"))
        readers = [organization, *(share_with or (self.aggregator,))]
        key = self.builder.add_task(
            self.federation.functions.train,
            organization,
            category="train",
            round=round,
            inputs=inputs,
            outputs={
                "shared": OutputSpec(
                    permissions=Permissions(process=_permission(readers))
                ),
                "local": OutputSpec(
                    permissions=Permissions(process=_permission([organization])),
                    transient=True,
                ),
            },
            metadata={TRAIN_RULES_KEY: rules.to_metadata(), MODEL_LABEL_KEY: lane},
        )
        self._last_train[(lane, organization)] = key
        return ModelRef(key, "shared")

    def aggregate(
        self, round: int, updates: Sequence[ModelRef], previous: ModelRef
    ) -> ModelRef:
        """An aggregate task on the aggregator; returns the new model."""
        inputs = [update.input("models") for update in updates]
        if self.strategy.uses_previous_model:
            inputs.append(previous.input("previous"))
        if self.strategy.uses_server_state and self._last_aggregate is not None:
            inputs.append(parent_input("state", self._last_aggregate, "state"))
        key = self.builder.add_task(
            self.federation.functions.aggregate,
            self.aggregator,
            category="aggregate",
            round=round,
            inputs=inputs,
            outputs=self._aggregate_outputs(),
            metadata={
                STRATEGY_KEY: json.dumps(self.strategy.config(), sort_keys=True),
                MODEL_LABEL_KEY: FEDERATED,
            },
        )
        self._last_aggregate = key
        return ModelRef(key, "model")

    def _aggregate_outputs(self) -> dict[str, OutputSpec]:
        return {
            "model": OutputSpec(
                permissions=Permissions(
                    process=_permission(self.organizations),
                    download=_permission([self.federation.creator]),
                )
            ),
            "state": OutputSpec(
                permissions=Permissions(process=_permission([self.aggregator])),
                transient=True,
            ),
        }

    def test(
        self,
        round: int,
        model: ModelRef,
        *,
        label: str = FEDERATED,
        organizations: Sequence[str] | None = None,
    ) -> list[str]:
        """Test tasks of ``model`` on each organization's test data."""
        if self.evaluation is None:
            return []
        metrics = list(self.federation.functions.metrics)
        everyone = _permission([*self.organizations, self.federation.creator])
        outputs = {
            metric: OutputSpec(
                permissions=Permissions(process=everyone, download=everyone)
            )
            for metric in metrics
        }
        keys = []
        for organization in organizations or self.organizations:
            data = self.federation.data(organization)
            if not data.test_sample_keys:
                continue
            keys.append(
                self.builder.add_task(
                    self.federation.functions.evaluate,
                    organization,
                    category="test",
                    round=round,
                    inputs=[
                        asset_input("dataset", data.dataset_key),
                        *(asset_input("datasamples", k) for k in data.test_sample_keys),
                        model.input("model"),
                    ],
                    outputs=outputs,
                    metadata={
                        METRICS_KEY: json.dumps(metrics),
                        MODEL_LABEL_KEY: label,
                    },
                )
            )
        return keys


def check_privacy(plan: PlanContext) -> None:
    records_epsilon = "epsilon" in plan.federation.functions.metrics
    noisy = plan.privacy is not None and plan.privacy.noise_multiplier > 0
    if noisy and not records_epsilon:
        raise PlanError(
            "the plan uses differential privacy but its evaluate function does "
            "not record epsilon; package the algorithm with differential_privacy=True"
        )
    if records_epsilon and not noisy:
        raise PlanError(
            "the evaluate function records epsilon, which needs differential "
            "privacy with noise; pass privacy=DifferentialPrivacy(...) or package "
            "the algorithm without differential_privacy"
        )


def add_local_baselines(plan: PlanContext, initial: ModelRef) -> None:
    assert plan.evaluation is not None
    for organization in plan.organizations:
        lane = f"local:{organization}"
        model = initial
        for round in range(1, plan.rounds + 1):
            model = plan.train(
                organization, round, model, lane=lane, share_with=plan.organizations
            )
            if plan.evaluation.is_due(round, plan.rounds):
                own = plan.evaluation.local_models_tested_on == "own"
                plan.test(
                    round,
                    model,
                    label=lane,
                    organizations=[organization] if own else None,
                )
