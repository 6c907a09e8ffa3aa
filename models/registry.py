"""Dense integer ids for image ids, shared by the core's learned components.

Co-visitation counts, item embeddings and engagement counters all index NumPy arrays by the same dense
integer, so a request maps its candidate ids to integers once and every feature is then a vectorised
lookup. Ids are assigned in order of first appearance (deterministic given the event order) and never
reused; a deleted image keeps its slot (its rows are zeroed by the components).

>>> reg = ItemRegistry()
>>> reg.add("a"), reg.add("b"), reg.add("a")
(0, 1, 0)
>>> reg.lookup(["b", "zz", "a"]).tolist()
[1, -1, 0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class ItemRegistry:
    def __init__(self) -> None:
        self._int: dict[str, int] = {}
        self._names: list[str] = []

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._int

    def add(self, image_id: str) -> int:
        i = self._int.get(image_id)
        if i is None:
            i = self._int[image_id] = len(self._names)
            self._names.append(image_id)
        return i

    def get(self, image_id: str) -> int | None:
        return self._int.get(image_id)

    def name(self, i: int) -> str:
        return self._names[i]

    @property
    def names(self) -> list[str]:
        return self._names

    def lookup(self, image_ids: Sequence[str]) -> np.ndarray:
        """Integer ids (``-1`` for unknown images), one Python-level dict lookup per id."""
        get = self._int.get
        return np.fromiter((get(i, -1) for i in image_ids), dtype=np.int64, count=len(image_ids))


def grow(arr: np.ndarray, n: int) -> np.ndarray:
    """``arr`` (rows indexed by registry id) with at least ``n`` rows, zero-filled, capacity doubling."""
    if arr.shape[0] >= n:
        return arr
    cap = max(64, arr.shape[0])
    while cap < n:
        cap *= 2
    out = np.zeros((cap,) + arr.shape[1:], dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out
