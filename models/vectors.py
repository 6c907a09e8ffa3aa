"""Vector validation shared by every model component.

>>> v = as_unit_vector([3.0, 4.0], dim=2)
>>> [round(float(x), 2) for x in v]
[0.6, 0.8]
>>> as_unit_vector([1.0, 2.0, 3.0], dim=2)
Traceback (most recent call last):
...
models.errors.DimensionMismatch: expected a vector of dimension 2, got 3
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import DimensionMismatch, InvalidInput, NonFiniteVector, ZeroVector

#: Components larger than this are treated as corrupt input (float32 overflows around 3.4e38 when squared).
MAX_ABS_COMPONENT = 1e6


def as_unit_vector(values: Any, dim: int) -> np.ndarray:
    """Validate one embedding and return a new L2-normalised float32 copy (the input is never modified)."""
    try:
        arr = np.array(values, dtype=np.float64)  # copy
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"embedding is not a list of numbers: {exc}", reason="bad_embedding") from None
    if arr.ndim != 1:
        raise InvalidInput(f"embedding must be a flat list, got shape {arr.shape}", reason="bad_embedding")
    if arr.shape[0] != dim:
        raise DimensionMismatch(f"expected a vector of dimension {dim}, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteVector("embedding contains NaN or Inf")
    if np.max(np.abs(arr)) > MAX_ABS_COMPONENT:
        raise InvalidInput(f"embedding component exceeds {MAX_ABS_COMPONENT:g}", reason="huge_values")
    norm = float(np.linalg.norm(arr))
    if norm == 0.0:
        raise ZeroVector("embedding is all zeros")
    return (arr / norm).astype(np.float32)


def as_unit_matrix(values: Any, dim: int) -> np.ndarray:
    """Validate a batch of embeddings (n, dim); returns a new normalised float32 matrix."""
    try:
        arr = np.array(values, dtype=np.float64)  # copy; float64 so huge values are caught, not overflowed
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"embeddings are not a rectangular batch of numbers: {exc}", reason="bad_embedding") from None
    if arr.ndim != 2:
        raise InvalidInput(f"expected a 2-D batch of vectors, got shape {arr.shape}", reason="bad_embedding")
    if arr.shape[1] != dim:
        raise DimensionMismatch(f"expected vectors of dimension {dim}, got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteVector("batch contains NaN or Inf")
    if arr.size and np.max(np.abs(arr)) > MAX_ABS_COMPONENT:
        raise InvalidInput(f"embedding component exceeds {MAX_ABS_COMPONENT:g}", reason="huge_values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ZeroVector("batch contains an all-zero vector")
    return (arr / norms).astype(np.float32)
