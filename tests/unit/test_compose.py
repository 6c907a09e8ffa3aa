"""Structure of docker-compose.yml, the Dockerfile and the monitoring files (Docker cannot run here).

Values are checked after Compose-style interpolation (``${VAR:-default}``, ``$$``), with defaults and with
overrides, so what is tested is what ``docker compose config`` would produce.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"

CORE_SERVICES = ("kafka", "redis", "topic-init", "worker")
DASHBOARD_METRICS = (
    "reco_events_consumed_total", "reco_events_produced_total", "reco_event_to_redis_seconds",
    "reco_consumer_lag", "reco_dead_letters_total", "reco_index_size", "reco_index_replica_lag",
    "reco_user_table_size",
)

# ---------------------------------------------------------------------------------------------- helpers
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose variable interpolation for every string in a parsed document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        val = env.get(name)
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if val is not None else arg
        if op in (":?", "?"):
            if not val:
                raise AssertionError(f"compose requires ${name}: {arg}")
            return val
        return val or ""

    return _VAR.sub(sub, value)


def load_compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_args(value: Any) -> list[str]:
    return list(map(str, value)) if isinstance(value, list) else shlex.split(value or "")


def healthcheck_text(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    return " ".join(test) if isinstance(test, list) else str(test or "")


def topic_commands(service: dict) -> list[list[str]]:
    """Every ``kafka-topics.sh --create`` invocation in the topic-init job, as argument lists."""
    script = " ".join(command_args(service.get("entrypoint"))) + "\n"
    cmd = service.get("command")
    script += "\n".join(cmd) if isinstance(cmd, list) else str(cmd)
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        if "kafka-topics.sh" in line and "--create" in line:
            out.append(shlex.split(line))
    return out


def option(args: list[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def created_topics(service: dict) -> dict[str, dict]:
    topics = {}
    for args in topic_commands(service):
        [topic] = option(args, "--topic")
        [partitions] = option(args, "--partitions")
        [rf] = option(args, "--replication-factor")
        configs = dict(c.split("=", 1) for c in option(args, "--config"))
        topics[topic] = {"partitions": int(partitions), "replication_factor": int(rf), "configs": configs,
                         "if_not_exists": "--if-not-exists" in args, "tool": args[0]}
    return topics


def reco_env(services: dict) -> dict[str, dict[str, str]]:
    return {name: {k: v for k, v in environment(s).items() if k.startswith("RECO_")} for name, s in services.items()}


def settings_topics(s: Settings) -> dict[str, str]:
    return {name: getattr(s, name) for name in Settings.model_fields if name.startswith("topic_")}


# ---------------------------------------------------------------------------------------------- compose basics
def test_compose_parses_and_has_the_core_services(compose) -> None:
    assert isinstance(compose.get("services"), dict)
    for name in CORE_SERVICES:
        assert name in compose["services"], f"service {name} missing"
    assert "version" not in compose, "the top-level version key is obsolete in the Compose spec"


def test_every_service_has_an_image_or_a_build(services) -> None:
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), name


def test_worker_can_scale(services) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed container name breaks --scale worker=N"
    assert "hostname" not in worker
    assert not worker.get("ports"), "a published host port collides between replicas (use expose)"
    assert "deploy" not in worker or "replicas" not in worker["deploy"], "--scale would fight deploy.replicas"
    assert worker.get("build"), "the worker is built from the Dockerfile"
    assert command_args(worker["command"]) == ["reco", "worker"]


def test_container_names_and_host_ports_are_unique(services) -> None:
    names = [s["container_name"] for s in services.values() if "container_name" in s]
    assert len(names) == len(set(names))
    published = []
    for svc in services.values():
        for port in svc.get("ports") or []:
            published.append(str(port).rsplit(":", 1)[0] if not isinstance(port, dict) else str(port["published"]))
    assert len(published) == len(set(published)), published


def test_worker_waits_for_healthy_dependencies(services) -> None:
    deps = services["worker"]["depends_on"]
    assert isinstance(deps, dict), "depends_on needs conditions, not a plain list"
    assert deps["kafka"]["condition"] == "service_healthy"
    assert deps["redis"]["condition"] == "service_healthy"
    assert deps["topic-init"]["condition"] == "service_completed_successfully"
    if "healthcheck" in services["worker"]:  # otherwise the Dockerfile's HEALTHCHECK applies
        assert "/metrics" in healthcheck_text(services["worker"])


def test_depends_on_targets_exist_and_have_healthchecks(services) -> None:
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep, spec in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            assert dep in services, f"{name} depends on unknown service {dep}"
            if spec.get("condition") == "service_healthy":
                assert healthcheck_text(services[dep]), f"{name} waits for {dep} to be healthy, but it has no healthcheck"


# ---------------------------------------------------------------------------------------------- RECO_* settings
def test_every_reco_variable_is_a_settings_field(services) -> None:
    fields = {f"RECO_{name.upper()}" for name in Settings.model_fields}
    per_service = reco_env(services)
    assert per_service["worker"], "the worker gets its configuration from RECO_* variables"
    for name, env in per_service.items():
        unknown = sorted(set(env) - fields)
        assert not unknown, f"{name}: {unknown} are not fields of streams.settings.Settings (typo?)"


def test_also_raw_file_mentions_only_known_reco_variables() -> None:
    """Catches RECO_* names outside environment blocks too (commands, anchors, comments)."""
    fields = {f"RECO_{name.upper()}" for name in Settings.model_fields}
    mentioned = set(re.findall(r"\bRECO_[A-Z0-9_]+\b", COMPOSE.read_text()))
    assert mentioned and not sorted(mentioned - fields), sorted(mentioned - fields)


@pytest.mark.parametrize("overrides", [{}, {"RECO_PARTITIONS": "8", "RECO_IMAGE_PARTITIONS": "3",
                                           "RECO_LOG_LEVEL": "DEBUG"}])
def test_reco_values_validate(monkeypatch, overrides) -> None:
    services = load_compose(overrides)["services"]
    for name, env in reco_env(services).items():
        if not env:
            continue
        for key in list(os.environ):
            if key.startswith("RECO_"):
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s = Settings()  # raises pydantic.ValidationError on a bad value
        for key, value in env.items():
            got = getattr(s, key[len("RECO_"):].lower())
            got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
            assert str(got) == value or str(got) == str(Path(value)), f"{name}: {key}={value!r} read as {got!r}"
        if overrides:
            assert s.partitions == 8 and s.image_partitions == 3


def test_worker_settings_point_at_the_compose_services(services) -> None:
    env = reco_env(services)["worker"]
    assert env["RECO_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["RECO_REDIS_URL"] == "redis://redis:6379/0"
    assert env["RECO_DATA_DIR"] == "/data"
    assert env["RECO_WEB_PORT"] == "6066"
    kafka_env = environment(services["kafka"])
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert any(a.endswith("://" + env["RECO_KAFKA_BOOTSTRAP"]) for a in advertised), advertised
    assert urlparse(env["RECO_REDIS_URL"]).hostname in services
    assert env["RECO_WEB_PORT"] in " ".join(map(str, services["worker"].get("expose", [])))
    if "healthcheck" in services["worker"]:
        assert f"localhost:{env['RECO_WEB_PORT']}/metrics" in healthcheck_text(services["worker"])


def test_demo_traffic_uses_the_same_settings_as_the_worker(services) -> None:
    demo, worker = reco_env(services)["demo-traffic"], reco_env(services)["worker"]
    for key in ("RECO_KAFKA_BOOTSTRAP", "RECO_TOPIC_BEHAVIOR", "RECO_TOPIC_IMAGES", "RECO_PARTITIONS"):
        assert demo.get(key, "<default>") == worker.get(key, "<default>"), key


# ---------------------------------------------------------------------------------------------- Kafka / Redis
def test_kafka_is_official_image_in_kraft_single_node_mode(services) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:"), kafka["image"]
    env = environment(kafka)
    roles = {r.strip() for r in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert roles == {"broker", "controller"}
    assert env.get("CLUSTER_ID"), "the apache/kafka image refuses to start in KRaft mode without CLUSTER_ID"
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1 and voters[0].split("@")[0] == env["KAFKA_NODE_ID"]
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    assert controller in listeners
    assert listeners[controller].rsplit(":", 1)[1] == voters[0].rsplit(":", 1)[1]
    protocol_map = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocol_map)
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert "kafka-broker-api-versions.sh" in healthcheck_text(kafka)


def test_redis_is_redis_7_with_ping_healthcheck(services) -> None:
    redis = services["redis"]
    assert redis["image"].split(":")[0] in ("redis", "docker.io/library/redis")
    assert redis["image"].split(":")[1].startswith("7")
    hc = healthcheck_text(redis)
    assert "redis-cli" in hc and "ping" in hc


# ---------------------------------------------------------------------------------------------- topics
def test_topic_init_is_a_one_shot_kafka_job(services) -> None:
    init = services["topic-init"]
    assert init["image"] == services["kafka"]["image"]
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert str(init.get("restart", "no")) in ("no", "False", "false")
    for t in created_topics(init).values():
        assert t["tool"] == "/opt/kafka/bin/kafka-topics.sh"
        assert t["if_not_exists"], "re-running the job must be harmless"


def test_topic_init_creates_every_settings_topic(services) -> None:
    s = Settings()
    topics = created_topics(services["topic-init"])
    expected = settings_topics(s)
    assert set(expected.values()) == {"user-behavior", "new-images", "image-catalog", "recommendations",
                                      "dead-letters"}, "Settings defaults changed: update the compose file"
    assert set(topics) == set(expected.values())
    assert topics[s.topic_behavior]["partitions"] == s.partitions
    assert topics[s.topic_recommendations]["partitions"] == s.partitions
    assert topics[s.topic_images]["partitions"] == s.image_partitions
    assert topics[s.topic_catalog]["partitions"] == s.image_partitions
    assert all(t["replication_factor"] == s.replication_factor for t in topics.values())


def test_catalog_topics_are_compacted_and_behaviour_is_not(services) -> None:
    s = Settings()
    topics = created_topics(services["topic-init"])
    for name in (s.topic_images, s.topic_catalog):
        assert topics[name]["configs"].get("cleanup.policy") == "compact", name
    for name in (s.topic_behavior, s.topic_recommendations, s.topic_dead_letters):
        assert "compact" not in topics[name]["configs"].get("cleanup.policy", "delete"), name


def test_topic_partitions_follow_the_same_variables_as_the_worker() -> None:
    env = {"RECO_PARTITIONS": "12", "RECO_IMAGE_PARTITIONS": "5"}
    services = load_compose(env)["services"]
    topics = created_topics(services["topic-init"])
    worker = reco_env(services)["worker"]
    assert topics["user-behavior"]["partitions"] == int(worker["RECO_PARTITIONS"]) == 12
    assert topics["new-images"]["partitions"] == int(worker["RECO_IMAGE_PARTITIONS"]) == 5


def test_topic_init_matches_the_workers_own_topic_specs(services) -> None:
    """The worker verifies existing topics against streams.kafka.topic_specs at start: they must agree."""
    kafka_mod = pytest.importorskip("streams.kafka")
    topics = created_topics(services["topic-init"])
    for spec in kafka_mod.topic_specs(Settings()):
        assert spec.name in topics
        assert topics[spec.name]["partitions"] == spec.partitions, spec.name
        assert (topics[spec.name]["configs"].get("cleanup.policy") == "compact") == spec.compact, spec.name


# ---------------------------------------------------------------------------------------------- profiles
def test_profiles(services) -> None:
    for name in CORE_SERVICES:
        assert not services[name].get("profiles"), f"{name} must start without a profile"
    assert services["demo-traffic"]["profiles"] == ["demo"]
    assert command_args(services["demo-traffic"]["command"]) == ["reco", "demo-traffic"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
    for name, svc in services.items():
        image = str(svc.get("image", ""))
        if "prometheus" in image or "grafana" in image:
            assert svc.get("profiles") == ["monitoring"], name


def test_mounted_host_files_exist(services) -> None:
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            source = vol["source"] if isinstance(vol, dict) else str(vol).split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).resolve().exists(), f"{name} mounts missing {source}"


# ---------------------------------------------------------------------------------------------- monitoring
def _mount_target(service: dict, source: str) -> str:
    for vol in service.get("volumes") or []:
        parts = str(vol).split(":")
        if parts[0].rstrip("/") == source.rstrip("/"):
            return parts[1]
    raise AssertionError(f"{source} is not mounted")


def test_prometheus_scrapes_workers_via_dns_discovery(services) -> None:
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    assert _mount_target(services["prometheus"], "./deploy/prometheus/prometheus.yml") == "/etc/prometheus/prometheus.yml"
    port = int(reco_env(services)["worker"]["RECO_WEB_PORT"])
    jobs = [j for j in cfg["scrape_configs"] if j.get("dns_sd_configs")]
    assert jobs, "workers are discovered with dns_sd_configs"
    for job in jobs:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job["dns_sd_configs"]:
            assert set(sd["names"]) & {"worker", "tasks.worker"}
            assert sd.get("type", "SRV") == "A" and int(sd["port"]) == port


def test_grafana_provisioning(services) -> None:
    grafana = services["grafana"]
    prov = _mount_target(grafana, "./deploy/grafana/provisioning")
    assert prov == "/etc/grafana/provisioning"
    [ds_file] = (GRAFANA / "provisioning" / "datasources").glob("*.yml")
    [ds] = yaml.safe_load(ds_file.read_text())["datasources"]
    assert ds["type"] == "prometheus"
    assert urlparse(ds["url"]).hostname == "prometheus" and urlparse(ds["url"]).port == 9090
    [prov_file] = (GRAFANA / "provisioning" / "dashboards").glob("*.yml")
    [provider] = yaml.safe_load(prov_file.read_text())["providers"]
    assert provider["options"]["path"] == _mount_target(grafana, "./deploy/grafana/dashboards")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    files = list((GRAFANA / "dashboards").glob("*.json"))
    assert len(files) == 1
    return json.loads(files[0].read_text())


def _exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_references_every_metric(dashboard) -> None:
    text = "\n".join(_exprs(dashboard))
    for metric in DASHBOARD_METRICS:
        assert metric in text, f"dashboard has no panel for {metric}"
    assert 'by (topic)' in text and 'by (reason)' in text
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(reco_event_to_redis_seconds_bucket" in text, q


def test_dashboard_panels_are_well_formed(dashboard) -> None:
    ds_uid = yaml.safe_load(next((GRAFANA / "provisioning" / "datasources").glob("*.yml")).read_text())[
        "datasources"][0]["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard.get("uid")
    for p in dashboard["panels"]:
        assert p["targets"] and p["title"]
        assert p["datasource"]["uid"] == ds_uid, p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


def test_dashboard_metrics_are_exported_by_the_worker(dashboard) -> None:
    """Every reco_* series the dashboard queries exists in streams.metrics (catches renames)."""
    metrics = pytest.importorskip("streams.metrics")
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("_sum", "_count"), "info": ("_info",)}
    exported = set()
    for family in metrics.REGISTRY.collect():
        exported |= {family.name + s for s in suffixes.get(family.type, ("",))}
    used = set(re.findall(r"\breco_[a-z0-9_]+\b", "\n".join(_exprs(dashboard))))
    assert used and not sorted(used - exported), sorted(used - exported)


# ---------------------------------------------------------------------------------------------- Dockerfile
@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def test_dockerfile_base_install_and_command(dockerfile) -> None:
    assert dockerfile[0] == ("FROM", "python:3.11-slim") or any(
        i == "FROM" and a.startswith("python:3.11-slim") for i, a in dockerfile)
    runs = " ".join(a for i, a in dockerfile if i == "RUN")
    assert re.search(r"pip install [^&]*(\s\.|/app)(\s|$)", runs), "the project is installed with pip install ."
    assert "torch" in runs
    cmd = [a for i, a in dockerfile if i in ("CMD", "ENTRYPOINT")]
    assert cmd and json.loads(cmd[-1]) == ["reco", "worker"]


def test_dockerfile_runs_as_non_root(dockerfile) -> None:
    users = [a for i, a in dockerfile if i == "USER"]
    assert users, "no USER instruction: the container would run as root"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0")
    last_user = max(n for n, (i, _) in enumerate(dockerfile) if i == "USER")
    assert all(i != "RUN" for i, _ in dockerfile[last_user:]), "RUN after the final USER would need root"


def test_dockerfile_healthcheck_probes_metrics(dockerfile) -> None:
    checks = [a for i, a in dockerfile if i == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "CMD" in checks[0] and "/metrics" in checks[0] and "6066" in checks[0] and "localhost" in checks[0]


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git"} <= ignored
    assert not {"models", "streams", "pyproject.toml"} & ignored
