"""Kafka/Redis-facing error families, on top of :mod:`models.errors`' root.

Third-party exceptions (aiokafka, redis) are translated once, here at the boundary, into these classes,
which carry the topic/partition/offset they happened at.
"""

from __future__ import annotations

from models.errors import InvalidInput, RecommenderError


class StreamError(RecommenderError):
    """Something went wrong around one Kafka record; ``where`` says which."""

    def __init__(self, message: str, *, topic: str | None = None, partition: int | None = None,
                 offset: int | None = None) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        where = f" [{topic}/{partition}@{offset}]" if topic is not None else ""
        super().__init__(f"{message}{where}")


class InvalidEvent(StreamError, InvalidInput):
    """A record that can never be processed (bad bytes, schema violation); goes to dead letters."""

    def __init__(self, message: str, reason: str, **where: object) -> None:
        StreamError.__init__(self, message, **where)  # type: ignore[arg-type]
        self.reason = reason


class SinkError(StreamError):
    """An output (Redis, Kafka) could not be written; retried, never dropped."""


class RedisUnavailable(SinkError):
    pass


class KafkaUnavailable(SinkError):
    pass


def invalid(exc: InvalidInput, *, topic: str, partition: int, offset: int) -> InvalidEvent:
    """Translate a model-level InvalidInput into an InvalidEvent with record context."""
    if isinstance(exc, InvalidEvent):
        exc.topic, exc.partition, exc.offset = topic, partition, offset
        return exc
    return InvalidEvent(str(exc), exc.reason, topic=topic, partition=partition, offset=offset)
