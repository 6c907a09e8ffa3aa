"""Shared fixtures for the unit tests (no Kafka, no Redis, no network)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

#: Small embedding dimension for the model tests: fast, but large enough for distinct directions.
DIM = 16


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    m = rng.normal(size=(n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


@pytest.fixture
def unit_rows() -> Callable[..., np.ndarray]:
    """``unit_rows(n, dim=DIM, seed=0)``: ``n`` random unit float32 rows (deterministic per seed)."""

    def make(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
        return _unit_rows(np.random.default_rng(seed), n, dim)

    return make


@pytest.fixture
def basis() -> Callable[..., np.ndarray]:
    """``basis(i, dim=DIM)``: the i-th standard basis vector (float32)."""

    def make(i: int, dim: int = DIM) -> np.ndarray:
        v = np.zeros(dim, dtype=np.float32)
        v[i] = 1.0
        return v

    return make
