"""The ranker's scoring function, learned online with torch from the stream itself.

``score(x) = w · f(x) + MLP(z(x))`` over a small vector of candidate features ``f`` (see
:data:`models.ranking.FEATURES`). ``w`` starts at a hand-set prior (so a fresh model already ranks
sensibly) and the MLP's output layer starts at zero; both are then trained online.

``z(x) = (f(x) - μ) / σ`` standardises the MLP's input (``standardize=True``, the default): ``μ`` and ``σ``
are the mean and standard deviation of every feature row the scorer has trained on, counted since it was
created, with ``σ`` floored at ``std_floor`` (a feature that is almost always 0, such as ``fresh``, is not
blown up to dozens of units). The features' raw scales differ by two orders of magnitude (a standard
deviation of 0.02 to 1.8 over ml-100k's training rows), and with one initial scale and one step size for
every input the MLP learned little from the small-scale ones. ``μ`` and ``σ`` are refreshed at each training
step and held between steps, so scores between two steps come from one fixed function. The linear part
reads the raw features, so the prior keeps its meaning. On the whole of ml-100k this took recall@20 from
0.3725 to 0.3742 (seed 0) and from 0.3712 to 0.3736 (seed 1).

Training data come from the stream: for each positive event the core builds a *group* of feature rows
computed from the user's state *before* the event: row 0 is the image the user acted on, the others are
negatives: the other candidates of that state (what the ranker scored or served for it: every candidate
source's images, up to the core's ``max_negatives``) and the images the user skipped or hid since their
last positive. A positive the candidate sources missed makes no group. The loss is the sampled-softmax cross-entropy of
the positive within its group, which directly trains "put the chosen image first". Groups are buffered
and one Adam step is taken per ``batch_groups`` new groups, followed by ``replay_steps`` steps on
minibatches drawn from a bounded replay ring of recent groups (experience replay: every group is used
more than once, yet only the recent past is remembered). Adam's constant step size, weight decay and the
bounded replay keep the model tracking drift rather than converging once.

Inference is plain NumPy on a copy of the weights refreshed after every step (fast, and it cannot
disturb torch's autograd state). Torch is imported lazily, on the first training step. Everything is
deterministic given ``seed`` and the sequence of groups.

>>> s = OnlineScorer(n_features=2, prior=[1.0, 0.0], batch_groups=4, lr=0.05, seed=0)
>>> s.score(np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)).round(3).tolist()
[1.0, 0.0]
>>> steps = [s.observe(np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)) for _ in range(200)]
>>> sum(steps), s.steps
(50, 150)
>>> bool(s.score(np.array([[0.0, 1.0]], dtype=np.float32))[0] > s.score(np.array([[1.0, 0.0]], dtype=np.float32))[0])
True
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Sequence

import numpy as np
import orjson

from .serial import rng_state, set_rng_state
from .errors import DimensionMismatch, InvalidInput, StateError

_FORMAT = 2  # 2: the MLP input's standardisation; format 1 (before it) still loads, with it off


def preload_torch() -> float:
    """Import torch and the optimizer's lazily imported machinery now; returns the seconds it took.

    :class:`OnlineScorer` imports torch on its first training step, and building its first Adam optimizer
    imports ``torch._dynamo`` besides: ~3 s together on this box, once per process. In a worker that step
    runs on the event loop (at the 16th positive event after start-up), where those seconds stall every
    batch, ``/ready`` and ``/metrics``. A worker calls this while it starts instead (before it consumes);
    replays and tests keep the lazy import. The tensor it creates is thrown away: no scorer state changes.
    """
    t0 = time.perf_counter()
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    return time.perf_counter() - t0


class OnlineScorer:
    def __init__(
        self,
        n_features: int,
        *,
        prior: Sequence[float] | None = None,
        hidden: int = 32,
        lr: float = 0.01,
        weight_decay: float = 1e-4,
        batch_groups: int = 16,
        max_group: int = 1024,
        replay: int = 2048,
        replay_steps: int = 2,
        replay_batch: int = 64,
        replay_rows: int = 128,
        standardize: bool = True,
        std_floor: float = 0.05,
        seed: int = 0,
    ) -> None:
        if n_features < 1 or hidden < 0 or batch_groups < 1 or max_group < 2 or lr <= 0:
            raise ValueError("n_features, batch_groups, lr must be positive, max_group >= 2, hidden >= 0")
        if replay < 0 or replay_steps < 0 or replay_batch < 1 or replay_rows < 2:
            raise ValueError("replay, replay_steps >= 0, replay_batch >= 1, replay_rows >= 2")
        if not std_floor > 0:
            raise ValueError("std_floor must be positive")
        self.n_features = n_features
        self.hidden = hidden
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_groups = batch_groups
        self.max_group = max_group
        self.replay = replay
        self.replay_steps = replay_steps
        self.replay_batch = replay_batch
        self.replay_rows = replay_rows
        self.standardize = bool(standardize)
        self.std_floor = float(std_floor)
        self.seed = seed
        p = np.zeros(n_features, dtype=np.float32) if prior is None else np.asarray(prior, dtype=np.float32)
        if p.shape != (n_features,) or not np.all(np.isfinite(p)):
            raise DimensionMismatch(f"prior must be {n_features} finite numbers")
        self.prior = p.copy()
        # NumPy copies of the parameters used for inference.
        self._w = p.copy()
        rng = np.random.default_rng(seed)
        self._w1 = (rng.normal(size=(n_features, hidden)) / np.sqrt(n_features)).astype(np.float32)
        self._b1 = np.zeros(hidden, dtype=np.float32)
        self._w2 = np.zeros(hidden, dtype=np.float32)
        # Standardisation of the MLP's input: running sums over every training row, and the (μ, σ) in use.
        self._rows = 0
        self._sum = np.zeros(n_features, dtype=np.float64)
        self._sumsq = np.zeros(n_features, dtype=np.float64)
        self._mu = np.zeros(n_features, dtype=np.float32)
        self._sd = np.ones(n_features, dtype=np.float32)
        self._buffer: list[np.ndarray] = []
        self._replay: list[np.ndarray] = []  # ring buffer of past groups (rows subsampled)
        self._replay_pos = 0
        self._rng = np.random.default_rng([seed, 1])
        self.steps = 0
        self.groups_seen = 0
        self._torch = None  # (module, optimizer), built lazily

    # ------------------------------------------------------------------ inference
    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores for an (n, n_features) matrix; the input is not modified."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise DimensionMismatch(f"features must be (n, {self.n_features}), got {x.shape}")
        out = x @ self._w
        if self.hidden:
            z = (x - self._mu) / self._sd if self.standardize else x
            out = out + np.maximum(z @ self._w1 + self._b1, 0.0) @ self._w2
        return out

    def standardization(self) -> tuple[np.ndarray, np.ndarray]:
        """The (μ, σ) the MLP's input is standardised with now (copies; zeros and ones when off)."""
        return self._mu.copy(), self._sd.copy()

    # ------------------------------------------------------------------ learning
    def observe(self, group: np.ndarray) -> bool:
        """Buffer one group (row 0 positive, rows 1.. negatives); returns True when a step was taken."""
        g = np.array(group, dtype=np.float32)  # copy
        if g.ndim != 2 or g.shape[1] != self.n_features:
            raise DimensionMismatch(f"group must be (m, {self.n_features}), got {g.shape}")
        if g.shape[0] < 2:
            return False
        if not np.all(np.isfinite(g)):
            raise InvalidInput("feature group has NaN/Inf", reason="non_finite")
        g = g[: self.max_group]
        self._buffer.append(g)
        self.groups_seen += 1
        if self.standardize:
            g64 = g.astype(np.float64)
            self._rows += g64.shape[0]
            self._sum += g64.sum(axis=0)
            self._sumsq += (g64 * g64).sum(axis=0)
        if len(self._buffer) >= self.batch_groups:
            self._step()
            return True
        return False

    def _build(self):
        import torch
        from torch import nn

        with torch.no_grad():
            lin = nn.Linear(self.n_features, 1, bias=False)
            lin.weight.copy_(torch.from_numpy(self._w[None, :]))
            layers = {"lin": lin}
            if self.hidden:
                l1 = nn.Linear(self.n_features, self.hidden)
                l2 = nn.Linear(self.hidden, 1, bias=False)
                l1.weight.copy_(torch.from_numpy(self._w1.T.copy()))
                l1.bias.copy_(torch.from_numpy(self._b1))
                l2.weight.copy_(torch.from_numpy(self._w2[None, :]))
                layers.update(l1=l1, l2=l2)
        module = nn.ModuleDict(layers)
        opt = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self._torch = (torch, module, opt)

    def _forward(self, x):
        torch, module, _ = self._torch
        out = module["lin"](x).squeeze(-1)
        if self.hidden:
            z = (x - torch.from_numpy(self._mu)) / torch.from_numpy(self._sd) if self.standardize else x
            out = out + module["l2"](torch.relu(module["l1"](z))).squeeze(-1)
        return out

    def _refresh_standardization(self) -> None:
        """(μ, σ) from the running sums; σ floored at ``std_floor`` (and the variance clipped at 0 against
        rounding)."""
        if not (self.standardize and self._rows):
            return
        mu = self._sum / self._rows
        var = np.maximum(self._sumsq / self._rows - mu * mu, 0.0)
        self._mu = mu.astype(np.float32)
        self._sd = np.maximum(np.sqrt(var), self.std_floor).astype(np.float32)

    def _step(self) -> None:
        if self._torch is None:
            self._build()
        torch, module, opt = self._torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: threads only add OpenMP contention (with FAISS's pool)
        try:
            new, self._buffer = self._buffer, []
            self._refresh_standardization()  # held for this step's updates and the scores until the next
            self._step_inner(torch, module, opt, new)
            self.steps += 1
            if self.replay:
                for g in new:
                    self._remember(g)
                for _ in range(self.replay_steps):
                    pick = self._rng.choice(len(self._replay), size=min(self.replay_batch, len(self._replay)), replace=False)
                    self._step_inner(torch, module, opt, [self._replay[j] for j in sorted(pick)])
                    self.steps += 1
        finally:
            torch.set_num_threads(threads)
        self._sync()

    def _remember(self, g: np.ndarray) -> None:
        """Keep the positive and a uniform sample of ``replay_rows - 1`` negatives in the replay ring."""
        if g.shape[0] > self.replay_rows:
            rows = 1 + np.sort(self._rng.choice(g.shape[0] - 1, size=self.replay_rows - 1, replace=False))
            g = np.vstack([g[:1], g[rows]])
        if len(self._replay) < self.replay:
            self._replay.append(g)
        else:
            self._replay[self._replay_pos] = g
            self._replay_pos = (self._replay_pos + 1) % self.replay

    def _step_inner(self, torch, module, opt, groups: list[np.ndarray]) -> None:
        m = max(g.shape[0] for g in groups)
        x = np.zeros((len(groups), m, self.n_features), dtype=np.float32)
        mask = np.zeros((len(groups), m), dtype=bool)
        for i, g in enumerate(groups):
            x[i, : g.shape[0]] = g
            mask[i, : g.shape[0]] = True
        xt = torch.from_numpy(x)
        mt = torch.from_numpy(mask)
        logits = self._forward(xt).masked_fill(~mt, float("-inf"))
        loss = -torch.log_softmax(logits, dim=1)[:, 0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def _sync(self) -> None:
        _, module, _ = self._torch
        with self._torch[0].no_grad():
            self._w = module["lin"].weight.detach().numpy()[0].copy()
            if self.hidden:
                self._w1 = module["l1"].weight.detach().numpy().T.copy()
                self._b1 = module["l1"].bias.detach().numpy().copy()
                self._w2 = module["l2"].weight.detach().numpy()[0].copy()

    # ------------------------------------------------------------------ persistence
    def weights(self) -> dict[str, np.ndarray]:
        return {"w": self._w.copy(), "w1": self._w1.copy(), "b1": self._b1.copy(), "w2": self._w2.copy()}

    def to_bytes(self) -> bytes:
        """Parameters (and Adam's moments, if any) so a restored scorer continues identically."""
        opt_state = None
        if self._torch is not None:
            torch, module, opt = self._torch
            buf = io.BytesIO()
            torch.save({"module": module.state_dict(), "opt": opt.state_dict()}, buf)
            opt_state = base64.b64encode(buf.getvalue()).decode()
        enc = {k: _b64(v, "<f4") for k, v in self.weights().items()}
        return orjson.dumps({
            "f": _FORMAT, "n": self.n_features, "h": self.hidden, "prior": self.prior.tolist(), "p": enc,
            "cfg": [self.lr, self.weight_decay, self.batch_groups, self.max_group, self.seed,
                    self.replay, self.replay_steps, self.replay_batch, self.replay_rows],
            "steps": self.steps, "groups": self.groups_seen, "torch": opt_state,
            "buffer": [_enc_group(g) for g in self._buffer],
            "replay_groups": [_enc_group(g) for g in self._replay], "replay_pos": self._replay_pos,
            "rng": rng_state(self._rng),
            "std": {"on": self.standardize, "floor": self.std_floor, "rows": self._rows,
                    "sum": _b64(self._sum, "<f8"), "sumsq": _b64(self._sumsq, "<f8"),
                    "mu": _b64(self._mu, "<f4"), "sd": _b64(self._sd, "<f4")},
        })

    @classmethod
    def from_bytes(cls, raw: bytes) -> OnlineScorer:
        try:
            d = orjson.loads(raw)
            if d.get("f") not in (1, _FORMAT):
                raise StateError(f"unknown scorer format {d.get('f')!r}")
            lr, wd, bg, mg, seed, rp, rs, rb, rr = d["cfg"]
            std = d.get("std")  # absent in format 1: that scorer was trained on raw inputs, and stays so
            self = cls(int(d["n"]), prior=d["prior"], hidden=int(d["h"]), lr=lr, weight_decay=wd,
                       batch_groups=int(bg), max_group=int(mg), seed=int(seed), replay=int(rp),
                       replay_steps=int(rs), replay_batch=int(rb), replay_rows=int(rr),
                       standardize=bool(std and std["on"]), std_floor=float(std["floor"]) if std else 0.05)
            if std is not None:
                n = self.n_features
                self._rows = int(std["rows"])
                self._sum, self._sumsq = _unb64(std["sum"], "<f8", n), _unb64(std["sumsq"], "<f8", n)
                self._mu, self._sd = _unb64(std["mu"], "<f4", n), _unb64(std["sd"], "<f4", n)
                if not (np.all(np.isfinite(self._mu)) and np.all(self._sd > 0)):
                    raise StateError("scorer standardisation has non-finite means or non-positive deviations")
            shapes = {"w": (self.n_features,), "w1": (self.n_features, self.hidden), "b1": (self.hidden,),
                      "w2": (self.hidden,)}
            for k, shape in shapes.items():
                arr = np.frombuffer(base64.b64decode(d["p"][k]), dtype="<f4").reshape(shape).astype(np.float32)
                setattr(self, "_" + k, arr)
            self.steps, self.groups_seen = int(d["steps"]), int(d["groups"])
            self._buffer = [_dec_group(x, self.n_features) for x in d["buffer"]]
            self._replay = [_dec_group(x, self.n_features) for x in d["replay_groups"]]
            self._replay_pos = int(d["replay_pos"])
            set_rng_state(self._rng, d["rng"])
            if d["torch"] is not None:
                self._build()
                torch, module, opt = self._torch
                blob = torch.load(io.BytesIO(base64.b64decode(d["torch"])), weights_only=True)
                module.load_state_dict(blob["module"])
                opt.load_state_dict(blob["opt"])
            return self
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"cannot decode scorer state: {exc}") from exc


#: Member ``i`` of a :class:`ScorerEnsemble` built with ``seed`` is an :class:`OnlineScorer` with seed
#: ``seed + MEMBER_SEED_STRIDE * i``, so member 0 is the scorer a single-member ensemble would be.
MEMBER_SEED_STRIDE = 1000


class ScorerEnsemble:
    """The mean score of ``members`` :class:`OnlineScorer` s that learn from the same groups.

    The members differ only in their seed: the MLP's initial weights, and which past groups (and which of
    their negatives) each one replays. Each learns on its own (its own Adam state, standardisation and
    replay ring) and scores with its own copy of the weights; the ensemble's score is their mean. An online
    learner with a constant step size never settles: its weights keep moving with the last minibatches, so
    its ranking carries noise of its own, and averaging two such learners cancels part of it (a classic
    variance reduction; scoring with the average of one learner's recent weights did not, see
    docs/ml-100k-study.md). On the whole of ml-100k two members took recall@20 from 0.3742 to 0.3776
    (seed 0) and from 0.3736 to 0.3766 (seed 1), and on ml-latest-small, not used for the choice, from
    0.2351 to 0.2371 and from 0.2339 to 0.2358; a third did not add to it (0.3770 on ml-100k, seed 0).
    Each member costs one scorer's training time (the second: 4 % of the replay's throughput) and its own
    replay ring (~34 MB when full).

    Everything an :class:`OnlineScorer` is checked for holds: a bad group is rejected (by member 0) before
    any member's state changes; deterministic given ``seed`` and the groups; the state round-trips through
    bytes.

    >>> e = ScorerEnsemble(2, members=2, prior=[1.0, 0.0], batch_groups=4, lr=0.05, seed=0)
    >>> [m.seed for m in e.members]
    [0, 1000]
    >>> steps = [e.observe(np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)) for _ in range(200)]
    >>> sum(steps), e.steps, e.groups_seen
    (50, 150, 200)
    >>> s = e.score(np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32))
    >>> bool(s[0] > s[1])
    True
    """

    kind = "ensemble"

    def __init__(self, n_features: int, *, members: int = 2, seed: int = 0, **scorer_kw) -> None:
        if isinstance(members, bool) or not isinstance(members, int) or members < 1:
            raise ValueError(f"members must be a positive integer, got {members!r}")
        self.seed = seed
        self.members = [OnlineScorer(n_features, seed=seed + MEMBER_SEED_STRIDE * i, **scorer_kw)
                        for i in range(members)]

    @property
    def n_features(self) -> int:
        return self.members[0].n_features

    @property
    def steps(self) -> int:
        """Training steps of each member (they step together, on the same groups)."""
        return self.members[0].steps

    @property
    def groups_seen(self) -> int:
        return self.members[0].groups_seen

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mean of the members' scores for an (n, n_features) matrix; the input is not modified."""
        x = np.asarray(features, dtype=np.float32)
        out = self.members[0].score(x)  # validates the shape
        for m in self.members[1:]:
            out = out + m.score(x)
        return out / np.float32(len(self.members))

    def observe(self, group: np.ndarray) -> bool:
        """Every member learns the group; True when they took a step. A bad group changes no member: member
        0 validates it before it changes anything, and raises before the others see it."""
        stepped = [m.observe(group) for m in self.members]
        assert len(set(stepped)) == 1, "the members step together"
        return stepped[0]

    def to_bytes(self) -> bytes:
        return orjson.dumps({"kind": self.kind, "f": 1, "seed": self.seed,
                             "members": [m.to_bytes().decode() for m in self.members]})

    @classmethod
    def from_bytes(cls, raw: bytes) -> ScorerEnsemble:
        try:
            d = orjson.loads(raw)
            if d.get("kind") != cls.kind or d.get("f") != 1:
                raise StateError(f"not a scorer ensemble state (kind {d.get('kind')!r}, format {d.get('f')!r})")
            members = [OnlineScorer.from_bytes(m.encode()) for m in d["members"]]
            if not members or len({m.n_features for m in members}) != 1:
                raise StateError("a scorer ensemble needs members of one feature count")
            self = cls.__new__(cls)
            self.seed, self.members = int(d["seed"]), members
            return self
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"cannot decode scorer ensemble state: {exc}") from exc


Scorer = OnlineScorer | ScorerEnsemble


def scorer_from_bytes(raw: bytes) -> Scorer:
    """Either kind of scorer from its :meth:`to_bytes` (a :class:`ScorerEnsemble`'s state names its kind)."""
    try:
        kind = orjson.loads(raw).get("kind")
    except Exception as exc:
        raise StateError(f"cannot decode scorer state: {exc}") from exc
    return ScorerEnsemble.from_bytes(raw) if kind == ScorerEnsemble.kind else OnlineScorer.from_bytes(raw)


def _b64(a: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode()


def _unb64(s: str, dtype: str, n: int) -> np.ndarray:
    a = np.frombuffer(base64.b64decode(s), dtype=dtype)
    if a.shape != (n,):
        raise StateError(f"scorer standardisation has {a.shape[0]} values, expected {n}")
    return a.astype(np.float64 if dtype == "<f8" else np.float32)


def _enc_group(g: np.ndarray) -> list:
    return [int(g.shape[0]), _b64(g, "<f4")]


def _dec_group(item: list, n_features: int) -> np.ndarray:
    m, b = item
    return np.frombuffer(base64.b64decode(b), dtype="<f4").reshape(int(m), n_features).astype(np.float32)
