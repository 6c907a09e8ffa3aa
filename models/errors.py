"""One exception root for the whole project, with families.

``RecommenderError``
  ├── ``InvalidInput``            bad data from outside; carries a short ``reason`` code (dead-letter label)
  │     ├── ``DimensionMismatch`` vector of the wrong length (rejected, never truncated or padded)
  │     ├── ``NonFiniteVector``   NaN or ±Inf in a vector (or in a weight)
  │     └── ``ZeroVector``        all-zero vector (no direction to compare by)
  ├── ``StateError``              persisted state (snapshot, table value) cannot be decoded
  └── ``ConfigError``             settings that contradict each other (e.g. encoder dim != index dim)

``streams.errors`` adds the Kafka/Redis families on top of this root.
"""

from __future__ import annotations


class RecommenderError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidInput(RecommenderError, ValueError):
    """Input that can never be processed; ``reason`` is a stable, low-cardinality code."""

    reason: str = "invalid"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class DimensionMismatch(InvalidInput):
    reason = "dimension_mismatch"


class NonFiniteVector(InvalidInput):
    reason = "non_finite"


class ZeroVector(InvalidInput):
    reason = "zero_vector"


class StateError(RecommenderError):
    """A stored state (snapshot, table value) is corrupt or of an unknown version."""


class ConfigError(RecommenderError):
    """Settings that cannot work together."""
