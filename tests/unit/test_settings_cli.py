"""Settings (defaults, RECO_* env, secrets), Kafka security options, the README's generated table, CLI help."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import faust
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from streams.cli import app
from streams.docs import BEGIN, END, render_readme, settings_table
from streams.kafka import client_kwargs, faust_credentials, ssl_context
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SECRET = "kafka-s3cret-Zq9"
REDIS_SECRET = "redis-s3cret-Xw7"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch) -> None:
    """No RECO_* variable from the caller's environment leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("RECO_"):
            monkeypatch.delenv(name)


def sasl(**kw) -> Settings:
    base = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "svc-reco",
            "kafka_sasl_password": KAFKA_SECRET}
    return Settings(**{**base, **kw})


# ----------------------------------------------------------------------------------------- settings
def test_defaults() -> None:
    s = Settings()
    assert s.kafka_bootstrap == "127.0.0.1:9092" and s.kafka_security_protocol == "PLAINTEXT"
    assert s.kafka_sasl_username is None and s.kafka_sasl_password is None and s.redis_password is None
    assert (s.app_id, s.topic_behavior, s.topic_images, s.topic_catalog, s.topic_recommendations,
            s.topic_dead_letters) == ("reco", "user-behavior", "new-images", "image-catalog", "recommendations",
                                      "dead-letters")
    assert (s.partitions, s.image_partitions, s.replication_factor) == (4, 2, 1)
    assert (s.dim, s.k, s.encoder) == (384, 20, "text")
    assert (s.redis_url, s.redis_key_prefix, s.redis_ttl_s) == ("redis://127.0.0.1:6379/0", "rec:", 7 * 24 * 3600)
    assert s.redis_key("u-42") == "rec:u-42"
    assert s.data_dir == Path("var/worker") and s.max_event_bytes == 65536


def test_every_field_has_a_description() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 8, name


