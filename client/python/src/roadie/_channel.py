"""Addresses, TLS and tokens: how both clients open their channel."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import grpc
import grpc.aio

PathLike = Union[str, Path]

# A proxy must never see the cache's traffic; reconnect within seconds of a
# server coming back rather than grpc's default backoff of up to two minutes.
_OPTIONS: list[tuple[str, int]] = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Target:
    """Where and how to connect: ``host:port`` with TLS or not."""

    address: str
    tls: bool

    @staticmethod
    def parse(target: str) -> Target:
        """``https://host:port`` is TLS; ``http://host:port`` and a bare
        ``host:port`` are cleartext. Any other scheme is refused: an https
        address never falls back to cleartext."""
        scheme, sep, rest = target.partition("://")
        if not sep:
            return Target(target, tls=False)
        rest = rest.rstrip("/")
        if scheme.lower() == "https":
            return Target(rest, tls=True)
        if scheme.lower() == "http":
            return Target(rest, tls=False)
        raise ValueError(f"{scheme}:// is not supported: use http:// (cleartext) or https:// (TLS)")


@dataclass(frozen=True)
class Connection:
    """A parsed target with its credentials; opens sync or asyncio channels."""

    target: Target
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]

    @staticmethod
    def of(
        target: str,
        *,
        token: str | None = None,
        ca: PathLike | bytes | None = None,
        client_cert: PathLike | bytes | None = None,
        client_key: PathLike | bytes | None = None,
    ) -> Connection:
        parsed = Target.parse(target)
        if not parsed.tls and (ca is not None or client_cert is not None or client_key is not None):
            raise ValueError("a CA or client certificate is for https:// addresses; this one is cleartext")
        if (client_cert is None) != (client_key is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")
        credentials = None
        if parsed.tls:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem(ca),
                private_key=_pem(client_key),
                certificate_chain=_pem(client_cert),
            )
        metadata: tuple[tuple[str, str], ...] = ()
        if token is not None:
            if not token or not all(33 <= ord(c) <= 126 for c in token):
                raise ValueError("a token is 1 or more visible ASCII characters")
            metadata = (("authorization", f"Bearer {token}"),)
        return Connection(parsed, credentials, metadata)

    def channel(self) -> grpc.Channel:
        if self.credentials is not None:
            return grpc.secure_channel(self.target.address, self.credentials, options=_OPTIONS)
        return grpc.insecure_channel(self.target.address, options=_OPTIONS)

    def aio_channel(self) -> grpc.aio.Channel:
        if self.credentials is not None:
            return grpc.aio.secure_channel(self.target.address, self.credentials, options=_OPTIONS)
        return grpc.aio.insecure_channel(self.target.address, options=_OPTIONS)


def _pem(source: PathLike | bytes | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()
