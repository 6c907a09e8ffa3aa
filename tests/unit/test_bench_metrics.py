"""The bench's reading of the worker's histograms over one load level (bucket deltas between two scrapes)."""

from __future__ import annotations

import math

from streams.bench import _metrics_delta


def _hist(name: str, bounds: tuple[str, ...], counts: tuple[float, ...], total_sum: float = 0.0) -> dict[str, float]:
    d = {f'{name}_bucket{{le="{b}"}}': float(c) for b, c in zip(bounds, counts, strict=True)}
    d[f"{name}_count"] = float(counts[-1])
    d[f"{name}_sum"] = total_sum
    return d


LOOP = ("0.005", "0.01", "0.1", "1.0", "5.0", "+Inf")
E2R = ("0.05", "0.25", "1.0", "+Inf")


def test_level_deltas_give_mean_batch_p99_and_loop_delay() -> None:
    m0 = {"reco_batch_size_count": 10.0, "reco_batch_size_sum": 100.0,
          **_hist("reco_event_to_redis_seconds", E2R, (5, 5, 5, 5)),
          **_hist("reco_event_loop_delay_seconds", LOOP, (50, 50, 50, 50, 51, 51))}  # an old 4 s stall
    # over the level: 20 batches of 250 events; 1,000 events of which 995 within 250 ms and 5 within 1 s;
    # 100 loop samples, 98 within 10 ms, one within 100 ms, one within 1 s
    m1 = {"reco_batch_size_count": 30.0, "reco_batch_size_sum": 5_100.0,
          **_hist("reco_event_to_redis_seconds", E2R, (5 + 600, 5 + 995, 5 + 1_000, 5 + 1_000)),
          **_hist("reco_event_loop_delay_seconds", LOOP, (50 + 90, 50 + 98, 50 + 99, 50 + 100, 151, 151))}
    mean_batch, e2r_p99, loop_p99, loop_max = _metrics_delta(m0, m1)
    assert mean_batch == 250.0
    assert e2r_p99 == 250.0  # 995 of 1,000 (>= 99 %) within the 0.25 s bucket
    assert loop_p99 == 100.0  # 99 of 100 within 0.1 s
    assert loop_max == 1000.0  # the slowest sample of the level is in the 1 s bucket; the old stall is not


def test_missing_scrapes_or_histograms_give_nan() -> None:
    assert all(math.isnan(v) for v in _metrics_delta({}, {"reco_batch_size_count": 1.0}))
    m = {"reco_batch_size_count": 1.0, "reco_batch_size_sum": 4.0}  # a worker without the loop histogram
    mean_batch, _, loop_p99, loop_max = _metrics_delta({"reco_batch_size_count": 0.0}, m)
    assert mean_batch == 4.0 and math.isnan(loop_p99) and math.isnan(loop_max)
