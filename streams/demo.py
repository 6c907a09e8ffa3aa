"""``reco demo``: start Kafka + Redis on loopback, one worker, publish traffic, show what happens."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from .localstack import KafkaBroker, RedisServer, StackError, free_port, install_kafka, install_redis, port_open
from .settings import Settings


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        return r.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def histogram_quantiles(text: str, name: str, qs=(0.5, 0.95, 0.99)) -> dict[float, float]:
    """Upper-bound quantiles from a Prometheus histogram's cumulative buckets (as Prometheus would)."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            head, _, value = line.rpartition(" ")
            le = head.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(value)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    out = {}
    for q in qs:
        out[q] = next((le for le, c in buckets if total and c >= q * total), float("nan"))
    return out


def _settings_env(s: Settings) -> dict[str, str]:
    env = {}
    for k, v in s.model_dump().items():
        if v is not None:
            env[f"RECO_{k.upper()}"] = str(v.get_secret_value() if hasattr(v, "get_secret_value") else v)
    return env


def run_demo(console: Console, *, events: int, rate: float, images: int, users: int, kafka_port: int,
             redis_port: int, keep_stack: bool) -> int:
    from .kafka import ensure_topics
    from .lag import lag_report
    from .redis_store import RecommendationsClient
    from .traffic import TrafficGenerator

    root = Path(__file__).resolve().parent.parent
    work = Path(tempfile.mkdtemp(prefix="reco-demo-"))
    broker = redis = worker = None
    t_all = time.monotonic()
    try:
        # 1. the local stack -------------------------------------------------------------------------
        t0 = time.monotonic()
        install_kafka()
        install_redis()
        console.print(f"[bold]1/5[/bold] Kafka and redis-server installed/cached ({time.monotonic() - t0:.1f}s)")
        t0 = time.monotonic()
        if port_open(kafka_port):
            console.print(f"    reusing the Kafka broker already on 127.0.0.1:{kafka_port}")
        else:
            broker = KafkaBroker(work / "kafka", port=kafka_port, controller_port=free_port()).start()
        if port_open(redis_port):
            console.print(f"    reusing the redis-server already on 127.0.0.1:{redis_port}")
        else:
            redis = RedisServer(work / "redis", port=redis_port).start()
        console.print(f"[bold]2/5[/bold] Kafka (KRaft) on 127.0.0.1:{kafka_port} and Redis on 127.0.0.1:{redis_port} "
                      f"ready ({time.monotonic() - t0:.1f}s)")

        tag = time.strftime("%H%M%S")
        s = Settings(kafka_bootstrap=f"127.0.0.1:{kafka_port}", redis_url=f"redis://127.0.0.1:{redis_port}/0",
                     app_id=f"reco-demo-{tag}", topic_behavior=f"user-behavior-{tag}", topic_images=f"new-images-{tag}",
                     topic_catalog=f"image-catalog-{tag}", topic_recommendations=f"recommendations-{tag}",
                     topic_dead_letters=f"dead-letters-{tag}", data_dir=work / "worker", web_port=free_port(),
                     log_level="WARNING")
        asyncio.run(ensure_topics(s))

        # 2. one worker ------------------------------------------------------------------------------
        t0 = time.monotonic()
        log = open(work / "worker.log", "wb")
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=root,
                                  env={**os.environ, **_settings_env(s)}, stdout=log, stderr=subprocess.STDOUT)
        while True:
            if worker.poll() is not None:
                console.print(f"[red]worker exited ({worker.returncode}); log: {work / 'worker.log'}[/red]")
                return 1
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{s.web_port}/ready", timeout=1) as r:
                    if orjson.loads(r.read()).get("ready"):
                        break
            except OSError:
                pass
            time.sleep(0.3)
        console.print(f"[bold]3/5[/bold] worker up, metrics on http://127.0.0.1:{s.web_port}/metrics "
                      f"({time.monotonic() - t0:.1f}s)")

        # 3. traffic ---------------------------------------------------------------------------------
        gen = TrafficGenerator(s, n_images=images, n_users=users, embeddings=False)
        t0 = time.monotonic()
        asyncio.run(gen.run(events=0, rate=0))
        while sample(scrape(s.web_port), "reco_index_size") < images:
            time.sleep(0.3)
        console.print(f"[bold]4/5[/bold] {images} images captioned, embedded by all-MiniLM-L6-v2 on the CPU and "
                      f"indexed ({time.monotonic() - t0:.1f}s)")
        t0 = time.monotonic()
        with Progress(TextColumn("    {task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[info]}"), console=console) as prog:
            sent = prog.add_task("published", total=events, info="")
            done = prog.add_task("processed", total=events, info="")

            def progress(st):
                prog.update(sent, completed=st.events, info=f"{st.events_per_s:,.0f} events/s")
                prog.update(done, completed=int(sample(scrape(s.web_port), "reco_events_consumed_total",
                                                       topic=s.topic_behavior)))
            stats = asyncio.run(gen.run(events=events, rate=rate, on_progress=progress))
            prog.update(sent, completed=stats.events)
            while (n := int(sample(scrape(s.web_port), "reco_events_consumed_total", topic=s.topic_behavior))) < events:
                prog.update(done, completed=n)
                time.sleep(0.2)
            prog.update(done, completed=events, info=f"{events / (time.monotonic() - t0):,.0f} events/s end to end")
        elapsed = time.monotonic() - t0
        time.sleep(1.0)  # one commit interval, so the lag report shows committed offsets

        # 4. what came out ---------------------------------------------------------------------------
        client = RecommendationsClient(s.redis_url)
        theme_of = dict(gen.images)
        for user in gen.users[:3]:
            rec = client.get(user)
            liked = ", ".join(gen.themes[t] for t in gen.user_themes[user])
            t = Table(title=f"{user} likes {liked} — Redis key {s.redis_key(user)}")
            for col in ("#", "image", "theme", "score", "source"):
                t.add_column(col)
            for n, item in enumerate((rec or {}).get("items", [])[:10], 1):
                theme = gen.themes[theme_of[item["image_id"]]]
                mark = "[green]" if theme_of[item["image_id"]] in gen.user_themes[user] else ""
                t.add_row(str(n), item["image_id"], f"{mark}{theme}", f"{item['score']:.3f}", item["source"])
            console.print(t)
        hits = total = 0
        for user in gen.users:
            rec = client.get(user) or {"items": []}
            for item in rec["items"]:
                total += 1
                hits += theme_of[item["image_id"]] in gen.user_themes[user]
        text = scrape(s.web_port)
        q = histogram_quantiles(text, "reco_event_to_redis_seconds")
        console.print(f"[bold]5/5[/bold] {events} events processed in {elapsed:.1f}s "
                      f"([bold]{events / elapsed:,.0f} events/s[/bold] at a {rate:,.0f}/s offered load); "
                      f"event→Redis latency p50 ≤ {q[0.5] * 1000:.0f} ms, p95 ≤ {q[0.95] * 1000:.0f} ms, "
                      f"p99 ≤ {q[0.99] * 1000:.0f} ms; "
                      f"{hits / max(total, 1):.0%} of recommended images match the user's planted tastes; "
                      f"dead letters: {sample(text, 'reco_dead_letters_total'):.0f}")
        from .cli import _lag_table

        console.print(_lag_table(asyncio.run(lag_report(s)), "consumer lag (reco lag)"))
        console.print(f"demo finished in {time.monotonic() - t_all:.0f}s; worker log: {work / 'worker.log'}")
        return 0
    except StackError as exc:
        console.print(f"[red]local stack error: {exc}[/red]")
        return 1
    finally:
        if worker is not None and worker.poll() is None:
            t0 = time.monotonic()
            worker.send_signal(signal.SIGTERM)
            try:
                code = worker.wait(30)
                console.print(f"worker stopped on SIGTERM in {time.monotonic() - t0:.1f}s (exit {code})")
            except subprocess.TimeoutExpired:
                worker.kill()
        if not keep_stack:
            for svc in (broker, redis):
                if svc is not None:
                    svc.stop()
            shutil.rmtree(work / "kafka", ignore_errors=True)
        elif broker is not None:
            console.print(f"Kafka left running on 127.0.0.1:{kafka_port}, Redis on 127.0.0.1:{redis_port}")
