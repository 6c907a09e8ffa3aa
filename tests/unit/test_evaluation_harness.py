"""The prequential evaluation harness and the baselines (models/evaluation.py, models/baselines.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.baselines import ItemKNN, MostPopular, RecentPopular
from models.evaluation import (
    VERSIONED,
    EvalStream,
    build_parser,
    evaluate,
    load_any,
    load_movielens,
    main,
    rating_action,
    run_prequential,
    synthetic_stream,
)
from models.synthetic import BehaviourEvent, SyntheticConfig, write_stream

REPO = Path(__file__).resolve().parents[2]

UDATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250950\n22\t377\t1\t878887116\n"
CSV = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n2,1,2.5,964982224\n"


def test_movielens_loaders_sort_by_time_and_map_ratings(tmp_path):
    u = tmp_path / "u.data"
    u.write_text(UDATA)
    s = load_movielens(u)
    ts = [e.ts for e in s.events]
    assert ts == sorted(ts) and ts[0] == 878887116 * 1000
    assert [e.rating for e in s.events] == [1.0, 3.0, 5.0, 3.0]
    assert [s.positive(e) for e in s.events] == [False, False, True, False]
    assert s.events[0].action == "skip" and s.events[1].action == "view" and s.events[2].action == "like"
    c = tmp_path / "ratings.csv"
    c.write_text(CSV)
    s2 = load_any(c, threshold=3.5)
    assert [e.image_id for e in s2.events] == ["m3", "m1", "m1"]
    assert [s2.positive(e) for e in s2.events] == [True, False, True]
    assert len(load_movielens(c, limit=2).events) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError):
        load_movielens(bad, fmt="csv")


def test_rating_action_bands():
    assert [rating_action(r, 4.0) for r in (5, 4, 3.5, 3, 2.5, 1)] == ["like", "like", "view", "view", "skip", "skip"]


def test_baselines_never_recommend_seen_and_learn_positives():
    ev = [BehaviourEvent("u1", "a", "like", 1), BehaviourEvent("u2", "a", "like", 2),
          BehaviourEvent("u2", "b", "like", 3), BehaviourEvent("u3", "c", "skip", 4)]
    for b in (MostPopular(), RecentPopular(half_life_ms=1000.0), ItemKNN()):
        for e in ev:
            b.learn(e, e.action == "like")
        assert "a" not in b.recommend("u1", 5)
        assert b.recommend("u1", 5)[0] == "b"
        assert "c" not in b.recommend("u9", 5)  # never positive: not recommendable by popularity
    knn_all = ItemKNN(learn_from="all")
    for e in ev:
        knn_all.learn(e, e.action == "like")
    assert "c" in knn_all.recommend("u9", 5)
    with pytest.raises(ValueError):
        ItemKNN(learn_from="sometimes")


def test_run_prequential_reports_every_method(tmp_path):
    stream = synthetic_stream(SyntheticConfig(seed=1, dim=8, n_users=15, n_topics=4, n_initial_images=40,
                                              n_new_images=5, n_events=250))
    rep = run_prequential(stream, k=5)
    assert rep.n_tests == stream.n_positive() > 0
    assert set(rep.results) == {"model", "most-popular", "recent-popular", "item-knn", "item-knn-all"}
    for r in rep.results.values():
        assert r.tests == rep.n_tests and 0 <= r.recall <= 1 and 0 <= r.mrr <= r.recall
        assert 0 < r.coverage <= 1 and r.events_per_s > 0 and len(r.hit_flags) == rep.n_tests
    d = rep.to_dict()
    assert d["best_baseline"] in rep.results and json.dumps(d)
    assert "| model |" in rep.to_markdown()
    png = rep.plot(tmp_path / "r.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        run_prequential(stream, k=0)


def test_reports_record_how_they_were_run_and_the_library_releases(tmp_path):
    """A figure is reproducible only with its seed, data settings and library releases: all are in the report."""
    import numpy
    import torch

    u = tmp_path / "u.data"
    u.write_text(UDATA)
    rep = evaluate(u, threshold=3.0, limit=3, seed=4, progress=False)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["run"] == {"seed": 4, "item_vectors": "hash", "threshold": 3.0, "limit": 3}
    env = d["environment"]
    assert set(VERSIONED) <= set(env) and env["numpy"] == numpy.__version__
    assert env["torch"] == torch.__version__.split("+")[0] and env["cpus"] >= 1
    md = rep.to_markdown()
    assert "seed 4" in md and f"numpy {numpy.__version__}" in md and "limit 3" in md
    base = evaluate(u, include_model=False, progress=False)
    assert base.run["item_vectors"] is None and base.run["threshold"] == 4.0
    syn = evaluate(synthetic=True, synthetic_events=60, synthetic_users=5, seed=2, include_model=False, progress=False)
    assert syn.run == {"seed": 2, "item_vectors": None, "synthetic_events": 60, "synthetic_users": 5}


def test_first_rating_of_an_item_is_never_a_hit(tmp_path):
    """MovieLens items enter the catalog only after the test step of their first event (no leak)."""
    ev = [BehaviourEvent(f"u{n}", "m1", "like", n, 5.0) for n in range(1, 4)]
    s = EvalStream(list(ev), name="t", positive=lambda e: True)
    rep = run_prequential(s, k=3)
    for r in rep.results.values():
        assert r.hit_flags[0] is False


def test_cli_runs_on_a_stream_file_and_writes_outputs(tmp_path, capsys):
    from models.synthetic import generate

    path = tmp_path / "s.jsonl"
    write_stream(generate(SyntheticConfig(seed=2, dim=8, n_users=10, n_topics=3, n_initial_images=30,
                                          n_new_images=5, n_events=120)), path)
    out_png, out_json = tmp_path / "p.png", tmp_path / "r.json"
    assert main(["--data", str(path), "-k", "5", "--plot", str(out_png), "--json", str(out_json), "--quiet"]) == 0
    assert out_png.exists() and json.loads(out_json.read_text())["k"] == 5
    assert "recall@5" in capsys.readouterr().out


def test_cli_help():
    assert "--threshold" in build_parser().format_help()
    r = subprocess.run([sys.executable, "-m", "models.evaluation", "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "--plot" in r.stdout and "--k" in r.stdout


UITEM = ("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
         "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
         "3|Caf\xe9 (1996)|01-Jan-1996||http://x|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n")
MOVIES = 'movieId,title,genres\n1,"Toy Story (1995)",Adventure|Animation\n3,"Heat, The (1995)",(no genres listed)\n'


def test_item_metadata_is_read_from_the_file_beside_the_ratings(tmp_path):
    from models.evaluation import load_item_text

    (tmp_path / "u.data").write_text(UDATA)
    assert load_movielens(tmp_path / "u.data").item_text is None  # no u.item: no metadata
    (tmp_path / "u.item").write_bytes(UITEM.encode("latin-1"))
    t = load_movielens(tmp_path / "u.data").item_text
    assert t == {"m1": "Toy Story (1995). Genres: Animation, Children's, Comedy.",
                 "m2": "GoldenEye (1995). Genres: Action, Adventure, Thriller.", "m3": "Caf\xe9 (1996)."}
    (tmp_path / "ratings.csv").write_text(CSV)
    assert load_item_text(tmp_path / "ratings.csv") is None  # u.item belongs to u.data, not ratings.csv
    (tmp_path / "movies.csv").write_text(MOVIES)
    assert load_item_text(tmp_path / "ratings.csv") == {
        "m1": "Toy Story (1995). Genres: Adventure, Animation.", "m3": "Heat, The (1995)."}


def test_release_dates_are_read_beside_the_ratings_and_become_the_images_created_at(tmp_path):
    """u.item's release date, or the year in movies.csv's title (1 July of it), is the image's created_at the
    model sees, as a catalog event would carry it; never later than the image's first event."""
    from datetime import datetime, timezone

    from models.core import RecommenderCore
    from models.evaluation import load_item_created

    def ms(*date):
        return int(datetime(*date, tzinfo=timezone.utc).timestamp() * 1000)

    (tmp_path / "u.data").write_text(UDATA)
    assert load_movielens(tmp_path / "u.data").item_created is None  # no u.item
    uitem = UITEM + "4|No date (1990)|||http://x|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    (tmp_path / "u.item").write_bytes(uitem.encode("latin-1"))
    assert load_movielens(tmp_path / "u.data").item_created == {
        "m1": ms(1995, 1, 1), "m2": ms(1995, 1, 1), "m3": ms(1996, 1, 1)}
    (tmp_path / "ratings.csv").write_text(CSV)
    (tmp_path / "movies.csv").write_text(MOVIES + '7,"Untitled",Drama\n')
    assert load_item_created(tmp_path / "ratings.csv") == {"m1": ms(1995, 7, 1), "m3": ms(1995, 7, 1)}

    udata = "1\t1\t5\t788918400\n2\t3\t4\t788918401\n2\t9\t5\t788918402\n"  # m3 rated before its release
    (tmp_path / "u.data").write_text(udata)
    core = RecommenderCore(dim=384, k=3)
    run_prequential(load_movielens(tmp_path / "u.data"), k=3, baselines=[], core=core)
    assert core.index.created_at("m1") == ms(1995, 1, 1)
    assert core.index.created_at("m3") == 788918401 * 1000  # its first event, not 1 Jan 1996
    assert core.index.created_at("m9") == 788918402 * 1000  # no metadata: its first event


