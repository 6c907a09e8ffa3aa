"""Kafka plumbing shared by the worker, CLI and tests: client options (incl. SASL/SSL) and topic creation.

Faust does not create source topics, so :func:`ensure_topics` pre-creates every topic the app reads or
writes, with partition counts that match the user table (behaviour topic partitions == table partitions)
and ``cleanup.policy=compact`` for the catalog topics.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from .errors import KafkaUnavailable
from .settings import Settings


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    if "SSL" not in s.kafka_security_protocol:
        return None
    ctx = ssl.create_default_context(cafile=str(s.kafka_ssl_cafile) if s.kafka_ssl_cafile else None)
    if s.kafka_ssl_certfile:
        ctx.load_cert_chain(str(s.kafka_ssl_certfile), str(s.kafka_ssl_keyfile) if s.kafka_ssl_keyfile else None)
    return ctx


def client_kwargs(s: Settings) -> dict:
    """Keyword arguments for any aiokafka client (consumer, producer, admin) built from the settings."""
    kw: dict = {"bootstrap_servers": s.kafka_bootstrap, "security_protocol": s.kafka_security_protocol}
    ctx = ssl_context(s)
    if ctx is not None:
        kw["ssl_context"] = ctx
    if s.kafka_security_protocol.startswith("SASL"):
        kw["sasl_mechanism"] = s.kafka_sasl_mechanism
        kw["sasl_plain_username"] = s.kafka_sasl_username
        kw["sasl_plain_password"] = s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None
    return kw


def faust_credentials(s: Settings):
    """The same security settings in Faust's terms (``broker_credentials``)."""
    import faust

    ctx = ssl_context(s)
    if s.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=s.kafka_sasl_username,
            password=s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None,
            mechanism=s.kafka_sasl_mechanism, ssl_context=ctx,
        )
    if ctx is not None:
        return faust.SSLCredentials(ctx)
    return None


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compact: bool = False


def topic_specs(s: Settings) -> list[TopicSpec]:
    return [
        TopicSpec(s.topic_behavior, s.partitions),
        TopicSpec(s.topic_images, s.image_partitions, compact=True),
        TopicSpec(s.topic_catalog, s.image_partitions, compact=True),
        TopicSpec(s.topic_recommendations, s.partitions),
        TopicSpec(s.topic_dead_letters, 1),
    ]


async def ensure_topics(s: Settings, timeout_s: float = 30.0) -> dict[str, int]:
    """Create missing topics; verify the partition counts of existing ones. Returns name -> partitions."""
    admin = AIOKafkaAdminClient(**client_kwargs(s), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        existing = set(await admin.list_topics())
        new = []
        for spec in topic_specs(s):
            if spec.name in existing:
                continue
            cfg = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1",
                   "segment.ms": "600000"} if spec.compact else {}
            new.append(NewTopic(spec.name, spec.partitions, s.replication_factor, topic_configs=cfg))
        if new:
            try:
                await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            except TopicAlreadyExistsError:
                pass
        names = [t.name for t in topic_specs(s)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:  # freshly created topics can be described with 0 partitions for a moment
            described = await admin.describe_topics(names)
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            if all(counts.get(n) for n in names) or loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
        for spec in topic_specs(s):
            if spec.name == s.topic_behavior and counts.get(spec.name) != s.partitions:
                raise KafkaUnavailable(
                    f"topic {spec.name} has {counts.get(spec.name)} partitions but RECO_PARTITIONS={s.partitions}; "
                    "the user table must be co-partitioned with it")
        return counts
    except (KafkaError, asyncio.TimeoutError, OSError) as exc:
        raise KafkaUnavailable(f"cannot reach Kafka at {s.kafka_bootstrap} to create topics: {exc!r}") from exc
    finally:
        await admin.close()


async def stop_consumer(consumer) -> None:
    """Stop an aiokafka consumer. aiokafka 0.14 re-raises the CancelledError of its own cancelled
    committed-offset task from ``NoGroupCoordinator.close`` (manual assignment); that is not our task
    being cancelled, so it is swallowed here — but a real cancellation of the caller still propagates."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def partitions_of(consumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    """Partition ids of ``topic`` as seen by a started consumer that has no subscription yet
    (its cached metadata may not name the topic: refresh until it does, or time out with [])."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts or loop.time() > deadline:
            return sorted(parts or ())
        consumer._client.add_topic(topic)
        await consumer._client.force_metadata_update()
        if not consumer.partitions_for_topic(topic):
            await asyncio.sleep(0.2)
