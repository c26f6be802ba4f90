"""Performances of a compute plan as a table: one row per round.

Test tasks say which model they evaluate in their metadata: the strategies
write ``"airfed.model": "local:<organization>"`` for an organization's
local-only baseline; a hand-built plan may write ``"model": "local"`` (the
organization is ``metadata["organization"]``, or the task's worker). Any other
test task evaluates the federated model. A column is a metric of one model: the
federated model's value is the mean over the organizations that tested it in
that round (weighted by nothing: each organization's test data counts once);
a local model's value is its organization's own.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from airfed.sdk.catalog import Performance

__all__ = [
    "FEDERATED",
    "MODEL_LABEL_KEY",
    "Comparison",
    "PerformanceTable",
    "compare_models",
    "model_label",
    "performance_table",
]

FEDERATED = "federated"
MODEL_LABEL_KEY = "airfed.model"


@dataclass(frozen=True)
class PerformanceTable:
    """Metric values by round; ``columns`` are ``(model, metric)`` pairs."""

    columns: tuple[tuple[str, str], ...]
    rows: tuple[tuple[int, tuple[float | None, ...]], ...]

    def to_json(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{model: {metric: {round: value}}}`` with rounds as strings."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for index, (model, metric) in enumerate(self.columns):
            series = out.setdefault(model, {}).setdefault(metric, {})
            for round_, values in self.rows:
                value = values[index]
                if value is not None:
                    series[str(round_)] = value
        return out


def model_label(metadata: Mapping[str, str], worker: str) -> str:
    """``federated``, or ``local:<organization>`` for a local-only baseline."""
    strategy_label = metadata.get(MODEL_LABEL_KEY, "")
    if strategy_label.startswith("local:"):
        return strategy_label
    if metadata.get("model") == "local":
        return f"local:{metadata.get('organization') or worker}"
    return FEDERATED


def performance_table(
    performances: Iterable[Performance],
    task_metadata: Mapping[str, Mapping[str, str]] | None = None,
) -> PerformanceTable:
    """Group performances by round and by (model, metric).

    ``task_metadata`` maps task keys to their metadata (from the plan spec);
    without it every performance counts as one of the federated model.
    """
    values: dict[tuple[int, str, str], list[float]] = defaultdict(list)
    for perf in performances:
        metadata = (task_metadata or {}).get(perf.task_key, {})
        label = model_label(metadata, perf.worker)
        values[(perf.round, label, perf.identifier)].append(perf.value)
    columns = tuple(
        sorted({(model, metric) for _, model, metric in values}, key=_order)
    )
    rounds = sorted({round_ for round_, _, _ in values})
    rows = tuple(
        (round_, tuple(_mean(values.get((round_, *column))) for column in columns))
        for round_ in rounds
    )
    return PerformanceTable(columns, rows)


def _order(column: tuple[str, str]) -> tuple[int, str, str]:
    model, metric = column
    return (0 if model == FEDERATED else 1, model, metric)


def _mean(items: Sequence[float] | None) -> float | None:
    return statistics.fmean(items) if items else None


@dataclass(frozen=True)
class Comparison:
    """One metric of the federated model against every local-only model.

    Values are each model's last recorded value (its final round).
    """

    metric: str
    round: int
    federated: float
    local: dict[str, float]

    @property
    def local_mean(self) -> float | None:
        return statistics.fmean(self.local.values()) if self.local else None

    @property
    def gain_over_local_mean(self) -> float | None:
        mean = self.local_mean
        return None if mean is None else self.federated - mean

    def to_json(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "round": self.round,
            "federated": self.federated,
            "local": dict(sorted(self.local.items())),
            "local_mean": self.local_mean,
            "gain_over_local_mean": self.gain_over_local_mean,
        }


def _last(table: PerformanceTable, column: int) -> tuple[int, float] | None:
    for round_, values in reversed(table.rows):
        value = values[column]
        if value is not None:
            return round_, value
    return None


def compare_models(table: PerformanceTable) -> list[Comparison]:
    """The federated model's final value of each metric against local models'."""
    comparisons = []
    for index, (model, metric) in enumerate(table.columns):
        if model != FEDERATED or (last := _last(table, index)) is None:
            continue
        local = {}
        for other, (other_model, other_metric) in enumerate(table.columns):
            if other_metric == metric and other_model != FEDERATED:
                found = _last(table, other)
                if found is not None:
                    local[other_model.removeprefix("local:")] = found[1]
        comparisons.append(Comparison(metric, last[0], last[1], local))
    return comparisons
