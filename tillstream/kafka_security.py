"""How every Kafka client of tillstream authenticates: TLS and SASL from `kafka` settings.

One place turns the settings into client arguments, so the publisher, the sink's
consumer, the admin clients, the probes and the Faust app all connect the same
way. Passwords stay `SecretStr` until this point and are handed to no log.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from tillstream.settings import KafkaConfig

__all__ = ["client_options", "faust_credentials"]


def _ssl_context(config: KafkaConfig) -> ssl.SSLContext | None:
    if not config.security_protocol.endswith("SSL"):
        return None
    context = create_ssl_context(
        cafile=str(config.ssl_cafile) if config.ssl_cafile else None,
        certfile=str(config.ssl_certfile) if config.ssl_certfile else None,
        keyfile=str(config.ssl_keyfile) if config.ssl_keyfile else None,
    )
    context.check_hostname = config.ssl_check_hostname
    return context


def client_options(config: KafkaConfig) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client; empty for PLAINTEXT."""
    if config.security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {
        "security_protocol": config.security_protocol,
        "ssl_context": _ssl_context(config),
    }
    if config.security_protocol.startswith("SASL"):
        options |= {
            "sasl_mechanism": config.sasl_mechanism,
            "sasl_plain_username": config.sasl_username,
            "sasl_plain_password": config.sasl_password.get_secret_value(),
        }
    return options


def faust_credentials(config: KafkaConfig) -> CredentialsT | None:
    """The same, as Faust takes it (`broker_credentials`)."""
    context = _ssl_context(config)
    if config.security_protocol.startswith("SASL"):
        return SASLCredentials(
            username=config.sasl_username,
            password=config.sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=config.sasl_mechanism,
        )
    if context is not None:
        return SSLCredentials(context)
    return None
