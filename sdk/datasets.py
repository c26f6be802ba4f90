"""Data sets that ship with scikit-learn, split over organizations.

The Wisconsin breast cancer set (569 samples, 30 features, 2 classes) and the
8x8 digits set (1,797 samples, 64 features, 10 classes) are split over
organizations by a seeded partition:

- ``iid``: samples are shuffled and dealt out evenly;
- ``dirichlet``: label skew after Hsu, Qi and Brown, "Measuring the effects of
  non-identical data distribution for federated visual classification" (2019):
  for each class, the share of each organization is drawn from
  ``Dirichlet(alpha, ..., alpha)``; a small ``alpha`` (0.5) gives each
  organization a few dominant classes.

Each organization's part is then split into a training part and a held-out
test part. Features are scaled: digits to [0, 1] (pixel values are 0 to 16),
breast cancer standardized with the mean and standard deviation of the union
of the training parts (in a real federation these two statistics are a
federated mean, which reveals no sample).

:func:`write_organization_data` writes one organization's parts as two data
sample folders (``data.npz`` each) and :data:`OPENER_SOURCE` is the dataset
opener (contract A) that reads them back as ``(X, y)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from airfed.sdk.errors import AirfedError

__all__ = [
    "DATASET_NAMES",
    "OPENER_SOURCE",
    "DatasetError",
    "FederatedDataset",
    "OrganizationSplit",
    "load_dataset",
    "make_federated_dataset",
    "partition",
    "read_samples",
    "write_opener",
    "write_organization_data",
]

DatasetName = Literal["breast_cancer", "digits"]
Scheme = Literal["iid", "dirichlet"]
DATASET_NAMES: tuple[DatasetName, ...] = ("breast_cancer", "digits")

OPENER_SOURCE = '''"""Opener: reads data sample folders of airfed.sdk.datasets."""

from pathlib import Path

import numpy as np


def load(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    features, labels = [], []
    for path in paths:
        with np.load(Path(path) / "data.npz", allow_pickle=False) as data:
            features.append(data["X"])
            labels.append(data["y"])
    return np.concatenate(features), np.concatenate(labels)
'''


class DatasetError(AirfedError):  # type: ignore[misc,unused-ignore]
    """A data set name, a partition setting or a sample folder is wrong."""


@dataclass(frozen=True)
class OrganizationSplit:
    """One organization's share: a training part and a held-out test part."""

    organization: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True)
class FederatedDataset:
    """A data set split over organizations, with everything a benchmark needs."""

    name: str
    scheme: Scheme
    num_classes: int
    num_features: int
    splits: tuple[OrganizationSplit, ...]

    @property
    def organizations(self) -> tuple[str, ...]:
        return tuple(split.organization for split in self.splits)

    def pooled_train(self) -> tuple[np.ndarray, np.ndarray]:
        """The union of the training parts (only a benchmark may pool data)."""
        return _concat([(s.x_train, s.y_train) for s in self.splits])

    def pooled_test(self) -> tuple[np.ndarray, np.ndarray]:
        """The union of the held-out test parts."""
        return _concat([(s.x_test, s.y_test) for s in self.splits])


def _concat(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([x for x, _ in parts]),
        np.concatenate([y for _, y in parts]),
    )


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and labels (int64) of a data set shipped with sklearn."""
    from sklearn import datasets

    if name == "breast_cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
    elif name == "digits":
        x, y = datasets.load_digits(return_X_y=True)
        x = x / 16.0
    else:
        raise DatasetError(
            f"unknown data set {name!r}; choose one of {', '.join(DATASET_NAMES)}"
        )
    return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)


def partition(
    labels: np.ndarray,
    num_organizations: int,
    *,
    scheme: Scheme = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_samples: int = 10,
) -> list[np.ndarray]:
    """Indices of each organization's samples; the same seed gives the same split.

    With ``dirichlet``, draws are repeated (from the same seeded generator)
    until every organization holds at least ``min_samples`` samples.
    """
    if num_organizations < 1:
        raise DatasetError("the number of organizations must be at least 1")
    if len(labels) < num_organizations * min_samples:
        raise DatasetError(
            f"{len(labels)} samples cannot give {num_organizations} organizations "
            f"{min_samples} samples each; use fewer organizations"
        )
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        order = rng.permutation(len(labels))
        return [np.sort(part) for part in np.array_split(order, num_organizations)]
    if scheme == "dirichlet":
        if alpha <= 0:
            raise DatasetError(f"alpha must be positive, not {alpha}")
        return _dirichlet(labels, num_organizations, alpha, rng, min_samples)
    raise DatasetError(f"unknown partition scheme {scheme!r}; use iid or dirichlet")


def _dirichlet(
    labels: np.ndarray,
    num_organizations: int,
    alpha: float,
    rng: np.random.Generator,
    min_samples: int,
) -> list[np.ndarray]:
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_organizations)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_organizations, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_samples:
            return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]
    raise DatasetError(
        f"no Dirichlet draw gave every organization {min_samples} samples; "
        "raise alpha or use fewer organizations"
    )


def make_federated_dataset(
    name: str,
    organizations: Sequence[str],
    *,
    scheme: Scheme = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> FederatedDataset:
    """Load ``name``, split it over ``organizations``, hold out a test part each."""
    if not 0 < test_fraction < 1:
        raise DatasetError(
            f"test_fraction must be between 0 and 1, not {test_fraction}"
        )
    x, y = load_dataset(name)
    indices = partition(y, len(organizations), scheme=scheme, alpha=alpha, seed=seed)
    rng = np.random.default_rng([seed, 1])
    splits = []
    for organization, own in zip(organizations, indices, strict=True):
        own = rng.permutation(own)
        cut = max(1, round(len(own) * test_fraction))
        test, train = own[:cut], own[cut:]
        splits.append(
            OrganizationSplit(organization, x[train], y[train], x[test], y[test])
        )
    if name == "breast_cancer":
        splits = _standardize(splits)
    return FederatedDataset(
        name=name,
        scheme=scheme,
        num_classes=int(y.max()) + 1,
        num_features=int(x.shape[1]),
        splits=tuple(splits),
    )


def _standardize(splits: list[OrganizationSplit]) -> list[OrganizationSplit]:
    pooled = np.concatenate([s.x_train for s in splits])
    mean, std = pooled.mean(axis=0), pooled.std(axis=0) + 1e-6
    return [
        OrganizationSplit(
            s.organization,
            ((s.x_train - mean) / std).astype(np.float32),
            s.y_train,
            ((s.x_test - mean) / std).astype(np.float32),
            s.y_test,
        )
        for s in splits
    ]


def write_organization_data(
    split: OrganizationSplit, folder: Path
) -> tuple[Path, Path]:
    """Write ``folder/train`` and ``folder/test`` data sample folders."""
    train, test = Path(folder) / "train", Path(folder) / "test"
    _write_sample(train, split.x_train, split.y_train)
    _write_sample(test, split.x_test, split.y_test)
    return train, test


def _write_sample(folder: Path, x: np.ndarray, y: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "data.npz").open("wb") as handle:
        np.savez(handle, X=x, y=y)


def write_opener(path: Path) -> Path:
    """Write the opener that reads the data sample folders; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OPENER_SOURCE)
    return path


def read_samples(folders: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read data sample folders as the opener does (for local checks)."""
    parts = []
    for folder in folders:
        path = Path(folder) / "data.npz"
        if not path.is_file():
            raise DatasetError(f"{folder} holds no data.npz; write it first")
        with np.load(path, allow_pickle=False) as data:
            parts.append((data["X"], data["y"]))
    return _concat(parts)
