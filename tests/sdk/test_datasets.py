"""Data sets split over organizations: seeded IID and Dirichlet partitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from airfed.sdk.datasets import (
    OPENER_SOURCE,
    DatasetError,
    load_dataset,
    make_federated_dataset,
    partition,
    read_samples,
    write_opener,
    write_organization_data,
)


def covers_each_sample_once(parts: list[np.ndarray], total: int) -> bool:
    joined = np.concatenate(parts)
    return len(joined) == total and len(np.unique(joined)) == total


def test_load_dataset_shapes_and_scaling() -> None:
    x, y = load_dataset("breast_cancer")
    assert x.shape == (569, 30) and set(np.unique(y)) == {0, 1}
    digits, labels = load_dataset("digits")
    assert (
        digits.shape == (1797, 64)
        and digits.max() == 1.0
        and len(np.unique(labels)) == 10
    )
    with pytest.raises(DatasetError, match="unknown data set"):
        load_dataset("mnist")


def test_iid_partition_is_even_seeded_and_complete() -> None:
    _, y = load_dataset("digits")
    parts = partition(y, 10, scheme="iid", seed=1)
    assert covers_each_sample_once(parts, len(y))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    again = partition(y, 10, scheme="iid", seed=1)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
    other = partition(y, 10, scheme="iid", seed=2)
    assert not all(np.array_equal(p, q) for p, q in zip(parts, other, strict=True))


def test_dirichlet_partition_skews_labels() -> None:
    _, y = load_dataset("digits")
    parts = partition(y, 10, scheme="dirichlet", alpha=0.5, seed=1, min_samples=10)
    assert covers_each_sample_once(parts, len(y))
    assert min(map(len, parts)) >= 10
    again = partition(y, 10, scheme="dirichlet", alpha=0.5, seed=1, min_samples=10)
    assert all(np.array_equal(p, q) for p, q in zip(parts, again, strict=True))
    # An even split gives each organization about 10 % of every class; alpha 0.5
    # gives some organization more than 40 % of its samples from one class.
    dominant = [np.bincount(y[p], minlength=10).max() / len(p) for p in parts]
    assert max(dominant) > 0.4
    iid = partition(y, 10, scheme="iid", seed=1)
    assert max(np.bincount(y[p], minlength=10).max() / len(p) for p in iid) < 0.25


def test_partition_refuses_impossible_settings() -> None:
    _, y = load_dataset("breast_cancer")
    with pytest.raises(DatasetError, match="fewer organizations"):
        partition(y, 100, min_samples=10)
    with pytest.raises(DatasetError, match="alpha"):
        partition(y, 3, scheme="dirichlet", alpha=0)
    with pytest.raises(DatasetError, match="scheme"):
        partition(y, 3, scheme="shards")  # type: ignore[arg-type]


def test_federated_dataset_holds_out_a_test_part_per_organization() -> None:
    data = make_federated_dataset(
        "breast_cancer", ["a", "b", "c"], scheme="dirichlet", seed=4
    )
    assert data.organizations == ("a", "b", "c") and data.num_classes == 2
    for split in data.splits:
        total = len(split.y_train) + len(split.y_test)
        assert len(split.y_test) == round(total * 0.25)
    x_train, y_train = data.pooled_train()
    x_test, _ = data.pooled_test()
    assert len(y_train) + len(x_test) == 569
    np.testing.assert_allclose(x_train.mean(axis=0), 0, atol=1e-4)
    same = make_federated_dataset(
        "breast_cancer", ["a", "b", "c"], scheme="dirichlet", seed=4
    )
    assert all(
        np.array_equal(s.x_test, t.x_test)
        for s, t in zip(data.splits, same.splits, strict=True)
    )


def test_sample_folders_read_back_through_the_opener(tmp_path: Path) -> None:
    split = make_federated_dataset("digits", ["a", "b"], seed=0).splits[1]
    train, test = write_organization_data(split, tmp_path / "b")
    opener = write_opener(tmp_path / "opener.py")
    assert opener.read_text() == OPENER_SOURCE
    namespace: dict[str, object] = {}
    exec(compile(OPENER_SOURCE, "opener.py", "exec"), namespace)  # noqa: S102
    x, y = namespace["load"]([train, test])  # type: ignore[operator]
    np.testing.assert_array_equal(x, np.concatenate([split.x_train, split.x_test]))
    np.testing.assert_array_equal(y, np.concatenate([split.y_train, split.y_test]))
    x_test, y_test = read_samples([test])
    np.testing.assert_array_equal(x_test, split.x_test)
    np.testing.assert_array_equal(y_test, split.y_test)
    with pytest.raises(DatasetError, match=r"no data\.npz"):
        read_samples([tmp_path])
