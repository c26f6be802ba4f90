"""Model state: what train tasks share and aggregate tasks combine.

A :class:`ModelState` holds named NumPy arrays in groups plus JSON metadata:

- ``params``: the model's weights (a PyTorch state dict, a linear model's
  ``coef_`` and ``intercept_``, any arrays);
- other groups for what a strategy adds (SCAFFOLD's ``control`` variates);
- ``meta``: JSON values (``num_samples`` of the update, ``dp_steps`` per
  organization, ...).

It is stored as one file in a small format that needs no pickle and writes
the same bytes for the same state, so that a model's checksum identifies it::

    b"AIRFEDM1" | header length (8 bytes, little endian) | JSON header | data

The header lists each array's group, name, dtype, shape, offset and length.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airfed.sdk.errors import AirfedError

__all__ = ["Arrays", "ModelState", "ModelStateError"]

Arrays = dict[str, np.ndarray]

_MAGIC = b"AIRFEDM1"
_ALLOWED_KINDS = frozenset("biuf")


class ModelStateError(AirfedError):  # type: ignore[misc,unused-ignore]
    """A model file is unreadable or holds something other than arrays."""


@dataclass
class ModelState:
    """Named arrays by group, plus JSON metadata."""

    params: Arrays
    groups: dict[str, Arrays] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.meta.get("num_samples", 0))

    def group(self, name: str) -> Arrays:
        return self.params if name == "params" else self.groups[name]

    def copy(self) -> ModelState:
        return ModelState(
            {k: v.copy() for k, v in self.params.items()},
            {g: {k: v.copy() for k, v in a.items()} for g, a in self.groups.items()},
            json.loads(json.dumps(self.meta)),
        )

    def to_bytes(self) -> bytes:
        entries, chunks, offset = [], [], 0
        for group, arrays in [("params", self.params), *sorted(self.groups.items())]:
            for name, array in arrays.items():
                data = np.asarray(array).copy(order="C")
                if data.dtype.kind not in _ALLOWED_KINDS:
                    raise ModelStateError(
                        f"array {group}/{name} has dtype {data.dtype}; only "
                        "numeric arrays can be stored"
                    )
                raw = data.astype(data.dtype.newbyteorder("<")).tobytes()
                entries.append(
                    {
                        "group": group,
                        "name": name,
                        "dtype": data.dtype.newbyteorder("<").str,
                        "shape": list(data.shape),
                        "offset": offset,
                        "length": len(raw),
                    }
                )
                chunks.append(raw)
                offset += len(raw)
        header = json.dumps(
            {"arrays": entries, "meta": self.meta}, sort_keys=True
        ).encode()
        return b"".join([_MAGIC, struct.pack("<Q", len(header)), header, *chunks])

    @classmethod
    def from_bytes(cls, blob: bytes) -> ModelState:
        if blob[: len(_MAGIC)] != _MAGIC or len(blob) < len(_MAGIC) + 8:
            raise ModelStateError("not an airfed model file (bad magic bytes)")
        (length,) = struct.unpack("<Q", blob[len(_MAGIC) : len(_MAGIC) + 8])
        start = len(_MAGIC) + 8
        try:
            header = json.loads(blob[start : start + length])
            return cls._from_header(header, memoryview(blob)[start + length :])
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelStateError(f"model file is damaged: {exc}") from exc

    @classmethod
    def _from_header(cls, header: Mapping[str, Any], data: memoryview) -> ModelState:
        state = cls({}, {}, dict(header["meta"]))
        for entry in header["arrays"]:
            dtype = np.dtype(entry["dtype"])
            if dtype.kind not in _ALLOWED_KINDS:
                raise ModelStateError(f"array dtype {dtype} is not allowed")
            end = entry["offset"] + entry["length"]
            if end > len(data):
                raise ModelStateError("model file is truncated")
            array = np.frombuffer(data[entry["offset"] : end], dtype=dtype)
            array = array.reshape(entry["shape"]).astype(dtype.newbyteorder("="))
            group = entry["group"]
            target = (
                state.params
                if group == "params"
                else state.groups.setdefault(group, {})
            )
            target[entry["name"]] = array
        return state

    def save(self, path: Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> ModelState:
        try:
            blob = Path(path).read_bytes()
        except OSError as exc:
            raise ModelStateError(f"cannot read model file {path}: {exc}") from exc
        return cls.from_bytes(blob)
