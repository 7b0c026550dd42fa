"""What both clients share: settings, the channel's credentials, and the
rules of graceful degradation (one place for the sync and asyncio client)."""

from __future__ import annotations

import logging
import time
from typing import Any, TypeVar

from roadie._channel import Connection, PathLike
from roadie._ops import RETRYABLE, UNREACHABLE, Unary
from roadie.errors import RoadieError

T = TypeVar("T")

log = logging.getLogger("roadie")

#: Seconds a call may take unless the client or the call says otherwise.
DEFAULT_TIMEOUT = 10.0
#: Seconds a read or write may take while the client degrades gracefully.
DEFAULT_DEGRADE_TIMEOUT = 0.25


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


class Settings:
    """The options both clients take; see ``Client`` for their meaning."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None,
        ca: PathLike | bytes | None,
        client_cert: PathLike | bytes | None,
        client_key: PathLike | bytes | None,
        timeout: float,
        retries: int,
        degrade: bool,
        degrade_timeout: float,
    ) -> None:
        if timeout <= 0 or degrade_timeout <= 0:
            raise ValueError("timeouts are positive numbers of seconds")
        if retries < 0:
            raise ValueError("retries cannot be negative")
        self.connection = Connection.of(target, token=token, ca=ca, client_cert=client_cert, client_key=client_key)
        self.timeout = timeout
        self.retries = retries
        self.degrade = degrade
        self.degrade_timeout = degrade_timeout
        #: Reads answered "miss" because the server could not be reached.
        self.degraded_reads = 0
        #: Writes dropped because the server could not be reached.
        self.dropped_writes = 0

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self.connection.metadata

    def degrading(self, op: Unary[Any]) -> bool:
        """Whether ``op`` answers with its fallback rather than retrying."""
        return self.degrade and op.degraded is not None

    def deadline(self, op: Unary[Any], timeout: float | None) -> float:
        """The absolute (monotonic) deadline of a call of ``op``."""
        if timeout is None:
            timeout = self.degrade_timeout if self.degrading(op) else self.timeout
        return time.monotonic() + timeout

    def fallback(self, op: Unary[T], error: RoadieError) -> T:
        """``op``'s degraded answer when ``error`` says the server cannot be
        reached and the client degrades; otherwise ``error`` is raised."""
        if not self.degrading(op) or error.code not in UNREACHABLE or op.degraded is None:
            raise error
        name = op.method.rsplit("/", 1)[-1]
        if op.write:
            self.dropped_writes += 1
            log.warning("roadie unreachable (%s): %s dropped (%d so far)", error.code.name, name, self.dropped_writes)
        else:
            self.degraded_reads += 1
            log.debug("roadie unreachable (%s): %s answered as a miss", error.code.name, name)
        return op.degraded()

    def retries_left(self, op: Unary[Any], error: RoadieError, attempt: int, deadline: float) -> bool:
        """Whether a failed ``op`` is tried again (attempt counts from 1)."""
        return (
            op.retry
            and not self.degrading(op)
            and error.code in RETRYABLE
            and attempt <= self.retries
            and time.monotonic() < deadline
        )