def test_genres_are_read_beside_the_ratings_and_become_the_images_tags(tmp_path):
    """The items' genres (u.item's flags, movies.csv's list) are the tags the model's catalog gets, as a
    catalog event would carry them; an item without genres has none."""
    from models.core import RecommenderCore

    (tmp_path / "u.data").write_text(UDATA)
    assert load_movielens(tmp_path / "u.data").item_tags is None  # no u.item
    (tmp_path / "u.item").write_bytes(UITEM.encode("latin-1"))
    assert load_movielens(tmp_path / "u.data").item_tags == {
        "m1": ["Animation", "Children's", "Comedy"], "m2": ["Action", "Adventure", "Thriller"]}
    (tmp_path / "ratings.csv").write_text(CSV)
    (tmp_path / "movies.csv").write_text(MOVIES)
    assert load_movielens(tmp_path / "ratings.csv").item_tags == {"m1": ["Adventure", "Animation"]}
    (tmp_path / "u.data").write_text("1\t1\t5\t788918400\n2\t3\t4\t788918401\n")
    core = RecommenderCore(dim=384, k=3)
    run_prequential(load_movielens(tmp_path / "u.data"), k=3, baselines=[], core=core)
    assert core.index.tags("m1") == ("animation", "children's", "comedy") and "m3" in core.index
    assert core.index.tags("m3") == ()


