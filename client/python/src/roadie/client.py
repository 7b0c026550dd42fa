"""The synchronous client: ``roadie.Client``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc

from roadie import _ops
from roadie import types as t
from roadie._base import DEFAULT_DEGRADE_TIMEOUT, DEFAULT_TIMEOUT, Settings, _serialize
from roadie._channel import PathLike
from roadie.errors import RoadieError, from_rpc_error

T = TypeVar("T")


class Client:
    """A blocking client for every call of Roadie's Cache, Jobs and
    Snapshots services.

    ``target`` is ``host:port`` or ``http://host:port`` (cleartext) or
    ``https://host:port`` (TLS, verified against ``ca`` or else the system's
    roots; ``client_cert`` and ``client_key`` for mutual TLS). ``token`` is
    sent as ``authorization: Bearer TOKEN`` on every call.

    Every call has a deadline: its ``timeout`` argument, else the client's
    ``timeout`` (seconds). Idempotent calls (reads, Fetch, BatchFetch, the
    Jobs calls) are retried up to ``retries`` times with backoff on
    UNAVAILABLE; writes are not, since one may have committed before the
    connection broke.

    ``degrade=True`` never lets an unreachable server stall or fail the
    caller: while it cannot be reached (UNAVAILABLE, or no answer within
    ``degrade_timeout`` seconds), reads answer a miss, writes are dropped
    with a warning on the ``roadie`` logger and counted in
    ``dropped_writes``, and the channel reconnects by itself in the
    background (within two seconds of the server coming back). Watch,
    Stats, the Jobs and the Snapshots calls still raise.
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        ca: PathLike | bytes | None = None,
        client_cert: PathLike | bytes | None = None,
        client_key: PathLike | bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        degrade: bool = False,
        degrade_timeout: float = DEFAULT_DEGRADE_TIMEOUT,
    ) -> None:
        self._settings = Settings(
            target,
            token=token,
            ca=ca,
            client_cert=client_cert,
            client_key=client_key,
            timeout=timeout,
            retries=retries,
            degrade=degrade,
            degrade_timeout=degrade_timeout,
        )
        self._channel = self._settings.connection.channel()

    # ------------------------------------------------------------ plumbing

    @property
    def degraded_reads(self) -> int:
        """Reads answered "miss" because the server could not be reached."""
        return self._settings.degraded_reads

    @property
    def dropped_writes(self) -> int:
        """Writes dropped because the server could not be reached."""
        return self._settings.dropped_writes

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, op: _ops.Unary[T], timeout: float | None) -> T:
        settings = self._settings
        call = self._channel.unary_unary(
            op.method, request_serializer=_serialize, response_deserializer=op.response.FromString
        )
        deadline = settings.deadline(op, timeout)
        attempt = 0
        while True:
            try:
                remaining = max(deadline - time.monotonic(), 0.001)
                return op.parse(call(op.request, timeout=remaining, metadata=settings.metadata))
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            attempt += 1
            if not settings.retries_left(op, error, attempt, deadline):
                return settings.fallback(op, error)
            time.sleep(_ops.backoff(attempt))

    def _stream_in(self, method: str, requests: Iterator[Any], response: Any, timeout: float | None) -> Any:
        call = self._channel.stream_unary(method, request_serializer=_serialize, response_deserializer=response.FromString)
        try:
            return call(requests, timeout=timeout, metadata=self._settings.metadata)
        except grpc.RpcError as rpc_error:
            raise from_rpc_error(rpc_error) from None

    def _stream_out(self, method: str, request: Any, response: Any, timeout: float | None) -> Any:
        call = self._channel.unary_stream(method, request_serializer=_serialize, response_deserializer=response.FromString)
        return call(request, timeout=timeout, metadata=self._settings.metadata)

    # ------------------------------------------------------------ Cache

    def get(
        self,
        key: str,
        *,
        max_stale: t.Seconds | None = None,
        min_confidence: int = 0,
        fingerprint: str = "",
        policy: str = "",
        timeout: float | None = None,
    ) -> t.Lookup:
        """Reads one entry; a miss is an answer (``Lookup.status`` MISS)."""
        return self._run(_ops.get(key, max_stale, min_confidence, fingerprint, policy), timeout)

    def batch_get(
        self,
        keys: Sequence[str],
        *,
        max_stale: t.Seconds | None = None,
        min_confidence: int = 0,
        policy: str = "",
        timeout: float | None = None,
    ) -> list[t.Lookup]:
        """Reads many entries in one call; answers in request order."""
        return self._run(_ops.batch_get(keys, max_stale, min_confidence, policy), timeout)

    def put(
        self,
        key: str,
        value: bytes,
        *,
        media_type: str = "",
        policy: str = "",
        tags: Sequence[str] = (),
        confidence: int = 0,
        keep_higher_confidence: bool = False,
        fingerprint: str = "",
        metadata: Mapping[str, str] | None = None,
        ttl: t.Seconds | None = None,
        no_expiry: bool = False,
        if_revision: int | None = None,
        negative: bool = False,
        timeout: float | None = None,
    ) -> t.PutResult:
        """Writes one entry, subject to ``keep_higher_confidence`` and
        ``if_revision`` (0: only if absent)."""
        op = _ops.put(
            key,
            value,
            media_type=media_type,
            policy=policy,
            tags=tags,
            confidence=confidence,
            keep_higher_confidence=keep_higher_confidence,
            fingerprint=fingerprint,
            metadata=metadata,
            ttl=ttl,
            no_expiry=no_expiry,
            if_revision=if_revision,
            negative=negative,
        )
        return self._run(op, timeout)

    def delete(self, key: str, *, if_revision: int | None = None, timeout: float | None = None) -> t.DeleteResult:
        """Deletes one entry."""
        return self._run(_ops.delete(key, if_revision), timeout)

    def invalidate(
        self,
        *,
        key: str | None = None,
        key_prefix: str | None = None,
        tag: str | None = None,
        policy: str | None = None,
        all: bool = False,
        timeout: float | None = None,
    ) -> t.InvalidateResult:
        """Deletes every entry matching exactly one selector."""
        return self._run(_ops.invalidate(key, key_prefix, tag, policy, all), timeout)

    def get_random(
        self, tag: str, *, policy: str = "", provider: str = "", timeout: float | None = None
    ) -> t.Entry | None:
        """A random fresh, non-negative entry carrying ``tag``, or None."""
        return self._run(_ops.get_random(tag, policy, provider), timeout)

    def fetch(
        self,
        provider: str,
        path: str,
        *,
        wait: bool = True,
        priority: int = 0,
        policy: str = "",
        tags: Sequence[str] = (),
        max_stale: t.Seconds | None = None,
        timeout: float | None = None,
    ) -> t.FetchResult:
        """Reads an entry, fetching it from ``provider`` when missing or
        stale: ``wait=True`` waits for the job up to the deadline,
        ``wait=False`` queues it in the background and answers at once."""
        return self._run(_ops.fetch(provider, path, wait, priority, policy, tags, max_stale), timeout)

    def batch_fetch(
        self, items: Sequence[t.BatchFetchItem], *, priority: int = 0, timeout: float | None = None
    ) -> list[t.BatchFetchResult]:
        """Queues background fetches for many paths; each item answered on
        its own, in request order."""
        return self._run(_ops.batch_fetch(items, priority), timeout)

    def publish_event(
        self,
        kind: t.EventKind,
        *,
        track_id: str = "",
        artist: str = "",
        album: str = "",
        old_artist: str = "",
        old_album: str = "",
        fingerprint: str = "",
        timeout: float | None = None,
    ) -> t.EventResult:
        """Publishes a library event; the server's rules invalidate by it."""
        op = _ops.publish_event(kind, track_id, artist, album, old_artist, old_album, fingerprint)
        return self._run(op, timeout)

    def stats(self, *, timeout: float | None = None) -> t.Stats:
        """Entries, bytes and answers by policy; backlog by provider."""
        return self._run(_ops.stats(), timeout)

    def list_entries_page(
        self,
        *,
        key_prefix: str = "",
        tag: str = "",
        policy: str = "",
        provider: str = "",
        status: t.EntryStatus = t.EntryStatus.UNSPECIFIED,
        page_size: int = 0,
        page_token: str = "",
        without_values: bool = False,
        timeout: float | None = None,
    ) -> t.EntryPage:
        """One page of the entries matching the filters, in key order."""
        op = _ops.list_entries(key_prefix, tag, policy, provider, status, page_size, page_token, without_values)
        return self._run(op, timeout)

    def list_entries(
        self,
        *,
        key_prefix: str = "",
        tag: str = "",
        policy: str = "",
        provider: str = "",
        status: t.EntryStatus = t.EntryStatus.UNSPECIFIED,
        page_size: int = 0,
        without_values: bool = False,
        timeout: float | None = None,
    ) -> Iterator[t.Entry]:
        """Every entry matching the filters, in key order, a page at a time."""
        token = ""
        while True:
            page = self.list_entries_page(
                key_prefix=key_prefix,
                tag=tag,
                policy=policy,
                provider=provider,
                status=status,
                page_size=page_size,
                page_token=token,
                without_values=without_values,
                timeout=timeout,
            )
            yield from page.entries
            token = page.next_page_token
            if not token:
                return

    def watch(
        self,
        *,
        after_revision: int | None = None,
        key_prefix: str = "",
        tags: Sequence[str] = (),
        policies: Sequence[str] = (),
        providers: Sequence[str] = (),
        kinds: Sequence[t.ChangeKind] = (),
        include_values: bool = False,
    ) -> Watcher:
        """Every change after ``after_revision`` (unset: from when the
        stream opens, on the first iteration; pass a revision, from a write
        or ``stats()``, to miss nothing before that), as an
        iterator that resumes by itself when the connection breaks or the
        server drains. A revision the log no longer holds raises
        ``roadie.Compacted``. ``close()`` ends it."""
        request = _ops.watch_request(key_prefix, tags, policies, providers, kinds, include_values)
        return Watcher(self, _ops.WatchCursor(request, after_revision))

    # ------------------------------------------------------------ Jobs

    def get_job(self, job_id: int, *, timeout: float | None = None) -> t.Job:
        """Reads one job."""
        return self._run(_ops.get_job(job_id), timeout)

    def list_jobs(
        self,
        *,
        state: t.JobState = t.JobState.UNSPECIFIED,
        provider: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> t.JobPage:
        """A page of jobs, newest first."""
        return self._run(_ops.list_jobs(state, provider, page_size, page_token), timeout)

    def cancel_job(self, job_id: int, *, timeout: float | None = None) -> t.Job:
        """Cancels an available or running job."""
        return self._run(_ops.cancel_job(job_id), timeout)

    def retry_job(self, job_id: int, *, timeout: float | None = None) -> t.Job:
        """Makes a failed or cancelled job available again."""
        return self._run(_ops.retry_job(job_id), timeout)

    # ------------------------------------------------------------ Snapshots

    def put_snapshot(
        self,
        name: str,
        tracks: Iterable[_ops.TrackLike],
        *,
        library_mtime: datetime,
        processed_ids: Iterable[str] = (),
        timeout: float | None = None,
    ) -> t.SnapshotInfo:
        """Writes a snapshot whole, streamed a chunk at a time. Capture
        ``library_mtime`` before reading the library."""
        requests = _ops.put_snapshot_requests(name, tracks, library_mtime, processed_ids)
        return _ops.snapshot_info(self._stream_in(_ops.PUT_SNAPSHOT, requests, _ops.PUT_SNAPSHOT_RESPONSE, timeout))

    def merge_snapshot(
        self,
        name: str,
        updates: Iterable[_ops.TrackLike] = (),
        removed_ids: Iterable[str] = (),
        *,
        library_mtime: datetime,
        processed_ids: Iterable[str] = (),
        timeout: float | None = None,
    ) -> t.SnapshotInfo:
        """Applies a delta on the server in one revision: removed tracks
        dropped, updated ones replaced in place, new ones appended."""
        requests = _ops.merge_snapshot_requests(name, updates, removed_ids, library_mtime, processed_ids)
        response = _ops.MERGE_SNAPSHOT_RESPONSE
        return _ops.snapshot_info(self._stream_in(_ops.MERGE_SNAPSHOT, requests, response, timeout))

    def get_snapshot(
        self,
        name: str,
        *,
        library_mtime: datetime | None = None,
        max_age: t.Seconds | None = None,
        only_if_valid: bool = False,
        timeout: float | None = None,
    ) -> t.Snapshot:
        """Reads a snapshot and whether it is valid for a library last
        modified at ``library_mtime``; read again if a write lands mid-read."""
        request = _ops.get_snapshot_request(name, library_mtime, max_age, only_if_valid)
        attempt = 0
        while True:
            reader = _ops.SnapshotReader()
            try:
                for response in self._stream_out(
                    _ops.GET_SNAPSHOT, request, _ops.GET_SNAPSHOT_RESPONSE, timeout
                ):
                    reader.accept(response)
                return reader.snapshot()
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            attempt += 1
            if error.code not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE) or attempt > self._settings.retries:
                raise error
            time.sleep(_ops.backoff(attempt))

    def get_snapshot_info(
        self,
        name: str,
        *,
        library_mtime: datetime | None = None,
        max_age: t.Seconds | None = None,
        timeout: float | None = None,
    ) -> t.SnapshotInfo:
        """The info and validity of a snapshot, without its tracks."""
        return self._run(_ops.get_snapshot_info(name, library_mtime, max_age), timeout)

    def delete_snapshot(self, name: str, *, timeout: float | None = None) -> int:
        """Deletes a snapshot; the revision of the deletion."""
        return self._run(_ops.delete_snapshot(name), timeout)


