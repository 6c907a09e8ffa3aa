"""Versioned event contracts (JSON via orjson) and their validation.

Every event may carry ``"schema": <int>``; absent means 1. A parser raises :class:`InvalidEvent` with a
stable ``reason`` code (the dead-letter label and metric label) for anything it cannot accept.

Reason codes: ``empty``, ``too_large``, ``not_json``, ``not_object``, ``unsupported_schema``,
``missing_field``, ``wrong_type``, ``bad_id``, ``key_mismatch``, ``unknown_action``, ``bad_timestamp``,
``future_timestamp``, ``bad_dwell``, ``bad_embedding``, ``dimension_mismatch``, ``non_finite``,
``zero_vector``, ``huge_values``, ``bad_field``, ``nothing_to_embed``.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from models.errors import InvalidInput
from models.interest import ACTIONS
from models.vectors import as_unit_vector

from .errors import InvalidEvent

SCHEMA_VERSION = 1
RECOMMENDATION_SCHEMA = 1
DEAD_LETTER_SCHEMA = 1

_BOOL = bool


def _now_ms() -> int:
    return int(time.time() * 1000)


def _load_object(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    if raw is None or len(raw) == 0:
        raise InvalidEvent("empty payload", "empty")
    if len(raw) > max_bytes:
        raise InvalidEvent(f"payload of {len(raw)} bytes exceeds the {max_bytes}-byte limit", "too_large")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid UTF-8 JSON: {exc}", "not_json") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"expected a JSON object, got {type(obj).__name__}", "not_object")
    version = obj.get("schema", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, _BOOL):
        raise InvalidEvent(f"unsupported schema version {version!r} (this worker reads {SCHEMA_VERSION})",
                           "unsupported_schema")
    return obj


def _req(obj: dict, name: str, typ: type | tuple[type, ...]) -> Any:
    if name not in obj or obj[name] is None:
        raise InvalidEvent(f"missing required field {name!r}", "missing_field")
    return _typed(obj, name, typ)


def _opt(obj: dict, name: str, typ: type | tuple[type, ...]) -> Any:
    if obj.get(name) is None:
        return None
    return _typed(obj, name, typ)


def _typed(obj: dict, name: str, typ: type | tuple[type, ...]) -> Any:
    value = obj[name]
    if isinstance(value, _BOOL) and typ is not _BOOL or not isinstance(value, typ):
        raise InvalidEvent(f"field {name!r} must be {getattr(typ, '__name__', typ)}, got {type(value).__name__}",
                           "wrong_type")
    return value


def _check_id(value: str, name: str, max_len: int) -> str:
    if not value or len(value) > max_len or not value.isprintable() or value != value.strip():
        shown = value[:40] + ("…" if len(value) > 40 else "")
        raise InvalidEvent(f"{name} {shown!r} must be 1..{max_len} printable characters without surrounding spaces",
                           "bad_id")
    return value


def _check_ts(value: int, name: str, max_future_skew_ms: int, now_ms: int | None) -> int:
    if value < 0 or value > 2**53:
        raise InvalidEvent(f"{name}={value} is not an epoch-ms timestamp", "bad_timestamp")
    now = _now_ms() if now_ms is None else now_ms
    if value > now + max_future_skew_ms:
        raise InvalidEvent(f"{name}={value} is more than {max_future_skew_ms} ms in the future", "future_timestamp")
    return value


@dataclass(frozen=True, slots=True)
class BehaviorEvent:
    user_id: str
    image_id: str
    action: str
    ts: int
    event_id: str | None = None
    dwell_ms: int | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"schema": SCHEMA_VERSION, "user_id": self.user_id, "image_id": self.image_id,
                             "action": self.action, "ts": self.ts}
        if self.event_id is not None:
            d["event_id"] = self.event_id
        if self.dwell_ms is not None:
            d["dwell_ms"] = self.dwell_ms
        return d

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())


def parse_behavior(raw: bytes | None, *, key: bytes | None = None, max_bytes: int = 64 * 1024,
                   max_id_length: int = 256, max_future_skew_ms: int = 86_400_000,
                   now_ms: int | None = None) -> BehaviorEvent:
    obj = _load_object(raw, max_bytes)
    user_id = _check_id(_req(obj, "user_id", str), "user_id", max_id_length)
    image_id = _check_id(_req(obj, "image_id", str), "image_id", max_id_length)
    action = _req(obj, "action", str)
    if action not in ACTIONS:
        raise InvalidEvent(f"unknown action {action[:40]!r}; expected one of {', '.join(ACTIONS)}", "unknown_action")
    ts = _check_ts(_req(obj, "ts", int), "ts", max_future_skew_ms, now_ms)
    event_id = _opt(obj, "event_id", str)
    if event_id is not None:
        _check_id(event_id, "event_id", max_id_length)
    dwell = _opt(obj, "dwell_ms", int)
    if dwell is not None and not 0 <= dwell <= 86_400_000:
        raise InvalidEvent(f"dwell_ms={dwell} outside 0..86400000", "bad_dwell")
    if key is not None and key != user_id.encode():
        raise InvalidEvent("record key differs from user_id (events would land on the wrong partition)",
                           "key_mismatch")
    return BehaviorEvent(user_id, image_id, action, ts, event_id, dwell)


@dataclass(frozen=True, slots=True)
class ImageEvent:
    image_id: str
    created_at: int
    embedding: np.ndarray | None = None  # validated unit vector when present
    caption: str | None = None
    tags: tuple[str, ...] = ()
    url: str | None = None

    def text(self) -> str:
        from models.encoders import image_text

        return image_text(self.caption, self.tags)


def parse_image(raw: bytes | None, *, key: bytes | None, dim: int, max_bytes: int = 1024 * 1024,
                max_id_length: int = 256, max_future_skew_ms: int = 86_400_000,
                now_ms: int | None = None) -> ImageEvent | None:
    """Parse a ``new-images`` record; returns None for a tombstone (null value = delete ``key``)."""
    if raw is None:
        if not key:
            raise InvalidEvent("tombstone without a key", "empty")
        return None
    obj = _load_object(raw, max_bytes)
    image_id = _check_id(_req(obj, "image_id", str), "image_id", max_id_length)
    if key is not None and key != image_id.encode():
        raise InvalidEvent("record key differs from image_id (compaction would keep the wrong record)",
                           "key_mismatch")
    created_at = _check_ts(_req(obj, "created_at", int), "created_at", max_future_skew_ms, now_ms)
    caption = _opt(obj, "caption", str)
    if caption is not None and len(caption) > 10_000:
        raise InvalidEvent("caption longer than 10000 characters", "bad_field")
    tags = _opt(obj, "tags", list) or []
    if len(tags) > 100 or not all(isinstance(t, str) and 0 < len(t) <= 100 for t in tags):
        raise InvalidEvent("tags must be at most 100 non-empty strings of <= 100 characters", "bad_field")
    url = _opt(obj, "url", str)
    emb = _opt(obj, "embedding", list)
    vector = None
    if emb is not None:
        if not all(isinstance(x, (int, float)) and not isinstance(x, _BOOL) for x in emb):
            raise InvalidEvent("embedding must be a list of numbers", "bad_embedding")
        try:
            vector = as_unit_vector(emb, dim)
        except InvalidInput as exc:
            raise InvalidEvent(str(exc), exc.reason) from None
    elif not (caption and caption.strip()) and not tags:
        raise InvalidEvent("image has neither embedding nor caption/tags to embed", "nothing_to_embed")
    return ImageEvent(image_id, created_at, vector, caption, tuple(tags), url)


# ----------------------------------------------------------------------------- derived catalog records

def catalog_record(image: ImageEvent, vector: np.ndarray, source_offset: int) -> bytes:
    """Value on the compacted ``image-catalog`` topic: the validated image with its unit vector (base64 f32)."""
    return orjson.dumps({
        "schema": SCHEMA_VERSION, "image_id": image.image_id, "created_at": image.created_at,
        "vector_b64": base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode(),
        "caption": image.caption, "tags": list(image.tags), "url": image.url, "source_offset": source_offset,
    })


def parse_catalog(raw: bytes, dim: int) -> tuple[str, np.ndarray, int, list[str]]:
    """(image_id, vector, created_at, tags) of an ``image-catalog`` value (records written before tags were
    read have them too; one without the field has none)."""
    obj = orjson.loads(raw)
    vec = np.frombuffer(base64.b64decode(obj["vector_b64"]), dtype="<f4").astype(np.float32)
    if vec.shape != (dim,):
        raise InvalidEvent(f"catalog vector has dim {vec.shape[0]}, index is {dim}", "dimension_mismatch")
    tags = obj.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidEvent("catalog tags must be a list of strings", "bad_field")
    return obj["image_id"], vec, int(obj["created_at"]), tags


# ----------------------------------------------------------------------------- outputs

def recommendation_event(*, user_id: str, items: list[dict], trigger: dict, model_version: str,
                         generated_at: int, version: int) -> dict:
    """The ``recommendations`` contract; ``rec_id`` lets later clicks be attributed."""
    return {
        "schema": RECOMMENDATION_SCHEMA, "user_id": user_id, "items": items, "generated_at": generated_at,
        "trigger": trigger, "model_version": model_version, "rec_id": uuid.uuid4().hex, "version": version,
    }


def dead_letter(*, value: bytes | None, key: bytes | None, topic: str, partition: int, offset: int,
                error: BaseException, reason: str, worker: str) -> bytes:
    """The ``dead-letters`` contract: original bytes (base64), where they came from, and why they failed."""
    return orjson.dumps({
        "schema": DEAD_LETTER_SCHEMA,
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "key_b64": base64.b64encode(key).decode() if key is not None else None,
        "value_b64": base64.b64encode(value).decode() if value is not None else None,
        "error": {"class": type(error).__name__, "message": str(error)[:2000], "reason": reason},
        "failed_at": _now_ms(), "worker": worker,
    })


def decode_dead_letter(raw: bytes) -> dict:
    d = orjson.loads(raw)
    d["value"] = base64.b64decode(d["value_b64"]) if d.get("value_b64") is not None else None
    d["key"] = base64.b64decode(d["key_b64"]) if d.get("key_b64") is not None else None
    return d
