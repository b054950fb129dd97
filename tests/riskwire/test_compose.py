"""docker-compose.yml cannot run here (no Docker engine), so its configuration is checked: the
services the stack needs, dependencies that exist and can be waited for, files that exist, every
RISKWIRE_* variable a real setting, the Alertmanager configuration valid by amtool and the Prometheus
one by promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from riskwire.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def test_the_stack_has_every_part() -> None:
    assert {
        "kafka", "postgres", "migrate", "worker", "api", "grafana", "alertmanager", "prometheus",
        "retention",
    } <= set(SERVICES)  # fmt: skip


def test_dependencies_exist_and_can_be_waited_for() -> None:
    for name, service in SERVICES.items():
        for target, spec in (service.get("depends_on") or {}).items():
            assert target in SERVICES, (name, target)
            assert spec["condition"] in CONDITIONS, (name, target)
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[target], (name, target)


def test_mounted_files_exist_in_the_repository() -> None:
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), (name, source)


def test_every_riskwire_variable_is_a_setting_and_interpolations_are_well_formed() -> None:
    fields = set(Settings.model_fields)
    text = (ROOT / "docker-compose.yml").read_text()
    for name, service in SERVICES.items():
        for variable in service.get("environment") or {}:
            if variable.startswith(ENV_PREFIX):
                assert variable[len(ENV_PREFIX) :].lower() in fields, (name, variable)
    for expression in re.findall(r"\$\{([^}]*)\}", text):
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?", expression), expression


def test_published_ports_do_not_clash() -> None:
    ports = [p.split(":")[0] for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(ports) == len(set(ports))


def test_grafana_data_sources_are_provisioned_once_each() -> None:
    uids = []
    for path in sorted((ROOT / "grafana/provisioning/datasources").glob("*.yaml")):
        uids += [d["uid"] for d in yaml.safe_load(path.read_text())["datasources"]]
    assert {"riskwire-postgres", "riskwire-alertmanager", "riskwire-prometheus"} <= set(uids)
    assert len(uids) == len(set(uids))


def test_the_alertmanager_configuration_is_valid() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool comes with prometheus-alertmanager (`make test` installs it)")
    config = ROOT / "grafana/alertmanager/alertmanager.yml"
    result = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_workers_metrics_port_and_its_configuration_is_valid() -> None:
    port = SERVICES["worker"]["environment"]["RISKWIRE_METRICS_PORT"]
    config_file = ROOT / "grafana/prometheus/prometheus.yml"
    config = yaml.safe_load(config_file.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (discovery,) = jobs["riskwire-worker"]["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and str(discovery["port"]) == port
    (api,) = jobs["riskwire-api"]["static_configs"]
    assert api["targets"] == ["api:8000"] and "--port 8000" in SERVICES["api"]["command"]
    check = " ".join(SERVICES["worker"]["healthcheck"]["test"])  # the worker's /healthz
    assert f"127.0.0.1:{port}/healthz" in check
    mounted = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["prometheus"]["volumes"]}
    assert all(rules in mounted for rules in config["rule_files"])
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool comes with prometheus (`make test` installs it)")
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(config_file)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_on_riskwire_itself_fire_when_they_should_and_not_before() -> None:
    """``promtool test rules``: series as riskwire exposes them, and the alerts that must fire."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool comes with prometheus (`make test` installs it)")
    tests = ROOT / "tests/fixtures/prometheus/rules_test.yml"
    result = subprocess.run(
        [promtool, "test", "rules", tests.name], capture_output=True, text=True, cwd=tests.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_retention_service_prunes_daily_keeping_more_than_the_risk_engine_needs() -> None:
    from riskwire.cli import _duration
    from riskwire.settings import load_settings
    from streams.pipeline.rules import build_risk_engine

    command = " ".join(SERVICES["retention"]["command"])
    (keep,) = re.findall(r"riskwire db prune --keep \$\{RETENTION_KEEP:-(\w+)\}", command)
    engine = build_risk_engine(load_settings())
    assert _duration(keep) >= engine.baseline + 2 * engine.horizon
    assert "sleep 86400" in command


def test_the_refit_service_promotes_into_the_folder_the_workers_load_from() -> None:
    """Opt in (a profile): what it promotes lands in the volume the workers read, where they find
    it by name before the shipped ensembles (``riskwire-data/models/ensembles``)."""
    refit, worker = SERVICES["refit"], SERVICES["worker"]
    assert refit["profiles"] == ["refit"]
    command = " ".join(refit["command"])
    assert "riskwire labels refit --min-new" in command and "--promote" in command
    # the image's WORKDIR is /app, and the data folder's default is relative to it
    models = f"/app/{Settings.model_fields['data_dir'].default}/models"
    assert f"models:{models}" in refit["volumes"] and f"models:{models}" in worker["volumes"]
    assert "models" in COMPOSE["volumes"]
