"""The image index: a FAISS inner-product index over unit vectors, keyed by string image ids.

Every worker holds a full replica (behaviour is partitioned by user, but each user must be able to see the
whole catalog). The replica is derived state: :meth:`ImageIndex.snapshot` writes it, together with the
source-topic offsets it reflects, to one file atomically; :meth:`ImageIndex.restore` reads it back.

Vectors are added in batches (one FAISS call per batch, never one per vector: faiss #3316). Removal uses
``IndexIDMap2`` over a flat index, where ``remove_ids`` is O(N) per call, so removals are batched too.

>>> import numpy as np
>>> idx = ImageIndex(dim=2)
>>> idx.upsert(["a", "b"], np.array([[1, 0], [0, 1]], dtype=np.float32), created_at=[1, 2])
>>> [hit[0] for hit in idx.search(np.array([[0.9, 0.1]], dtype=np.float32), k=2)[0]]
['a', 'b']
>>> idx.remove(["a"]), "a" in idx, len(idx)
(1, False, 1)
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np
import orjson

from .errors import DimensionMismatch, InvalidInput, StateError
from .vectors import as_unit_matrix

SNAPSHOT_FORMAT = 1
_MAGIC = b"RECOIDX1"

Hit = tuple[str, float]


class ImageIndex:
    """Exact cosine search (IndexIDMap2 + IndexFlatIP) with upsert/remove/snapshot/restore."""

    def __init__(self, dim: int) -> None:
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._int_of: dict[str, int] = {}
        self._str_of: dict[int, str] = {}
        self._created_at: dict[str, int] = {}
        self._next_id = 0

    # ------------------------------------------------------------------ mutation
    def upsert(self, image_ids: Sequence[str], vectors: np.ndarray, created_at: Sequence[int] | None = None) -> None:
        """Insert or replace a batch of images. ``vectors`` is (n, dim); it is validated and normalised (copied)."""
        if len(image_ids) == 0:
            return
        mat = as_unit_matrix(vectors, self.dim)
        if mat.shape[0] != len(image_ids):
            raise InvalidInput(f"{len(image_ids)} ids for {mat.shape[0]} vectors", reason="bad_batch")
        # Last write wins inside one batch, as on the compacted topic.
        last: dict[str, int] = {}
        for row, image_id in enumerate(image_ids):
            last[image_id] = row
        ids = list(last)
        rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        self.remove([i for i in ids if i in self._int_of])
        new_ints = np.arange(self._next_id, self._next_id + len(ids), dtype=np.int64)
        self._next_id += len(ids)
        self._index.add_with_ids(np.ascontiguousarray(mat[rows]), new_ints)
        for image_id, iid, row in zip(ids, new_ints.tolist(), rows.tolist(), strict=True):
            self._int_of[image_id] = iid
            self._str_of[iid] = image_id
            self._created_at[image_id] = int(created_at[row]) if created_at is not None else 0

    def remove(self, image_ids: Iterable[str]) -> int:
        """Remove a batch of images; unknown ids are ignored. Returns how many were removed."""
        ints = [self._int_of.pop(i) for i in image_ids if i in self._int_of]
        if not ints:
            return 0
        for iid in ints:
            self._created_at.pop(self._str_of.pop(iid), None)
        self._index.remove_ids(np.array(ints, dtype=np.int64))
        return len(ints)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._int_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._int_of

    def ids(self) -> list[str]:
        return list(self._int_of)

    def created_at(self, image_id: str) -> int | None:
        return self._created_at.get(image_id)

    def vectors(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored unit vectors for the ids that exist (missing ids are left out)."""
        known = [i for i in image_ids if i in self._int_of]
        if not known:
            return {}
        mat = self._index.reconstruct_batch(np.array([self._int_of[i] for i in known], dtype=np.int64))
        return {i: mat[n].copy() for n, i in enumerate(known)}

    def newest(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` most recently created images as (image_id, created_at)."""
        items = sorted(self._created_at.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        return items[:n]

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """One batched search; returns per query up to ``k`` (image_id, cosine) pairs, best first."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DimensionMismatch(f"queries must be (n, {self.dim}), got {q.shape}")
        if q.shape[0] == 0 or len(self) == 0 or k <= 0:
            return [[] for _ in range(q.shape[0])]
        kk = min(k, len(self))
        scores, ints = self._index.search(np.ascontiguousarray(q), kk)
        out: list[list[Hit]] = []
        str_of = self._str_of
        for srow, irow in zip(scores.tolist(), ints.tolist(), strict=True):
            out.append([(str_of[i], s) for i, s in zip(irow, srow, strict=True) if i >= 0])
        return out

    # ------------------------------------------------------------------ persistence
    def snapshot(self, path: str | os.PathLike[str], offsets: dict[int, int]) -> None:
        """Write index + metadata + the source offsets it reflects to ``path`` atomically (tmp + fsync + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = orjson.dumps({
            "format": SNAPSHOT_FORMAT, "dim": self.dim, "next_id": self._next_id,
            "ids": [[i, s, self._created_at[s]] for s, i in self._int_of.items()],
            "offsets": {str(p): o for p, o in offsets.items()},
        })
        blob = faiss.serialize_index(self._index).tobytes()
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(_MAGIC + struct.pack("<Q", len(meta)) + meta + blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def restore(cls, path: str | os.PathLike[str], dim: int) -> tuple[ImageIndex, dict[int, int]]:
        """Read a snapshot; raises :class:`StateError` when it is corrupt or of another dimension/format."""
        try:
            raw = Path(path).read_bytes()
            buf = io.BytesIO(raw)
            if buf.read(8) != _MAGIC:
                raise StateError(f"{path}: not an index snapshot")
            (n,) = struct.unpack("<Q", buf.read(8))
            meta = orjson.loads(buf.read(n))
            if meta.get("format") != SNAPSHOT_FORMAT or meta.get("dim") != dim:
                raise StateError(f"{path}: snapshot format/dim {meta.get('format')}/{meta.get('dim')} != {SNAPSHOT_FORMAT}/{dim}")
            index = faiss.deserialize_index(np.frombuffer(buf.read(), dtype=np.uint8))
        except StateError:
            raise
        except Exception as exc:  # faiss raises RuntimeError, orjson JSONDecodeError, struct.error ...
            raise StateError(f"{path}: cannot read snapshot: {exc}") from exc
        self = cls(dim)
        self._index = index
        self._next_id = meta["next_id"]
        for iid, sid, created in meta["ids"]:
            self._int_of[sid] = iid
            self._str_of[iid] = sid
            self._created_at[sid] = created
        if self._index.ntotal != len(self._int_of):
            raise StateError(f"{path}: index holds {self._index.ntotal} vectors but metadata {len(self._int_of)}")
        return self, {int(p): o for p, o in meta["offsets"].items()}
