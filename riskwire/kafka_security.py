"""How riskwire's Kafka clients reach a secured cluster: TLS, SASL, or both.

A production cluster seldom takes plaintext from anyone: managed Kafka (Confluent Cloud, MSK, Aiven)
and most company clusters ask for TLS, a SASL login (PLAIN or SCRAM), or both, and some for a client
certificate. riskwire runs three kinds of Kafka client: the Faust worker (aiokafka), the producers of
``ingest`` and ``deadletters redrive`` (kafka-python) and the admin client that creates the topics
(kafka-python). All of them take their security from the same ``RISKWIRE_KAFKA_SECURITY_PROTOCOL``,
``RISKWIRE_KAFKA_SASL_*`` and ``RISKWIRE_KAFKA_SSL_*`` settings, through this module, and use one
``ssl.SSLContext`` built the same way for both libraries, so a certificate that one accepts the other
does not refuse.

The settings are checked when they are read (``check``): a SASL protocol without a user name or
password, TLS files that do not load (a key that does not match its certificate, a CA file that is
not PEM), or security settings that the protocol would ignore stop start-up with a message naming
the variables, instead of a client that retries a broker it can never talk to.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

    from riskwire.settings import Settings

PREFIX = "RISKWIRE_KAFKA_"


def uses_tls(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def check(settings: Settings) -> None:
    """Raise ``ValueError`` naming the variables when the Kafka security settings cannot work."""
    protocol = settings.kafka_security_protocol
    problems = []
    if protocol != "PLAINTEXT" and settings.kafka_bootstrap is None:
        problems.append(
            f"{PREFIX}SECURITY_PROTOCOL={protocol} needs {PREFIX}BOOTSTRAP: the embedded broker "
            "riskwire starts speaks plaintext only"
        )
    if uses_sasl(settings):
        for name in ("username", "password"):
            if not getattr(settings, f"kafka_sasl_{name}"):
                problems.append(f"{PREFIX}SASL_{name.upper()} must be set for {protocol}")
    else:
        given = [n for n in ("username", "password") if getattr(settings, f"kafka_sasl_{n}")]
        problems += [
            f"{PREFIX}SASL_{n.upper()} is set but {PREFIX}SECURITY_PROTOCOL={protocol} does not "
            "log in (SASL_PLAINTEXT or SASL_SSL does)"
            for n in given
        ]
    files = {n: getattr(settings, f"kafka_ssl_{n}") for n in ("cafile", "certfile", "keyfile")}
    if uses_tls(settings):
        if files["keyfile"] is not None and files["certfile"] is None:
            problems.append(f"{PREFIX}SSL_KEYFILE is set without {PREFIX}SSL_CERTFILE")
        elif not problems:
            try:
                ssl_context(settings)
            except (ssl.SSLError, OSError, ValueError) as exc:
                problems.append(
                    f"{PREFIX}SSL_CAFILE, _CERTFILE, _KEYFILE: cannot be loaded: "
                    f"{type(exc).__name__}: {exc}"
                )
    else:
        problems += [
            f"{PREFIX}SSL_{n.upper()} is set but {PREFIX}SECURITY_PROTOCOL={protocol} does not "
            "use TLS (SSL or SASL_SSL does)"
            for n, path in files.items()
            if path is not None
        ]
    if problems:
        raise ValueError("; ".join(problems))


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context every client uses, or None when the protocol has no TLS.

    The brokers' certificates are always verified (against ``SSL_CAFILE``, else the system's CAs);
    ``SSL_CHECK_HOSTNAME=false`` skips only the check that the certificate names the host, for
    clusters whose certificates name the brokers differently from their advertised addresses.
    """
    if not uses_tls(settings):
        return None
    cafile = settings.kafka_ssl_cafile
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    context.check_hostname = settings.kafka_ssl_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.kafka_ssl_certfile is not None:
        keyfile = settings.kafka_ssl_keyfile
        context.load_cert_chain(str(settings.kafka_ssl_certfile), str(keyfile) if keyfile else None)
    return context


def _sasl(settings: Settings) -> dict[str, Any]:
    password = settings.kafka_sasl_password
    return {
        "sasl_mechanism": settings.kafka_sasl_mechanism,
        "sasl_plain_username": settings.kafka_sasl_username,
        "sasl_plain_password": password.get_secret_value() if password else None,
    }


def client_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and
    ``KafkaAdminClient``."""
    config: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        config["ssl_context"] = context
    if uses_sasl(settings):
        config.update(_sasl(settings))
    return config


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's ``broker_credentials`` for the worker's consumer, producer and topic creation."""
    import faust

    context = ssl_context(settings)
    if uses_sasl(settings):
        sasl = _sasl(settings)
        return faust.SASLCredentials(
            username=sasl["sasl_plain_username"],
            password=sasl["sasl_plain_password"],
            mechanism=sasl["sasl_mechanism"],
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def diagnose(bootstrap: str, security: dict[str, Any], timeout: float = 5.0) -> str:
    """Why the cluster at ``bootstrap`` may not answer a client with these ``client_config``
    arguments, found by connecting as that client would (TCP, then TLS when it is used): the
    clients themselves only say that they could not bootstrap."""
    import socket

    context = security.get("ssl_context")
    found = []
    reached = True  # every server connected (and shook hands, with TLS)
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.strip("[]")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout) as sock:
                if context is None:
                    found.append(f"{server}: connects")
                    continue
                with context.wrap_socket(sock, server_hostname=host) as tls:
                    found.append(f"{server}: TLS handshake succeeds ({tls.version()})")
        except ssl.SSLCertVerificationError as exc:
            reached = False
            found.append(
                f"{server}: the broker's certificate is refused ({exc.verify_message}): check "
                f"{PREFIX}SSL_CAFILE (the CA that signed it) and {PREFIX}SSL_CHECK_HOSTNAME"
            )
        except ssl.SSLError as exc:
            reached = False
            found.append(
                f"{server}: TLS handshake fails ({exc.reason or exc}): a plaintext listener, or "
                f"one that wants a client certificate ({PREFIX}SSL_CERTFILE)?"
            )
        except OSError as exc:
            reached = False
            found.append(f"{server}: cannot connect ({exc})")
    protocol = security.get("security_protocol", "PLAINTEXT")
    if reached:
        if protocol.startswith("SASL"):
            found.append(
                f"the connection works, so the login is the likely cause: check {PREFIX}SASL_"
                "USERNAME, _PASSWORD and _MECHANISM (a refused login shows only as this)"
            )
        else:
            found.append(
                f"the connection works: a cluster that wants TLS or a login needs "
                f"{PREFIX}SECURITY_PROTOCOL (now {protocol})"
            )
    return "; ".join(found)
