"""Replayable mode's cost, side by side in one process: the same synthetic stream replayed test-then-learn
through the core in the default and in replayable mode, alternating (machines are noisy: compare the
rows of one run). Prints recall@20, MRR@20 and the model's events/s per run.

    .venv/bin/python scripts/replayable_cost.py [--events 8000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

from models.core import RecommenderCore
from models.evaluation import run_prequential, synthetic_stream
from models.synthetic import SyntheticConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=8000)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    cfg = SyntheticConfig(seed=0, n_events=a.events, n_users=200, n_initial_images=800, n_new_images=200)
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(a.rounds):
        for replayable in (False, True):
            stream = synthetic_stream(cfg)
            core = RecommenderCore(dim=stream.dim, k=20, seed=0, replayable=replayable)
            t0 = time.perf_counter()
            r = run_prequential(stream, 20, core=core, baselines=[]).results["model"]
            rates[replayable].append(r.events_per_s)
            print(f"replayable={replayable!s:5}: recall@20 {r.recall:.4f}  MRR@20 {r.mrr:.4f}  "
                  f"{r.events_per_s:,.0f} events/s ({1e6 / r.events_per_s:,.0f} us/event)  "
                  f"wall {time.perf_counter() - t0:.1f}s")
    ratios = [b / a for a, b in zip(rates[False], rates[True], strict=True)]
    print("replayable / default events/s, per round: " + ", ".join(f"{x:.2f}" for x in ratios))


if __name__ == "__main__":
    main()
