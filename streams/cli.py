"""``reco``: the command line for workers, demo traffic, reading results, lag, evaluation and benchmarks."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

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


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()


if __name__ == "__main__":
    main()
