"""The performance table: rounds by rows, federated and local models apart."""

from __future__ import annotations

import pytest

from airfed.sdk.catalog import Performance
from airfed.sdk.performance import FEDERATED, performance_table


def _perf(task: str, round_: int, worker: str, value: float) -> Performance:
    return Performance("p", task, round_, worker, "accuracy", value)


def test_federated_values_are_averaged_and_local_ones_kept_apart() -> None:
    performances = [
        _perf("t1", 1, "a", 0.8),
        _perf("t2", 1, "b", 0.6),
        _perf("l1", 1, "a", 0.5),
        _perf("t3", 2, "a", 0.9),
    ]
    metadata = {"l1": {"model": "local", "organization": "a"}}
    table = performance_table(performances, metadata)
    assert table.columns == ((FEDERATED, "accuracy"), ("local:a", "accuracy"))
    assert table.rows[0][0] == 1
    assert table.rows[0][1] == (pytest.approx(0.7), 0.5)
    assert table.rows[1] == (2, (0.9, None))
    assert table.to_json() == {
        FEDERATED: {"accuracy": {"1": pytest.approx(0.7), "2": 0.9}},
        "local:a": {"accuracy": {"1": 0.5}},
    }


def test_without_metadata_everything_is_federated() -> None:
    table = performance_table([_perf("t1", 0, "a", 1.0)])
    assert table.columns == ((FEDERATED, "accuracy"),)
    assert table.rows == ((0, (1.0,)),)


def test_strategy_labels_mark_local_only_models() -> None:
    from airfed.sdk.performance import MODEL_LABEL_KEY, model_label

    assert model_label({MODEL_LABEL_KEY: "local:b"}, "b") == "local:b"
    assert model_label({MODEL_LABEL_KEY: FEDERATED}, "b") == FEDERATED
    assert model_label({"model": "local"}, "c") == "local:c"


def test_compare_takes_each_models_final_value() -> None:
    from airfed.sdk.performance import compare_models

    performances = [
        Performance("p", "t1", 1, "a", "accuracy", 0.70),
        Performance("p", "t2", 2, "a", "accuracy", 0.90),
        Performance("p", "t3", 2, "b", "accuracy", 0.80),
        Performance("p", "la", 2, "a", "accuracy", 0.75),
        Performance("p", "lb", 1, "b", "accuracy", 0.60),
    ]
    metadata = {
        "la": {"airfed.model": "local:a"},
        "lb": {"airfed.model": "local:b"},
    }
    [comparison] = compare_models(performance_table(performances, metadata))

    assert comparison.metric == "accuracy"
    assert comparison.round == 2
    assert comparison.federated == pytest.approx(0.85)
    assert comparison.local == {"a": 0.75, "b": 0.60}
    assert comparison.gain_over_local_mean == pytest.approx(0.85 - 0.675)
