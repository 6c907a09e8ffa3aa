"""Shared fixtures: a real Kafka broker and a real redis-server for the session, worker processes, helpers.

Integration tests get unique topic names, consumer group (app id) and Redis key prefix per test, so they
never see each other's data on the shared broker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from streams.localstack import KafkaBroker, RedisServer, free_port
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start(timeout=90)
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def settings_env(s: Settings) -> dict[str, str]:
    """The RECO_* environment that reproduces ``s`` in a child process."""
    env = {}
    for name, value in s.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"RECO_{name.upper()}"] = str(value)
    return env


@pytest.fixture
def make_settings(kafka, redis_server, tmp_path) -> Callable[..., Settings]:
    """Settings with unique topics/group/prefix for this test; keyword overrides win."""
    tag = uuid.uuid4().hex[:8]

    def make(**overrides) -> Settings:
        base = dict(
            kafka_bootstrap=kafka.bootstrap, redis_url=redis_server.url, app_id=f"t{tag}",
            topic_behavior=f"ub-{tag}", topic_images=f"img-{tag}", topic_catalog=f"cat-{tag}",
            topic_recommendations=f"recs-{tag}", topic_dead_letters=f"dlq-{tag}", redis_key_prefix=f"rec:{tag}:",
            partitions=2, image_partitions=1, dim=16, k=10, encoder="none", data_dir=tmp_path / "worker0",
            web_port=free_port(), commit_interval_s=0.2, snapshot_interval_s=2.0,
            broker_session_timeout_s=6.0, broker_rebalance_timeout_s=6.0, log_level="INFO",
        )
        base.update(overrides)
        return Settings(**base)

    return make


class WorkerProcess:
    """One ``reco worker`` subprocess with its own log; stop() = SIGTERM with a kill fallback."""

    def __init__(self, s: Settings, log_path: Path) -> None:
        self.s = s
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.ready: dict | None = None  # the /ready answer that ended wait_ready (worker_id, index size then)

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        env = {**os.environ, **settings_env(self.s), "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], cwd=ROOT, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self

    def ready_info(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.s.web_port}/ready", timeout=1) as r:
                return orjson.loads(r.read())
        except OSError:
            return None

    def metrics(self) -> str:
        """The /metrics text; retried, since a busy worker on 2 shared cores can answer slowly."""
        for attempt in range(5):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.s.web_port}/metrics", timeout=10) as r:
                    return r.read().decode()
            except OSError:
                if attempt == 4 or (self.proc is not None and self.proc.poll() is not None):
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a sample's values (matching labels) in the /metrics text."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric_name = head.split("{", 1)[0]
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            info = self.ready_info()
            if info and info.get("ready"):
                self.ready = info
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready in {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def start_worker(tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(s: Settings, name: str = "worker", timeout: float = 90.0) -> WorkerProcess:
        w = WorkerProcess(s, tmp_path / f"{name}-{len(workers)}.log")
        workers.append(w)
        return w.start(timeout)

    yield start
    for w in workers:
        w.stop(timeout=20)


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run(coro):
    return asyncio.run(coro)
