from __future__ import annotations

import pytest

from riskwire.exceptions import SettingsError
from riskwire.settings import load_settings

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def test_defaults_are_the_embedded_setup() -> None:
    settings = load_settings()
    assert settings.embedded_broker
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.resolved_database_url.endswith("riskwire-data/riskwire.db")
    assert settings.device == "auto"
    assert settings.topics.raw_news == "riskwire.raw.news"


def test_environment_switches_to_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISKWIRE_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("RISKWIRE_DATABASE_URL", "postgresql+psycopg://u@db:5432/riskwire")
    monkeypatch.setenv("RISKWIRE_TOPIC_PREFIX", "prod")
    settings = load_settings()
    assert not settings.embedded_broker
    assert settings.resolved_database_url == "postgresql+psycopg://u@db:5432/riskwire"
    assert settings.topics.all()[0] == "prod.raw.news"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RISKWIRE_KAFKA_BOOTSTRAP", "no-port", "RISKWIRE_KAFKA_BOOTSTRAP"),
        ("RISKWIRE_DATABASE_URL", "mysql://x@y/z", "RISKWIRE_DATABASE_URL"),
        ("RISKWIRE_DATABASE_URL", "::not a url::", "RISKWIRE_DATABASE_URL"),
        ("RISKWIRE_SCORE_BATCH_SIZE", "0", "RISKWIRE_SCORE_BATCH_SIZE"),
        ("RISKWIRE_DEVICE", "tpu", "RISKWIRE_DEVICE"),
        ("RISKWIRE_LOG_LEVEL", "loud", "RISKWIRE_LOG_LEVEL"),
    ],
)
def test_invalid_settings_fail_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_settings_travel_to_a_child_process_as_environment() -> None:
    settings = load_settings(kafka_bootstrap="127.0.0.1:9999", topic_prefix="t1")
    env = settings.as_env()
    assert env["RISKWIRE_KAFKA_BOOTSTRAP"] == "127.0.0.1:9999"
    assert env["RISKWIRE_TOPIC_PREFIX"] == "t1"
    assert env["RISKWIRE_DATABASE_URL"] == settings.resolved_database_url


def test_device_auto_is_the_gpu_when_torch_sees_one_else_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    assert load_settings().model_device == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load_settings().model_device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_settings().model_device == "cpu"
    assert load_settings(device="cuda:1").model_device == "cuda:1"
