"""Kafka security: the settings, what each client is given, and a worker on a TLS-only broker.

The integration tests run the real Tansu broker. It cannot serve TLS itself, so a TLS-terminating
proxy (``tests/tls_proxy.py``) stands in front of it and the broker advertises the proxy: every
connection of every client goes through TLS. Tansu can require a SASL login, but its users live in
its in-memory store and can only be added by a client that has logged in, so a successful login
cannot be shown here; a refused one can, and is.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest
import trustme
from sqlalchemy import func, select

from ingest import JsonlSource, RawProducer
from riskwire.broker import EmbeddedBroker, ensure_topics
from riskwire.demo import expected_outcome
from riskwire.exceptions import BrokerError, SettingsError
from riskwire.kafka_security import client_config, faust_credentials, ssl_context
from riskwire.settings import Settings, load_settings
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, session_factory, upgrade
from storage.tables import DocumentRow, ScoreRow
from tests.kafka_helpers import stream_settings
from tests.tls_proxy import TlsProxy

BOOTSTRAP = "kafka-1:9093"


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: the CA, a client certificate with its key in one file, the same apart, and the
    CA and key of strangers."""
    folder = tmp_path_factory.mktemp("pki")
    client = ca.issue_cert("riskwire-worker@example.com")
    files = {
        "ca": folder / "ca.pem",
        "client": folder / "client.pem",
        "client_cert": folder / "client-cert.pem",
        "client_key": folder / "client-key.pem",
        "other_ca": folder / "other-ca.pem",
        "other_key": folder / "other-key.pem",
        "not_pem": folder / "not.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    for i, blob in enumerate(client.cert_chain_pems):
        blob.write_to_path(str(files["client_cert"]), append=i > 0)
    client.private_key_pem.write_to_path(str(files["client_key"]))
    stranger = trustme.CA()
    stranger.cert_pem.write_to_path(str(files["other_ca"]))
    stranger.issue_cert("x").private_key_pem.write_to_path(str(files["other_key"]))
    files["not_pem"].write_text("this is not a certificate\n")
    return files


# -- settings and client arguments (no broker) --


def test_plaintext_is_the_default_and_gives_the_clients_nothing_to_secure() -> None:
    settings = load_settings(kafka_bootstrap=BOOTSTRAP)
    assert client_config(settings) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(settings) is None


def test_sasl_over_tls_gives_every_client_the_same_login_and_checked_tls(
    pki: dict[str, Path],
) -> None:
    settings = load_settings(
        kafka_bootstrap=BOOTSTRAP, kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="riskwire", kafka_sasl_password="s3cret",
        kafka_ssl_cafile=pki["ca"], kafka_sasl_mechanism="SCRAM-SHA-256",
    )  # fmt: skip
    config = client_config(settings)
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (config["sasl_plain_username"], config["sasl_plain_password"]) == ("riskwire", "s3cret")
    context = config["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-256"
    assert (credentials.username, credentials.password) == ("riskwire", "s3cret")
    assert credentials.ssl_context is not None
    # the password is not shown with the settings, but a child process gets it
    assert "s3cret" not in repr(settings)
    assert settings.as_env()["RISKWIRE_KAFKA_SASL_PASSWORD"] == "s3cret"


def test_sasl_without_tls_and_tls_without_sasl(pki: dict[str, Path]) -> None:
    sasl = load_settings(
        kafka_bootstrap=BOOTSTRAP, kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u", kafka_sasl_password="p", kafka_sasl_mechanism="PLAIN",
    )  # fmt: skip
    assert "ssl_context" not in client_config(sasl)
    credentials = faust_credentials(sasl)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_PLAINTEXT" and credentials.ssl_context is None
    tls = load_settings(
        kafka_bootstrap=BOOTSTRAP, kafka_security_protocol="SSL", kafka_ssl_cafile=pki["ca"],
        kafka_ssl_certfile=pki["client_cert"], kafka_ssl_keyfile=pki["client_key"],
        kafka_ssl_check_hostname=False,
    )  # fmt: skip
    config = client_config(tls)
    assert set(config) == {"security_protocol", "ssl_context"}
    assert not config["ssl_context"].check_hostname
    assert config["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # the certificate still is
    assert isinstance(faust_credentials(tls), faust.SSLCredentials)


def test_settings_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]
) -> None:
    monkeypatch.setenv("RISKWIRE_KAFKA_BOOTSTRAP", BOOTSTRAP)
    monkeypatch.setenv("RISKWIRE_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("RISKWIRE_KAFKA_SSL_CAFILE", str(pki["ca"]))
    monkeypatch.setenv("RISKWIRE_KAFKA_SSL_CERTFILE", str(pki["client"]))  # key in the same file
    context = ssl_context(load_settings())
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"},
         "RISKWIRE_KAFKA_SASL_PASSWORD must be set for SASL_SSL"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "RISKWIRE_KAFKA_SASL_USERNAME must be set"),
        ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"},
         "RISKWIRE_KAFKA_SASL_USERNAME is set but RISKWIRE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
        ({"kafka_ssl_cafile": "ca"},
         "RISKWIRE_KAFKA_SSL_CAFILE is set but RISKWIRE_KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_username": "u",
          "kafka_sasl_password": "p", "kafka_ssl_cafile": "ca"},
         "RISKWIRE_KAFKA_SSL_CAFILE is set but .*SASL_PLAINTEXT does not use TLS"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "client_key"},
         "RISKWIRE_KAFKA_SSL_KEYFILE is set without RISKWIRE_KAFKA_SSL_CERTFILE"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "not_pem"},
         "RISKWIRE_KAFKA_SSL_CAFILE, _CERTFILE, _KEYFILE: cannot be loaded"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_certfile": "client_cert",
          "kafka_ssl_keyfile": "other_key"},
         "cannot be loaded: SSLError"),  # a key that is not the certificate's
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cafile": "missing"},
         "RISKWIRE_KAFKA_SSL_CAFILE: .*no such file"),
        ({"kafka_security_protocol": "TLS"}, "RISKWIRE_KAFKA_SECURITY_PROTOCOL"),
        ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "GSSAPI",
          "kafka_sasl_username": "u", "kafka_sasl_password": "p"}, "RISKWIRE_KAFKA_SASL_MECHANISM"),
    ],
)  # fmt: skip
def test_settings_that_cannot_work_stop_start_up_naming_the_variables(
    pki: dict[str, Path], tmp_path: Path, given: dict[str, str], message: str
) -> None:
    files = {**pki, "missing": tmp_path / "missing.pem"}
    values = {k: files[v] if k.startswith("kafka_ssl_") else v for k, v in given.items()}
    with pytest.raises(SettingsError, match=message):
        load_settings(kafka_bootstrap=BOOTSTRAP, **values)