def test_env_overrides(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RECO_KAFKA_BOOTSTRAP", "k1:9093,k2:9093")
    monkeypatch.setenv("RECO_K", "7")
    monkeypatch.setenv("RECO_BATCH_WITHIN_S", "0.2")
    monkeypatch.setenv("RECO_DATA_DIR", str(tmp_path / "w"))
    monkeypatch.setenv("RECO_ENCODER", "none")
    monkeypatch.setenv("reco_partitions", "8")  # env names are case-insensitive
    monkeypatch.setenv("RECO_REDIS_PASSWORD", REDIS_SECRET)
    monkeypatch.setenv("RECO_REDIS_KEY_PREFIX", "r:")
    monkeypatch.setenv("RECO_NOT_A_SETTING", "ignored")
    s = Settings()
    assert s.kafka_bootstrap == "k1:9093,k2:9093" and s.k == 7 and s.batch_within_s == 0.2
    assert s.data_dir == tmp_path / "w" and s.encoder == "none" and s.partitions == 8
    assert isinstance(s.redis_password, SecretStr) and s.redis_password.get_secret_value() == REDIS_SECRET
    assert s.redis_key("u") == "r:u"
    assert Settings(k=3).k == 3, "keyword arguments win over the environment"


@pytest.mark.parametrize(("var", "value"), [
    ("RECO_PARTITIONS", "0"), ("RECO_K", "many"), ("RECO_K", "1001"), ("RECO_KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("RECO_ENCODER", "bert"), ("RECO_BATCH_WITHIN_S", "0"), ("RECO_WEB_PORT", "70000"),
    ("RECO_PUSH_MIN_SCORE", "1.5"), ("RECO_LOG_LEVEL", "LOUD"), ("RECO_KAFKA_SASL_MECHANISM", "GSSAPI"),
    ("RECO_SCORER_MEMBERS", "0"), ("RECO_SCORER_MEMBERS", "9"),
])
def test_invalid_env_is_rejected(monkeypatch, var, value) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        Settings()


def test_scorer_members_reaches_the_workers_core(monkeypatch, tmp_path) -> None:
    from streams.app import build_core

    assert len(build_core(Settings(encoder="none", data_dir=tmp_path)).scorer.members) == 2  # the default
    monkeypatch.setenv("RECO_SCORER_MEMBERS", "3")
    core = build_core(Settings(encoder="none", data_dir=tmp_path))
    assert [m.seed for m in core.scorer.members] == [0, 1000, 2000] and core.ranker.scorer is core.scorer


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_username_raises(protocol) -> None:
    with pytest.raises(ValidationError, match="RECO_KAFKA_SASL_USERNAME"):
        Settings(kafka_security_protocol=protocol)
    with pytest.raises(ValidationError, match="RECO_KAFKA_SASL_USERNAME"):
        Settings(kafka_security_protocol=protocol, kafka_sasl_username="")


async def test_sasl_without_password_is_rejected_up_front() -> None:
    with pytest.raises(ValidationError):
        s = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="svc-reco")
        # Accepted: the mistake only shows when the first Kafka client is built, deep inside the worker.
        with pytest.raises(ValueError, match="sasl_plain_password required"):
            AIOKafkaConsumer(**client_kwargs(s))


def test_secrets_are_not_in_repr_str_or_json() -> None:
    s = sasl(redis_password=REDIS_SECRET)
    for text in (repr(s), str(s), s.model_dump_json(), repr(s.model_dump()), repr(s.kafka_sasl_password),
                 str(s.redis_password)):
        assert KAFKA_SECRET not in text and REDIS_SECRET not in text
    assert "**********" in repr(s) and "**********" in s.model_dump_json()
    assert s.kafka_sasl_password.get_secret_value() == KAFKA_SECRET
    assert s.redis_password.get_secret_value() == REDIS_SECRET


def test_secrets_from_env_are_not_in_repr(monkeypatch) -> None:
    monkeypatch.setenv("RECO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECO_KAFKA_SASL_USERNAME", "svc-reco")
    monkeypatch.setenv("RECO_KAFKA_SASL_PASSWORD", KAFKA_SECRET)
    monkeypatch.setenv("RECO_REDIS_PASSWORD", REDIS_SECRET)
    s = Settings()
    assert s.kafka_sasl_password.get_secret_value() == KAFKA_SECRET
    assert KAFKA_SECRET not in repr(s) and REDIS_SECRET not in repr(s) and KAFKA_SECRET not in s.model_dump_json()


def test_validation_errors_do_not_print_secrets(monkeypatch) -> None:
    monkeypatch.setenv("RECO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("RECO_KAFKA_SASL_PASSWORD", KAFKA_SECRET)
    with pytest.raises(ValidationError) as ei:
        Settings()
    assert KAFKA_SECRET not in str(ei.value)


# ----------------------------------------------------------------------------------------- Kafka security
def test_plaintext_client_kwargs() -> None:
    s = Settings(kafka_bootstrap="a:1,b:2")
    assert client_kwargs(s) == {"bootstrap_servers": "a:1,b:2", "security_protocol": "PLAINTEXT"}
    assert ssl_context(s) is None and faust_credentials(s) is None


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_plaintext_options_pass_through(mechanism) -> None:
    s = sasl(kafka_sasl_mechanism=mechanism)
    kw = client_kwargs(s)
    assert kw == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "SASL_PLAINTEXT",
                  "sasl_mechanism": mechanism, "sasl_plain_username": "svc-reco",
                  "sasl_plain_password": KAFKA_SECRET}
    # aiokafka accepts the options (it validates SASL settings in the constructor)
    AIOKafkaProducer(**kw)
    AIOKafkaConsumer(**kw)
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value, creds.ssl_context) == (
        "svc-reco", KAFKA_SECRET, mechanism, None)
    assert creds.protocol.value == "SASL_PLAINTEXT"
    assert KAFKA_SECRET not in repr(creds)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A self-signed CA (EC P-256, fast) and a client cert/key, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    out = {}
    for name in ("ca", "client"):
        key, cert = d / f"{name}.key", d / f"{name}.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj",
                        f"/CN=reco-test-{name}"], check=True, capture_output=True, timeout=30)
        out[f"{name}_key"], out[f"{name}_cert"] = key, cert
    return out


def _ca_subjects(ctx: ssl.SSLContext) -> list:
    return [dict(x[0] for x in c["subject"]).get("commonName") for c in ctx.get_ca_certs()]


async def test_sasl_ssl_with_ca_file(pki) -> None:
    s = sasl(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
             kafka_ssl_cafile=pki["ca_cert"])
    kw = client_kwargs(s)
    ctx = kw.pop("ssl_context")
    assert kw == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "SASL_SSL",
                  "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc-reco",
                  "sasl_plain_password": KAFKA_SECRET}
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname, "the broker is verified"
    assert "reco-test-ca" in _ca_subjects(ctx), "the configured CA is trusted"
    AIOKafkaProducer(**client_kwargs(s))
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.username == "svc-reco" and creds.password == KAFKA_SECRET
    assert isinstance(creds.ssl_context, ssl.SSLContext) and "reco-test-ca" in _ca_subjects(creds.ssl_context)


async def test_ssl_with_mutual_tls(pki) -> None:
    s = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca_cert"],
                 kafka_ssl_certfile=pki["client_cert"], kafka_ssl_keyfile=pki["client_key"])
    kw = client_kwargs(s)
    assert set(kw) == {"bootstrap_servers", "security_protocol", "ssl_context"}, "no SASL options with SSL"
    assert kw["security_protocol"] == "SSL" and "reco-test-ca" in _ca_subjects(kw["ssl_context"])
    AIOKafkaConsumer(**kw)
    creds = faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.protocol.value == "SSL" and isinstance(creds.context, ssl.SSLContext)


