"""Smoke test of the benchmark harness in a tiny configuration on the session's real broker and Redis:
it runs the three pipelines and prints their rows. Not a timed assertion: rates only have to be positive."""

from __future__ import annotations

import re

import pytest

from streams.bench import BenchConfig, run_bench

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_bench_prints_floor_naive_and_project_rows(kafka, redis_server, tmp_path, capsys) -> None:
    cfg = BenchConfig(
        images=1_000, dim=16, users=100, themes=16, warmup_events=200, drain_s=2.0, min_events=600,
        max_events=2_000, levels=(0.5,), level_s=1.5, probe_rate=20.0, probes=20, new_images=2,
        search_queries=50, pipelines=("floor", "naive", "project"), bootstrap=kafka.bootstrap,
        redis_url=redis_server.url, work_dir=str(tmp_path / "bench"), out=str(tmp_path / "bench.json"),
        drain_timeout_s=60.0, model_bench=False,
    )
    res = run_bench(cfg)
    out = capsys.readouterr().out
    for name in ("floor", "naive", "project"):
        m = re.search(rf"^{re.escape(name)}\s+([\d,]+)\s", out, flags=re.M)
        assert m, f"no {name} row in:\n{out}"
        assert int(m.group(1).replace(",", "")) > 0, f"{name} rate is not positive:\n{out}"
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"floor", "naive", "project"}
    for name, r in rows.items():
        assert r["error"] is None, f"{name}: {r['error']}"
        assert r["rate"] > 0 and r["levels"] and r["levels"][0]["probes"] > 0
    assert rows["project"]["new_image_ms"] and res["index"]["kinds"]["hnsw"]["recall@20"] > 0.9
    lv = rows["project"]["levels"][0]  # the worker's loop-delay histogram, scraped over the level
    assert lv["loop_p99_ms"] >= 5 and lv["loop_max_ms"] >= lv["loop_p99_ms"]
    assert (tmp_path / "bench.json").exists()