class _FakeEncoder:
    """Stands in for the MiniLM text encoder: a deterministic unit vector per text."""

    dim = 8

    def __init__(self):
        self.calls = 0

    def encode_texts(self, texts):
        import numpy as np

        self.calls += 1
        out = np.array([[float(len(t) % 7 + 1), float(sum(map(ord, t)) % 11)] + [1.0] * 6 for t in texts],
                       dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_meta_item_vectors_embed_descriptions_once_and_fall_back_to_hash():
    import numpy as np

    from models.evaluation import ItemVectors

    enc = _FakeEncoder()
    texts = {"m1": "Toy Story (1995). Genres: Animation.", "m2": "Heat (1995). Genres: Crime."}
    iv = ItemVectors(8, "meta", texts=texts, encoder=enc)
    assert enc.calls == 1  # all descriptions embedded up front, in one call
    np.testing.assert_allclose(iv.vector("m1"), enc.encode_texts([texts["m1"]])[0], rtol=1e-6)
    v = iv.vector("m1")
    v[0] = 99.0  # callers get copies
    assert iv.vector("m1")[0] != 99.0
    np.testing.assert_array_equal(iv.vector("m9"), ItemVectors(8, "hash").vector("m9"))  # no description
    assert abs(float(np.linalg.norm(iv.vector("m9"))) - 1.0) < 1e-5
    with pytest.raises(ValueError):
        ItemVectors(8, "meta", texts={}, encoder=enc)  # no metadata
    with pytest.raises(ValueError):
        ItemVectors(16, "meta", texts=texts, encoder=enc)  # encoder dim != model dim
    with pytest.raises(ValueError):
        ItemVectors(8, "words")


def test_auto_item_vectors_use_metadata_when_present(tmp_path):
    """With u.item beside u.data the model runs on 384-d text vectors (the real encoder), else on hash vectors."""
    import numpy as np

    from models.core import RecommenderCore
    from models.encoders import TextEncoder
    from models.evaluation import ItemVectors

    udata = "1\t1\t5\t10\n2\t1\t4\t11\n2\t2\t5\t12\n1\t2\t4\t13\n3\t7\t5\t14\n"
    (tmp_path / "u.data").write_text(udata)
    plain = run_prequential(load_movielens(tmp_path / "u.data"), k=3, baselines=[])
    (tmp_path / "u.item").write_bytes(UITEM.encode("latin-1"))
    stream = load_movielens(tmp_path / "u.data")
    core = RecommenderCore(dim=384, k=3)
    rep = run_prequential(stream, k=3, baselines=[], core=core)
    assert rep.results["model"].tests == plain.results["model"].tests == 5
    text = TextEncoder().encode_texts([stream.item_text["m1"]])[0]
    np.testing.assert_allclose(core.index.vectors(["m1"])["m1"], text, atol=1e-5)  # the description's vector
    np.testing.assert_allclose(core.index.vectors(["m7"])["m7"], ItemVectors(384, "hash").vector("m7"), atol=1e-6)
    with pytest.raises(ValueError):  # a 32-d model cannot take 384-d text vectors
        run_prequential(stream, k=3, baselines=[], item_vectors="meta", core=RecommenderCore(dim=32, k=3))