def test_ssl_with_a_mismatched_key_fails_loudly(pki) -> None:
    s = Settings(kafka_security_protocol="SSL", kafka_ssl_certfile=pki["client_cert"],
                 kafka_ssl_keyfile=pki["ca_key"])
    with pytest.raises(ssl.SSLError):
        client_kwargs(s)


# ----------------------------------------------------------------------------------------- README table
def test_readme_settings_table_is_up_to_date() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    assert render_readme(readme) == readme, "README.md is stale: run `python -m streams.docs --write`"
    table = settings_table()
    assert table.count("\n| `RECO_") == len(Settings.model_fields)
    assert "`RECO_KAFKA_SASL_PASSWORD` |  |" in table and KAFKA_SECRET not in table


def test_render_readme_replaces_only_the_table() -> None:
    text = f"intro\n{BEGIN}\nold | stale\n{END}\noutro\n"
    out = render_readme(text)
    assert out.startswith(f"intro\n{BEGIN}\n| env var |") and out.endswith(f"\n{END}\noutro\n")
    assert "stale" not in out and render_readme(out) == out


# ----------------------------------------------------------------------------------------- CLI
runner = CliRunner()
SECRET_ENV = {"RECO_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RECO_KAFKA_SASL_USERNAME": "svc-reco",
              "RECO_KAFKA_SASL_PASSWORD": KAFKA_SECRET, "RECO_REDIS_PASSWORD": REDIS_SECRET, "COLUMNS": "160"}

HELP_MUST_MENTION = {
    "worker": ["RECO_", "index replica"],
    "topics": ["partitions"],
    "recs": ["user_id", "--json", "Redis"],
    "lag": ["--max-lag", "--json", "committed"],
    "demo-traffic": ["--events", "--rate", "--images", "--users", "--seed"],
    "demo": ["--events", "--kafka-port", "--redis-port", "--keep-stack"],
    "eval": ["--data", "--synthetic", "--threshold", "--plot", "--min-lift", "recall@K"],
}


def test_top_level_help_lists_every_command() -> None:
    res = runner.invoke(app, ["--help"], env=SECRET_ENV, prog_name="reco")
    assert res.exit_code == 0, res.output
    for cmd in HELP_MUST_MENTION:
        assert cmd in res.output
    assert KAFKA_SECRET not in res.output and REDIS_SECRET not in res.output
    bare = runner.invoke(app, [], env=SECRET_ENV, prog_name="reco")
    assert bare.exit_code in (0, 2) and "worker" in bare.output, "no arguments shows the help"


@pytest.mark.parametrize("cmd", list(HELP_MUST_MENTION))
def test_command_help(cmd) -> None:
    res = runner.invoke(app, [cmd, "--help"], env=SECRET_ENV, prog_name="reco")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # undo rich's wrapping
    assert f"reco {cmd}" in text and len(text) > 150
    for word in HELP_MUST_MENTION[cmd]:
        assert word in text, f"`reco {cmd} --help` does not mention {word!r}:\n{res.output}"
    assert KAFKA_SECRET not in res.output and REDIS_SECRET not in res.output


def test_unknown_command_fails() -> None:
    res = runner.invoke(app, ["frobnicate"], env=SECRET_ENV, prog_name="reco")
    assert res.exit_code == 2


def test_eval_runs_model_and_baselines_and_gates_on_lift(tmp_path) -> None:
    """`reco eval` on a small generated stream: a table with the model and every baseline, the JSON report
    and the PNG; --min-lift turns a lift below the bar into exit status 2."""
    args = ["eval", "--synthetic", "--synthetic-events", "800", "--synthetic-users", "40", "--dim", "16",
            "--quiet", "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.png")]
    res = runner.invoke(app, args + ["--min-lift", "-1"], prog_name="reco")
    assert res.exit_code == 0, res.output
    for name in ("model", "most-popular", "recent-popular", "item-knn"):
        assert f"| {name} |" in res.output
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert set(report["methods"]) >= {"model", "most-popular", "recent-popular", "item-knn"}
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    gated = runner.invoke(app, args + ["--min-lift", "1000"], prog_name="reco")
    assert gated.exit_code == 2 and "below --min-lift" in gated.output


def test_eval_needs_exactly_one_source(tmp_path) -> None:
    assert runner.invoke(app, ["eval"], prog_name="reco").exit_code == 2
    assert runner.invoke(app, ["eval", "--data", str(tmp_path / "nope.csv")], prog_name="reco").exit_code == 2
