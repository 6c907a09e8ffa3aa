"""Example producer: publish one image and a few behaviour events, then read the user's recommendations.

    python examples/produce_events.py --bootstrap 127.0.0.1:9092 --redis redis://127.0.0.1:6379/0

Keys matter: behaviour is keyed by user_id (it picks the partition, and so the worker that owns the user);
images by image_id (the catalog topic is compacted per key; a null value deletes the image).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson
from aiokafka import AIOKafkaProducer

from streams.redis_store import AsyncRecommendationsClient


async def main(bootstrap: str, redis_url: str, user: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    now = int(time.time() * 1000)
    try:
        await producer.send_and_wait("new-images", key=b"img-example-1", value=orjson.dumps({
            "image_id": "img-example-1", "caption": "a red fox in the snow", "tags": ["fox", "winter"],
            "url": "https://example.invalid/img-example-1.jpg", "created_at": now}))
        for n, action in enumerate(["view", "click", "like"]):
            await producer.send_and_wait("user-behavior", key=user.encode(), value=orjson.dumps({
                "user_id": user, "image_id": "img-example-1", "action": action, "ts": now + n,
                "event_id": f"{user}-example-{n}", "dwell_ms": 2500}))
    finally:
        await producer.stop()
    client = AsyncRecommendationsClient(redis_url)
    for _ in range(50):
        rec = await client.get(user)
        if rec and rec["trigger"].get("event_id") == f"{user}-example-2":
            print(orjson.dumps(rec, option=orjson.OPT_INDENT_2).decode())
            break
        await asyncio.sleep(0.2)
    else:
        print("no recommendations yet: is a worker running? (reco worker)")
    await client.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--user", default="example-user")
    a = p.parse_args()
    asyncio.run(main(a.bootstrap, a.redis, a.user))
