"""Local stack without Docker: a real Apache Kafka broker (KRaft) and a real redis-server on loopback.

Standard library only, so the set-up script can run it before any dependency is installed::

    python -m streams.localstack kafka install      # resolve Kafka from Maven Central into .cache/
    python -m streams.localstack up                 # start Kafka + Redis in the background (var/)
    python -m streams.localstack down               # stop both cleanly

Kafka is resolved with ``mvn dependency:copy-dependencies`` (artifact ``org.apache.kafka:kafka_2.13``
plus its runtime dependencies) into ``.cache/kafka/<version>/libs`` (git-ignored); a marker file makes
a second install a no-op. The broker runs ``kafka.Kafka`` with ``process.roles=broker,controller`` after
``kafka.tools.StorageTool format --standalone``; readiness is the broker's own "Kafka Server started"
log line plus an open listener socket.

Redis is the Debian ``redis-server`` (installed with apt-get when missing), no persistence.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("RECO_CACHE_DIR", ROOT / ".cache"))
VAR_DIR = Path(os.environ.get("RECO_VAR_DIR", ROOT / "var"))

KAFKA_VERSION = os.environ.get("RECO_KAFKA_VERSION", "4.1.1")
LOG4J_VERSION = "2.24.3"
KAFKA_HEAP = os.environ.get("RECO_KAFKA_HEAP", "512m")


class StackError(RuntimeError):
    """The local stack could not be installed, started or stopped."""


def free_port() -> int:
    """An unused TCP port on loopback (racy by nature, good enough for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _terminate(proc: subprocess.Popen | None, pid: int | None, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL (a broker that lost its peers may ignore TERM)."""
    if proc is not None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------- Kafka

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.reco</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = info
"""


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    return CACHE_DIR / "kafka" / version


def install_kafka(version: str = KAFKA_VERSION, quiet: bool = False) -> Path:
    """Resolve Kafka and its runtime dependencies from Maven Central; no-op when cached."""
    home = kafka_home(version)
    marker = home / "INSTALLED"
    if marker.exists():
        return home / "libs"
    if shutil.which("mvn") is None:
        raise StackError("mvn is not on PATH: install Maven (Debian package 'maven') and Java 17")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
    libs = home / "libs"
    cmd = [
        "mvn", "-B", "-q", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={libs}",
    ]
    if not quiet:
        print(f"[localstack] resolving org.apache.kafka:kafka_2.13:{version} from Maven Central ...", flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise StackError(f"mvn failed ({res.returncode}): {res.stdout[-2000:]}{res.stderr[-2000:]}")
    if not any(libs.glob(f"kafka_2.13-{version}.jar")):
        raise StackError(f"mvn finished but kafka_2.13-{version}.jar is missing from {libs}")
    marker.write_text(version)
    return libs


@dataclass
class KafkaBroker:
    """One single-node KRaft broker (broker+controller) on loopback."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    version: str = KAFKA_VERSION
    heap: str = KAFKA_HEAP
    proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    def _java(self, *args: str, heap: str = "256m") -> list[str]:
        libs = install_kafka(self.version, quiet=True)
        return [
            "java", f"-Xmx{heap}", "-Xms128m",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*", *args,
        ]

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        props.write_text(textwrap.dedent(f"""\
            process.roles=broker,controller
            node.id=1
            controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}
            listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}
            advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}
            controller.listener.names=CONTROLLER
            listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
            inter.broker.listener.name=PLAINTEXT
            log.dirs={self.data_dir / 'logs'}
            num.partitions=1
            auto.create.topics.enable=false
            offsets.topic.replication.factor=1
            offsets.topic.num.partitions=4
            transaction.state.log.replication.factor=1
            transaction.state.log.min.isr=1
            share.coordinator.state.topic.replication.factor=1
            share.coordinator.state.topic.min.isr=1
            group.initial.rebalance.delay.ms=0
            log.cleaner.backoff.ms=2000
            """))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file, level="warn"))
        return props

    def format_storage(self) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        props = self.write_config()
        cluster_id = uuid.uuid4().hex[:22]
        res = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(props)),
            capture_output=True, text=True,
        )
        if res.returncode != 0:
            raise StackError(f"StorageTool format failed: {res.stdout[-2000:]}{res.stderr[-2000:]}")

    def start(self, timeout: float = 60.0, detach: bool = False) -> KafkaBroker:
        self.write_config()
        self.format_storage()
        if self.log_file.exists():
            self.log_file.unlink()
        out = open(self.data_dir / "stdout.log", "ab")
        self.proc = subprocess.Popen(
            self._java("kafka.Kafka", str(self.data_dir / "server.properties"), heap=self.heap),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=detach,
        )
        self.pid_file.write_text(str(self.proc.pid))
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StackError(f"Kafka exited with {self.proc.returncode}; see {self.data_dir}/stdout.log")
            started = self.log_file.exists() and "Kafka Server started" in self.log_file.read_text(errors="replace")
            if started and port_open(self.port):
                return
            time.sleep(0.2)
        raise StackError(f"Kafka not ready on {self.bootstrap} after {timeout}s; see {self.log_file}")

    def stop(self, timeout: float = 20.0) -> None:
        pid = int(self.pid_file.read_text()) if self.pid_file.exists() else None
        _terminate(self.proc, pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, for fault tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


# --------------------------------------------------------------------------------------------- Redis

def install_redis() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    if os.geteuid() != 0:
        raise StackError("redis-server is missing and we are not root: run 'apt-get install redis-server'")
    print("[localstack] installing redis-server from Debian packages ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "redis-server"]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise StackError(f"{' '.join(cmd)} failed: {res.stderr[-2000:]}")
    path = shutil.which("redis-server")
    if not path:
        raise StackError("apt-get installed redis-server but it is not on PATH")
    return path


@dataclass
class RedisServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    password: str | None = None
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "redis.pid"

    def start(self, timeout: float = 15.0, detach: bool = False) -> RedisServer:
        binary = install_redis()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.data_dir), "--logfile", str(self.data_dir / "redis.log"),
            "--protected-mode", "yes",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     start_new_session=detach)
        self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StackError(f"redis-server exited with {self.proc.returncode}; see {self.data_dir}/redis.log")
            if self._ping():
                return self
            time.sleep(0.05)
        raise StackError(f"redis-server not ready on port {self.port} after {timeout}s")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.password:
                    s.sendall(f"AUTH {self.password}\r\n".encode())
                    s.recv(64)
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        pid = int(self.pid_file.read_text()) if self.pid_file.exists() else None
        _terminate(self.proc, pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        self.proc = None


# --------------------------------------------------------------------------------------------- CLI

def _stack_dirs() -> tuple[Path, Path]:
    return VAR_DIR / "kafka", VAR_DIR / "redis"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streams.localstack", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("install", help="resolve Kafka from Maven Central and install redis-server if missing")
    up = sub.add_parser("up", help="start Kafka and Redis in the background (idempotent)")
    up.add_argument("--kafka-port", type=int, default=9092)
    up.add_argument("--redis-port", type=int, default=6379)
    sub.add_parser("down", help="stop the background Kafka and Redis")
    args = p.parse_args(argv)
    kdir, rdir = _stack_dirs()
    try:
        if args.cmd == "install":
            t0 = time.monotonic()
            install_kafka()
            install_redis()
            print(f"[localstack] Kafka {KAFKA_VERSION} and redis-server ready ({time.monotonic() - t0:.1f}s)")
        elif args.cmd == "up":
            t0 = time.monotonic()
            if port_open(args.kafka_port):
                print(f"[localstack] Kafka already listening on 127.0.0.1:{args.kafka_port}")
            else:
                KafkaBroker(kdir, port=args.kafka_port, controller_port=args.kafka_port + 1).start(detach=True)
                print(f"[localstack] Kafka {KAFKA_VERSION} up on 127.0.0.1:{args.kafka_port}")
            if port_open(args.redis_port):
                print(f"[localstack] Redis already listening on 127.0.0.1:{args.redis_port}")
            else:
                RedisServer(rdir, port=args.redis_port).start(detach=True)
                print(f"[localstack] Redis up on 127.0.0.1:{args.redis_port}")
            print(f"[localstack] stack ready in {time.monotonic() - t0:.1f}s")
        elif args.cmd == "down":
            KafkaBroker(kdir).stop()
            RedisServer(rdir).stop()
            print("[localstack] stopped")
    except StackError as exc:
        print(f"[localstack] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
