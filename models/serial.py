"""Small helpers for the learned components' exact (bit-for-bit) state serialisation."""

from __future__ import annotations

from typing import Any

import numpy as np


def rng_state(rng: np.random.Generator) -> Any:
    """The generator's state as JSON-safe data (its 128-bit integers become strings)."""
    return _ints_to_str(rng.bit_generator.state)


def set_rng_state(rng: np.random.Generator, state: Any) -> None:
    rng.bit_generator.state = _str_to_ints(state)


def _ints_to_str(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _ints_to_str(v) for k, v in x.items()}
    if isinstance(x, bool):
        return x
    if isinstance(x, int):
        return {"__int__": str(x)}
    return x


def _str_to_ints(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__int__"}:
            return int(x["__int__"])
        return {k: _str_to_ints(v) for k, v in x.items()}
    return x
