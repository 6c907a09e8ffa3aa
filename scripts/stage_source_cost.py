"""The ``stage`` candidate source's cost, side by side in one process: a Zipf-skewed stream of interactions
over 10k / 100k / 1M images spread over the user stages, then for each size

- ``learn``: µs per :meth:`StagePopularity.learn` with the best-first lists in use (they are patched) and
  with none (a copy that never serves ``top_near``);
- ``top_near``: µs per request served from the kept lists, and per request that rebuilds the list from
  the counts (what every request would cost without them), interleaved with learns as in a worker.

    .venv/bin/python scripts/stage_source_cost.py [--sizes 10000,100000,1000000] [--events 200000] [--pool 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from models.stage import StagePopularity

STAGE_EVENTS = (0, 6, 12, 25, 40, 60, 90, 120, 170, 250, 400)  # one user history length per stage


def _stream(n_images: int, n_events: int, seed: int = 0) -> tuple[list[int], list[str], list[int]]:
    rng = np.random.default_rng(seed)
    items = (rng.zipf(1.2, n_events) - 1) % n_images
    weights = np.linspace(3, 1, len(STAGE_EVENTS))  # more events from early stages, as in MovieLens
    stages = rng.choice(STAGE_EVENTS, n_events, p=weights / weights.sum())
    ts = np.cumsum(rng.integers(0, 2000, n_events))  # ms: ~1 event/s of event time, a 30-day half-life
    return stages.tolist(), [f"i{i}" for i in items], ts.tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--events", type=int, default=200_000, help="interactions learnt before the timed part")
    p.add_argument("--timed", type=int, default=20_000, help="interactions in the timed part")
    p.add_argument("--pool", type=int, default=100, help="top_near's n (the ranker's stage_pool)")
    a = p.parse_args()
    print(f"{'images':>9} {'learn µs (lists kept)':>22} {'learn µs (no lists)':>20} "
          f"{'top_near µs (kept)':>19} {'top_near µs (rebuild)':>22} {'rebuild / kept':>15}")
    for n_images in (int(x) for x in a.sizes.split(",")):
        stages, names, ts = _stream(n_images, a.events + a.timed)
        kept = StagePopularity()
        for i in range(n_images):  # the whole catalog registered: count arrays as long as the catalog
            kept.registry.add(f"i{i}")
        bare = StagePopularity(registry=kept.registry)
        for e, name, t in zip(stages[:a.events], names[:a.events], ts[:a.events], strict=True):
            kept.learn(e, name, t)
            bare.learn(e, name, t)
        for e in STAGE_EVENTS:
            kept.top_near(e, a.pool)  # the lists exist, as in a running worker
        learn_kept = learn_bare = near_kept = near_rebuild = 0.0
        for k in range(a.events, a.events + a.timed):
            t0 = time.perf_counter()
            kept.learn(stages[k], names[k], ts[k])
            t1 = time.perf_counter()
            bare.learn(stages[k], names[k], ts[k])
            t2 = time.perf_counter()
            learn_kept += t1 - t0
            learn_bare += t2 - t1
            if k % 10 == 0:  # one request per 10 interactions
                g = STAGE_EVENTS[k % len(STAGE_EVENTS)]
                t0 = time.perf_counter()
                got = kept.top_near(g, a.pool)
                t1 = time.perf_counter()
                ref = kept._build(kept.stage(g), max(2 * a.pool, 64))  # what a request costs with no list
                t2 = time.perf_counter()
                near_kept += t1 - t0
                near_rebuild += t2 - t1
                assert got.tolist() == [-j for _, j in ref.asc[:-a.pool - 1:-1]]
        req = a.timed // 10
        print(f"{n_images:>9} {1e6 * learn_kept / a.timed:>22.1f} {1e6 * learn_bare / a.timed:>20.1f} "
              f"{1e6 * near_kept / req:>19.1f} {1e6 * near_rebuild / req:>22.1f} {near_rebuild / near_kept:>15.0f}")


if __name__ == "__main__":
    main()
