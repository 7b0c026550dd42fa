"""The asyncio client: ``roadie.AsyncClient``, the calls of ``roadie.Client``
(see there for every option and rule), awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from roadie import _ops
from roadie import types as t
from roadie._base import DEFAULT_DEGRADE_TIMEOUT, DEFAULT_TIMEOUT, Settings, _serialize
from roadie._channel import PathLike
from roadie.errors import RoadieError, from_rpc_error

T = TypeVar("T")


class AsyncClient:
    """A non-blocking client for every call of Roadie's Cache, Jobs and
    Snapshots services, with the options of ``roadie.Client``. Create it
    inside the event loop that uses it."""

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
        self._channel = self._settings.connection.aio_channel()

    # ------------------------------------------------------------ plumbing

    @property
    def degraded_reads(self) -> int:
        """Reads answered "miss" because the server could not be reached."""
        return self._settings.degraded_reads

    @property
    def dropped_writes(self) -> int:
        """Writes dropped because the server could not be reached."""
        return self._settings.dropped_writes

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, op: _ops.Unary[T], timeout: float | None) -> T:
        settings = self._settings
        call = self._channel.unary_unary(
            op.method, request_serializer=_serialize, response_deserializer=op.response.FromString
        )
        deadline = settings.deadline(op, timeout)
        attempt = 0
        while True:
            try:
                remaining = max(deadline - time.monotonic(), 0.001)
                return op.parse(await call(op.request, timeout=remaining, metadata=settings.metadata))
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            attempt += 1
            if not settings.retries_left(op, error, attempt, deadline):
                return settings.fallback(op, error)
            await asyncio.sleep(_ops.backoff(attempt))

    async def _stream_in(self, method: str, requests: Iterable[Any], response: Any, timeout: float | None) -> Any:
        call = self._channel.stream_unary(method, request_serializer=_serialize, response_deserializer=response.FromString)
        try:
            return await call(iter(requests), timeout=timeout, metadata=self._settings.metadata)
        except grpc.RpcError as rpc_error:
            raise from_rpc_error(rpc_error) from None

    def _stream_out(self, method: str, request: Any, response: Any, timeout: float | None) -> Any:
        call = self._channel.unary_stream(method, request_serializer=_serialize, response_deserializer=response.FromString)
        return call(request, timeout=timeout, metadata=self._settings.metadata)

    # ------------------------------------------------------------ Cache

    async def get(
        self,
        key: str,
        *,
        max_stale: t.Seconds | None = None,
        min_confidence: int = 0,
        fingerprint: str = "",
        policy: str = "",
        timeout: float | None = None,
    ) -> t.Lookup:
        """As ``Client.get``."""
        return await self._run(_ops.get(key, max_stale, min_confidence, fingerprint, policy), timeout)

    async def batch_get(
        self,
        keys: Sequence[str],
        *,
        max_stale: t.Seconds | None = None,
        min_confidence: int = 0,
        policy: str = "",
        timeout: float | None = None,
    ) -> list[t.Lookup]:
        """As ``Client.batch_get``."""
        return await self._run(_ops.batch_get(keys, max_stale, min_confidence, policy), timeout)

    async def put(
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
        """As ``Client.put``."""
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
        return await self._run(op, timeout)

    async def delete(self, key: str, *, if_revision: int | None = None, timeout: float | None = None) -> t.DeleteResult:
        """As ``Client.delete``."""
        return await self._run(_ops.delete(key, if_revision), timeout)

    async def invalidate(
        self,
        *,
        key: str | None = None,
        key_prefix: str | None = None,
        tag: str | None = None,
        policy: str | None = None,
        all: bool = False,
        timeout: float | None = None,
    ) -> t.InvalidateResult:
        """As ``Client.invalidate``."""
        return await self._run(_ops.invalidate(key, key_prefix, tag, policy, all), timeout)

    async def get_random(
        self, tag: str, *, policy: str = "", provider: str = "", timeout: float | None = None
    ) -> t.Entry | None:
        """As ``Client.get_random``."""
        return await self._run(_ops.get_random(tag, policy, provider), timeout)

    async def fetch(
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
        """As ``Client.fetch``."""
        return await self._run(_ops.fetch(provider, path, wait, priority, policy, tags, max_stale), timeout)

    async def batch_fetch(
        self, items: Sequence[t.BatchFetchItem], *, priority: int = 0, timeout: float | None = None
    ) -> list[t.BatchFetchResult]:
        """As ``Client.batch_fetch``."""
        return await self._run(_ops.batch_fetch(items, priority), timeout)

    async def publish_event(
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
        """As ``Client.publish_event``."""
        op = _ops.publish_event(kind, track_id, artist, album, old_artist, old_album, fingerprint)
        return await self._run(op, timeout)

    async def stats(self, *, timeout: float | None = None) -> t.Stats:
        """As ``Client.stats``."""
        return await self._run(_ops.stats(), timeout)

    async def list_entries_page(
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
        """As ``Client.list_entries_page``."""
        op = _ops.list_entries(key_prefix, tag, policy, provider, status, page_size, page_token, without_values)
        return await self._run(op, timeout)

    async def list_entries(
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
    ) -> AsyncIterator[t.Entry]:
        """As ``Client.list_entries``: an async iterator."""
        token = ""
        while True:
            page = await self.list_entries_page(
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
            for entry in page.entries:
                yield entry
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
    ) -> AsyncWatcher:
        """As ``Client.watch``: an async iterator that resumes by itself."""
        request = _ops.watch_request(key_prefix, tags, policies, providers, kinds, include_values)
        return AsyncWatcher(self, _ops.WatchCursor(request, after_revision))

    # ------------------------------------------------------------ Jobs

    async def get_job(self, job_id: int, *, timeout: float | None = None) -> t.Job:
        """As ``Client.get_job``."""
        return await self._run(_ops.get_job(job_id), timeout)

    async def list_jobs(
        self,
        *,
        state: t.JobState = t.JobState.UNSPECIFIED,
        provider: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> t.JobPage:
        """As ``Client.list_jobs``."""
        return await self._run(_ops.list_jobs(state, provider, page_size, page_token), timeout)

    async def cancel_job(self, job_id: int, *, timeout: float | None = None) -> t.Job:
        """As ``Client.cancel_job``."""
        return await self._run(_ops.cancel_job(job_id), timeout)

    async def retry_job(self, job_id: int, *, timeout: float | None = None) -> t.Job:
        """As ``Client.retry_job``."""
        return await self._run(_ops.retry_job(job_id), timeout)

    # ------------------------------------------------------------ Snapshots

    async def put_snapshot(
        self,
        name: str,
        tracks: Iterable[_ops.TrackLike],
        *,
        library_mtime: datetime,
        processed_ids: Iterable[str] = (),
        timeout: float | None = None,
    ) -> t.SnapshotInfo:
        """As ``Client.put_snapshot``."""
        requests = _ops.put_snapshot_requests(name, tracks, library_mtime, processed_ids)
        response = _ops.PUT_SNAPSHOT_RESPONSE
        return _ops.snapshot_info(await self._stream_in(_ops.PUT_SNAPSHOT, requests, response, timeout))

    async def merge_snapshot(
        self,
        name: str,
        updates: Iterable[_ops.TrackLike] = (),
        removed_ids: Iterable[str] = (),
        *,
        library_mtime: datetime,
        processed_ids: Iterable[str] = (),
        timeout: float | None = None,
    ) -> t.SnapshotInfo:
        """As ``Client.merge_snapshot``."""
        requests = _ops.merge_snapshot_requests(name, updates, removed_ids, library_mtime, processed_ids)
        response = _ops.MERGE_SNAPSHOT_RESPONSE
        return _ops.snapshot_info(await self._stream_in(_ops.MERGE_SNAPSHOT, requests, response, timeout))

    async def get_snapshot(
        self,
        name: str,
        *,
        library_mtime: datetime | None = None,
        max_age: t.Seconds | None = None,
        only_if_valid: bool = False,
        timeout: float | None = None,
    ) -> t.Snapshot:
        """As ``Client.get_snapshot``."""
        request = _ops.get_snapshot_request(name, library_mtime, max_age, only_if_valid)
        attempt = 0
        while True:
            reader = _ops.SnapshotReader()
            try:
                call = self._stream_out(_ops.GET_SNAPSHOT, request, _ops.GET_SNAPSHOT_RESPONSE, timeout)
                async for response in call:
                    reader.accept(response)
                return reader.snapshot()
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            attempt += 1
            if error.code not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE) or attempt > self._settings.retries:
                raise error
            await asyncio.sleep(_ops.backoff(attempt))

    async def get_snapshot_info(
        self,
        name: str,
        *,
        library_mtime: datetime | None = None,
        max_age: t.Seconds | None = None,
        timeout: float | None = None,
    ) -> t.SnapshotInfo:
        """As ``Client.get_snapshot_info``."""
        return await self._run(_ops.get_snapshot_info(name, library_mtime, max_age), timeout)

    async def delete_snapshot(self, name: str, *, timeout: float | None = None) -> int:
        """As ``Client.delete_snapshot``."""
        return await self._run(_ops.delete_snapshot(name), timeout)


class AsyncWatcher:
    """The changes of a Watch as an async iterator, resumed after the last
    revision seen (``revision``) whenever a retry can fix a break."""

    def __init__(self, client: AsyncClient, cursor: _ops.WatchCursor) -> None:
        self._client = client
        self._cursor = cursor
        self._call: Any = None
        self._closed = False
        self._attempt = 0

    @property
    def revision(self) -> int | None:
        return self._cursor.revision

    def __aiter__(self) -> AsyncWatcher:
        return self

    async def __anext__(self) -> t.Change:
        while not self._closed:
            if self._call is None:
                self._call = self._client._stream_out(
                    _ops.WATCH, self._cursor.request(), _ops.WATCH_RESPONSE, None
                )
            try:
                response = await self._call.read()
            except grpc.RpcError as rpc_error:
                error = from_rpc_error(rpc_error)
            except asyncio.CancelledError:
                if self._closed:
                    break
                raise
            else:
                if response is grpc.aio.EOF:
                    error = RoadieError(grpc.StatusCode.UNAVAILABLE, "the server ended the watch")
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
            await asyncio.sleep(_ops.backoff(self._attempt, base=0.1, cap=5.0))
        raise StopAsyncIteration

    def close(self) -> None:
        """Ends the watch; iteration stops."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