class Watcher:
    """The changes of a Watch, resumed after the last revision seen whenever
    the stream breaks for a reason a retry can fix. ``revision`` is that
    resume point (updated by progress messages too)."""

    def __init__(self, client: Client, cursor: _ops.WatchCursor) -> None:
        self._client = client
        self._cursor = cursor
        self._call: Any = None
        self._closed = False
        self._attempt = 0

    @property
    def revision(self) -> int | None:
        return self._cursor.revision

    def __iter__(self) -> Watcher:
        return self

    def __next__(self) -> t.Change:
        while not self._closed:
            if self._call is None:
                self._call = self._client._stream_out(
                    _ops.WATCH, self._cursor.request(), _ops.WATCH_RESPONSE, None
                )
            try:
                response = next(self._call)
            except StopIteration:
                error: RoadieError = RoadieError(grpc.StatusCode.UNAVAILABLE, "the server ended the watch")
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            else:
                self._attempt = 0
                change = self._cursor.accept(response)
                if change is not None:
                    return change
                continue
            self._call = None
            if self._closed:
                break
            if not self._cursor.resumes(error):
                raise error
            self._attempt += 1
            time.sleep(_ops.backoff(self._attempt, base=0.1, cap=5.0))
        raise StopIteration

    def close(self) -> None:
        """Ends the watch; iteration stops."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
