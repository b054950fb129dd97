"""Read a worker's Prometheus metrics over HTTP, as Prometheus would, or through a real Prometheus."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from riskwire.broker import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    """Every sample at ``http://host:port/metrics``: (name, sorted labels) -> value."""
    text = httpx.get(f"http://{host}:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value (0 where there is none: a counter never incremented has no sample)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@contextmanager
def prometheus(targets: list[str], directory: Path, interval: str = "1s") -> Iterator[str]:
    """A real Prometheus (the Debian package's binary) scraping ``targets`` every ``interval``;
    yields its URL. Skips the test where it is not installed (`make test` installs it)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("needs the prometheus binary (`make test` installs it on Debian)")
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": "riskwire-worker", "static_configs": [{"targets": targets}]}],
    }))  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(directory / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (
                directory / "prometheus.log"
            ).read_text(errors="replace")[-2000:]
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """An instant PromQL query's result vector; fails the test on a query Prometheus refuses."""
    body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])
