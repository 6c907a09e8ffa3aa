"""The recommendation core: pure Python/NumPy/FAISS/torch, usable and testable without Kafka."""

from .core import MODEL_VERSION, PushMatch, RecommenderCore, Shard, refresh_batches
from .ease import ItemLinear
from .encoders import TextEncoder, TorchScriptImageEncoder, image_text
from .errors import (
    ConfigError,
    DimensionMismatch,
    InvalidInput,
    NonFiniteVector,
    RecommenderError,
    StateError,
    ZeroVector,
)
from .index import ImageIndex
from .interest import ACTIONS, InterestModel
from .popularity import Popularity
from .ranking import Ranker, RecItem
from .scorer import OnlineScorer, ScorerEnsemble, preload_torch, scorer_from_bytes
from .state import UserState
from .vectors import as_unit_matrix, as_unit_vector

__all__ = [
    "ACTIONS", "MODEL_VERSION", "ConfigError", "DimensionMismatch", "ImageIndex", "InterestModel", "ItemLinear",
    "InvalidInput", "NonFiniteVector", "OnlineScorer", "Popularity", "PushMatch", "Ranker", "RecItem", "RecommenderCore",
    "RecommenderError", "ScorerEnsemble", "Shard", "StateError", "TextEncoder", "TorchScriptImageEncoder", "UserState",
    "ZeroVector", "as_unit_matrix", "as_unit_vector", "image_text", "preload_torch", "refresh_batches",
    "scorer_from_bytes",
]
