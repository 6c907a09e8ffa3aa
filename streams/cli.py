"""``reco``: the command line for workers, demo traffic, reading results, lag, evaluation and benchmarks."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import orjson

import typer
from rich.console import Console
from rich.table import Table

from .settings import Settings

app = typer.Typer(help="Streaming real-time image recommender (Kafka + FAISS + Redis).", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
console = Console()


def _settings() -> Settings:
    return Settings()


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("aiokafka", "faust.transport", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


@app.command()
def worker() -> None:
    """Run one worker: behaviour + image agents, user table, index replica, Redis/Kafka sinks, /metrics.

    Configure with RECO_* environment variables (see README: Configuration). Start as many as you like
    with the same RECO_APP_ID; partitions are balanced between them.
    """
    import faust

    from .app import create_app
    from .kafka import ensure_topics

    s = _settings()
    _setup_logging(s.log_level)
    if os.environ.get("RECO_DEBUG_BATCHES"):
        logging.getLogger("streams.app").setLevel(logging.DEBUG)
    asyncio.run(ensure_topics(s))
    faust_app, _pipe = create_app(s)
    faust.Worker(faust_app, loglevel=s.log_level, quiet=True, redirect_stdouts=False).execute_from_commandline()


@app.command()
def topics() -> None:
    """Create the topics (partitions from settings, compaction for the catalog topics) if missing."""
    from .kafka import ensure_topics

    counts = asyncio.run(ensure_topics(_settings()))
    for name, n in counts.items():
        console.print(f"{name}: {n} partitions")


@app.command()
def recs(user_id: str = typer.Argument(..., help="User id to look up."),
         as_json: bool = typer.Option(False, "--json", help="Print the raw recommendation event as JSON.")) -> None:
    """Show a user's current recommendations from Redis."""
    from .redis_store import RecommendationsClient

    s = _settings()
    client = RecommendationsClient(s.redis_url, prefix=s.redis_key_prefix, username=s.redis_username,
                                   password=s.redis_password.get_secret_value() if s.redis_password else None)
    rec = client.get(user_id)
    if rec is None:
        console.print(f"[yellow]no recommendations for {user_id!r}[/yellow]")
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(orjson.dumps(rec, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    t = Table(title=f"{user_id} — {rec['model_version']} — trigger {rec['trigger']}")
    t.add_column("#", justify="right")
    t.add_column("image_id")
    t.add_column("score", justify="right")
    t.add_column("source")
    for n, item in enumerate(rec["items"], 1):
        t.add_row(str(n), item["image_id"], f"{item['score']:.3f}", item["source"])
    console.print(t)


def _lag_table(rows, title: str) -> Table:
    t = Table(title=title)
    for col in ("group", "kind", "topic", "partition", "end offset", "committed", "lag"):
        t.add_column(col, justify="right" if col in ("partition", "end offset", "committed", "lag") else "left")
    for r in rows:
        style = "dim" if r.stale else "red" if r.lag > 0 else None
        t.add_row(r.group, r.kind + (" (stale)" if r.stale else ""), r.topic, str(r.partition), str(r.end_offset),
                  "-" if r.committed is None else str(r.committed), str(r.lag), style=style)
    return t


@app.command()
def lag(max_lag: int = typer.Option(-1, "--max-lag", help="Exit with status 2 when any partition lags more than "
                                    "this many records (for scripts and alerts); -1 = never."),
        as_json: bool = typer.Option(False, "--json", help="Print rows as JSON lines.")) -> None:
    """Consumer lag per topic/partition: end offset, committed offset and lag, for the worker group
    (behaviour + image topics) and for each worker's index replica (catalog topic).

    Replicas that have not reported for 5 minutes are shown as stale and ignored by --max-lag."""
    from .lag import lag_report

    rows = asyncio.run(lag_report(_settings()))
    if as_json:
        for r in rows:
            sys.stdout.write(orjson.dumps(r.to_dict()).decode() + "\n")
    else:
        console.print(_lag_table(rows, "consumer lag"))
    worst = max((r.lag for r in rows if not r.stale), default=0)
    if max_lag >= 0 and worst > max_lag:
        console.print(f"[red]lag {worst} exceeds --max-lag {max_lag}[/red]")
        raise typer.Exit(2)


@app.command("demo-traffic")
def demo_traffic(events: int = typer.Option(5000, help="Behaviour events to publish."),
                 rate: float = typer.Option(500.0, help="Events per second; 0 = as fast as possible."),
                 images: int = typer.Option(300, help="Images in the catalog (published first)."),
                 users: int = typer.Option(50, help="Distinct users."),
                 embeddings: bool = typer.Option(False, help="Send embeddings instead of captions/tags "
                                                 "(captions are embedded by the worker's text encoder)."),
                 seed: int = typer.Option(7, help="Random seed.")) -> None:
    """Publish a demo catalog and behaviour with planted tastes (each user likes one or two themes)."""
    from rich.progress import BarColumn, Progress, TextColumn

    from .traffic import TrafficGenerator

    gen = TrafficGenerator(_settings(), n_images=images, n_users=users, embeddings=embeddings, seed=seed)
    with Progress(TextColumn("[bold]traffic"), BarColumn(), TextColumn("{task.completed}/{task.total} events "
                  "{task.fields[rate]}"), console=console) as prog:
        task = prog.add_task("traffic", total=events, rate="")
        stats = asyncio.run(gen.run(events=events, rate=rate, on_progress=lambda st: prog.update(
            task, completed=st.events, rate=f"{st.events_per_s:,.0f}/s")))
        prog.update(task, completed=stats.events)
    console.print(f"published {stats.images} images and {stats.events} events in {stats.seconds:.1f}s "
                  f"({stats.events_per_s:,.0f} events/s)")


@app.command()
def demo(events: int = typer.Option(3000, help="Behaviour events to publish."),
         rate: float = typer.Option(300.0, help="Events per second."),
         images: int = typer.Option(300, help="Catalog size."),
         users: int = typer.Option(40, help="Distinct users."),
         kafka_port: int = typer.Option(9092, help="Loopback port for the local Kafka broker."),
         redis_port: int = typer.Option(6379, help="Loopback port for the local redis-server."),
         keep_stack: bool = typer.Option(False, help="Leave Kafka and Redis running afterwards.")) -> None:
    """The live demo: local Kafka + Redis, one worker, generated traffic; prints recommendations and lag."""
    from .demo import run_demo

    raise typer.Exit(run_demo(console, events=events, rate=rate, images=images, users=users,
                              kafka_port=kafka_port, redis_port=redis_port, keep_stack=keep_stack))


@app.command()
def bench(images: int = typer.Option(100_000, help="Catalog size (images)."),
          dim: int = typer.Option(128, help="Embedding dimension."),
          users: int = typer.Option(10_000, help="Distinct users."),
          index_kind: str = typer.Option("hnsw", help="Index kind for every pipeline: flat | hnsw."),
          pipelines: str = typer.Option("floor,naive,project,floor+core", help="Comma-separated pipelines."),
          level_s: float = typer.Option(10.0, help="Seconds per offered-load level."),
          bootstrap: str = typer.Option(None, help="Kafka bootstrap (default: start a local broker)."),
          redis_url: str = typer.Option(None, help="Redis URL (default: start a local redis-server)."),
          out: str = typer.Option(None, help="Write the results as JSON here."),
          scale: bool = typer.Option(False, "--scale", help="Run the scale curves instead (docs/img/scale.png).")) -> None:
    """Benchmark: a floor, a naive pipeline and this project's worker side by side on the real broker and
    Redis (events/s, latency at 10/50/90 % load, CPU, RSS, new-image latency, index search/recall)."""
    from .bench import BenchConfig, run_bench, run_scale

    if scale:
        run_scale()
        return
    res = run_bench(BenchConfig(images=images, dim=dim, users=users, index_kind=index_kind, level_s=level_s,
                                pipelines=tuple(pipelines.split(",")), bootstrap=bootstrap, redis_url=redis_url,
                                out=out))
    raise typer.Exit(1 if any(r["error"] for r in res["rows"]) else 0)


@app.command("eval")
def eval_(data: Path = typer.Option(None, "--data", help="MovieLens ratings.csv / u.data, or a generated stream "
                                                      "(.jsonl/.csv from models.synthetic)."),
          synthetic: bool = typer.Option(False, "--synthetic", help="Evaluate on a generated stream instead."),
          fmt: str = typer.Option("auto", "--format", help="auto | movielens-csv | movielens-udata | stream."),
          k: int = typer.Option(20, "-k", "--k", help="List length K for recall@K and MRR@K."),
          threshold: float = typer.Option(4.0, help="MovieLens rating counted as a positive event."),
          limit: int = typer.Option(None, help="Only the first N events."),
          seed: int = typer.Option(0, help="Seed of the model (and of the generated stream)."),
          synthetic_events: int = typer.Option(30_000, help="Events of the generated stream."),
          synthetic_users: int = typer.Option(500, help="Users of the generated stream."),
          dim: int = typer.Option(None, help="Embedding dim (default: 64 generated, 32 MovieLens with hash vectors)."),
          item_vectors: str = typer.Option("auto", help="MovieLens content vectors: meta (text encoder over u.item / "
                                           "movies.csv beside the ratings, 384-d), hash (random per id), auto = "
                                           "meta when that file exists."),
          no_model: bool = typer.Option(False, "--no-model", help="Baselines only."),
          plot: Path = typer.Option(None, help="Write the recall-over-time PNG here."),
          json_out: Path = typer.Option(None, "--json", help="Write the report as JSON here."),
          min_lift: float = typer.Option(None, help="Exit with status 2 when the model's recall@K lift over the "
                                                    "strongest baseline is below this (0.2 = +20 %)."),
          quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """Prequential (test-then-learn) evaluation: the model (the workers' RecommenderCore) and the baselines
    (most-popular, recent-popular, item co-occurrence kNN) in one replay; recall@K, MRR@K, coverage, events/s."""
    import json

    from models.evaluation import evaluate

    if data is not None and not data.exists():
        raise typer.BadParameter(f"{data} does not exist (see README 'Evaluation' for fetching MovieLens)")
    try:  # evaluate() owns the argument checks (exactly one source, k > 0): shown as usage errors here
        report = evaluate(data, synthetic=synthetic, fmt=fmt, k=k, threshold=threshold, limit=limit, seed=seed,
                          synthetic_events=synthetic_events, synthetic_users=synthetic_users, dim=dim,
                          item_vectors=item_vectors, include_model=not no_model, progress=not quiet)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(report.to_markdown())
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report.to_dict(), indent=2))
        console.print(f"report: {json_out}")
    if plot:
        console.print(f"plot: {report.plot(plot)}")
    if min_lift is not None:
        lift = report.lift()
        if lift is None or lift < min_lift:
            console.print(f"[red]lift {lift} is below --min-lift {min_lift}[/red]")
            raise typer.Exit(2)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