def test_the_embedded_broker_is_plaintext_only() -> None:
    with pytest.raises(SettingsError, match="needs RISKWIRE_KAFKA_BOOTSTRAP"):
        load_settings(
            kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u",
            kafka_sasl_password="p",
        )  # fmt: skip


# -- against the real broker --


@pytest.fixture
def tls_broker(ca: trustme.CA, tmp_path: Path) -> Iterator[TlsProxy]:
    """The broker behind a proxy that speaks TLS only and wants a client certificate of the CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    proxy = TlsProxy(("127.0.0.1", 0), context)
    with EmbeddedBroker(advertised=proxy.address, log_file=tmp_path / "broker.log") as broker:
        proxy.target = (broker.host, broker.port or 0)
        with proxy:
            yield proxy


def _tls(pki: dict[str, Path], **more: object) -> dict[str, object]:
    return {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": pki["ca"], **more}


@pytest.mark.integration
@pytest.mark.slow
def test_a_worker_scores_a_feed_through_a_tls_only_broker_with_a_client_certificate(
    tls_broker: TlsProxy, pki: dict[str, Path], sqlite_url: str, tmp_path: Path,
    fixtures_dir: Path,
) -> None:  # fmt: skip
    upgrade(sqlite_url)
    settings: Settings = stream_settings(
        "tls", tls_broker.address, sqlite_url, tmp_path, score_batch_wait_s=0.2,
        **_tls(pki, kafka_ssl_certfile=pki["client"]),
    )  # fmt: skip
    feed = fixtures_dir / "pipeline.jsonl"
    expected = expected_outcome(JsonlSource(feed).read())
    # the producer and the admin client (topics) of ingest, then the worker's consumer, producer
    # and Faust's own topic handling: all of it through the TLS proxy, the only address advertised
    with RawProducer.for_settings(settings) as producer:
        counts = producer.publish(JsonlSource(feed).read())
    assert (counts.raw, counts.dead) == (17, 2)
    process = spawn_worker(settings, tmp_path / "worker.log")
    sessions = session_factory(make_engine(sqlite_url))
    try:
        deadline = time.monotonic() + 120
        while True:
            with sessions() as session:
                ids = set(session.scalars(select(DocumentRow.id)))
                scored = session.scalar(select(func.count()).select_from(ScoreRow))
            if ids == expected.document_ids and scored == len(ids):
                break
            assert process.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"{len(ids)} documents, {scored} scored"
            time.sleep(0.5)
    finally:
        code = stop_worker(process)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.integration
def test_a_broker_certificate_from_another_ca_is_refused_saying_so(
    tls_broker: TlsProxy, pki: dict[str, Path]
) -> None:
    stranger = _tls(pki, kafka_ssl_cafile=pki["other_ca"])
    settings = load_settings(kafka_bootstrap=tls_broker.address, **stranger)
    with pytest.raises(BrokerError, match=r"certificate is refused .*RISKWIRE_KAFKA_SSL_CAFILE"):
        ensure_topics(tls_broker.address, ["t"], 1, timeout_s=3, **client_config(settings))


@pytest.mark.integration
def test_a_broker_that_wants_a_login_names_the_likely_cause(tmp_path: Path) -> None:
    with EmbeddedBroker(authentication=True, log_file=tmp_path / "broker.log") as broker:
        plain = load_settings(kafka_bootstrap=broker.bootstrap)
        with pytest.raises(BrokerError, match="needs RISKWIRE_KAFKA_SECURITY_PROTOCOL"):
            ensure_topics(broker.bootstrap, ["t"], 1, timeout_s=3, **client_config(plain))
        # a SCRAM login the broker refuses (it has no such user)
        login = load_settings(
            kafka_bootstrap=broker.bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_username="nobody", kafka_sasl_password="wrong",
        )  # fmt: skip
        with pytest.raises(BrokerError, match="login is the likely cause"):
            ensure_topics(broker.bootstrap, ["t"], 1, timeout_s=3, **client_config(login))
    assert "NotAuthenticated" in (tmp_path / "broker.log").read_text(errors="replace")
