"""Every call of the roadie.v1 services, once: the request it sends, how its
answer becomes the client's types, whether it may be retried, and what it
answers while the client is degraded. ``Client`` and ``AsyncClient`` only
run these; neither builds a request of its own."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, Union

import grpc

from roadie import types as t
from roadie.errors import RoadieError
from roadie.v1 import cache_pb2, jobs_pb2, snapshots_pb2

T = TypeVar("T")

_CACHE = "/roadie.v1.Cache/"
_JOBS = "/roadie.v1.Jobs/"
_SNAPSHOTS = "/roadie.v1.Snapshots/"

#: Tracks per message of a streamed snapshot write or merge.
SNAPSHOT_CHUNK = 1000

TrackLike = Union[t.Track, Mapping[str, Any]]


@dataclass(frozen=True)
class Unary(Generic[T]):
    """One unary call: where it goes, what it sends, how to read the answer.

    ``retry``: idempotent, so retried with backoff on UNAVAILABLE.
    ``degraded``: the answer while the server is unreachable and the client
    degrades (a miss for a read, a dropped result for a write); ``None``:
    the error is raised even when degrading. ``write``: a dropped write,
    counted and warned about, rather than a missed read."""

    method: str
    request: Any
    response: Any
    parse: Callable[[Any], T]
    retry: bool = False
    degraded: Callable[[], T] | None = None
    write: bool = False


def backoff(attempt: int, base: float = 0.05, cap: float = 2.0) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): doubling
    from ``base`` up to ``cap``, with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


#: Status codes after which an idempotent call is tried again.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
#: Status codes that mean "the server cannot be reached" to a degrading client.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def _duration(field: Any, length: t.Seconds | None) -> None:
    if length is not None:
        field.CopyFrom(t.to_duration(length))


# ---------------------------------------------------------------- Cache


def get(key: str, max_stale: t.Seconds | None, min_confidence: int, fingerprint: str, policy: str) -> Unary[t.Lookup]:
    request = cache_pb2.GetRequest(key=key, min_confidence=min_confidence, fingerprint=fingerprint, policy=policy)
    _duration(request.max_stale, max_stale)
    return Unary(_CACHE + "Get", request, cache_pb2.GetResponse, t.Lookup.from_pb, retry=True, degraded=t.Lookup.miss)


def batch_get(
    keys: Sequence[str], max_stale: t.Seconds | None, min_confidence: int, policy: str
) -> Unary[list[t.Lookup]]:
    request = cache_pb2.BatchGetRequest(keys=list(keys), min_confidence=min_confidence, policy=policy)
    _duration(request.max_stale, max_stale)
    count = len(request.keys)
    return Unary(
        _CACHE + "BatchGet",
        request,
        cache_pb2.BatchGetResponse,
        lambda pb: [t.Lookup.from_pb(r) for r in pb.results],
        retry=True,
        degraded=lambda: [t.Lookup.miss() for _ in range(count)],
    )


def put(
    key: str,
    value: bytes,
    *,
    media_type: str,
    policy: str,
    tags: Sequence[str],
    confidence: int,
    keep_higher_confidence: bool,
    fingerprint: str,
    metadata: Mapping[str, str] | None,
    ttl: t.Seconds | None,
    no_expiry: bool,
    if_revision: int | None,
    negative: bool,
) -> Unary[t.PutResult]:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"value must be bytes, not {type(value).__name__} (encode text or JSON first)")
    request = cache_pb2.PutRequest(
        key=key,
        value=bytes(value),
        media_type=media_type,
        policy=policy,
        tags=list(tags),
        confidence=confidence,
        keep_higher_confidence=keep_higher_confidence,
        fingerprint=fingerprint,
        metadata=dict(metadata or {}),
        no_expiry=no_expiry,
        negative=negative,
    )
    _duration(request.ttl, ttl)
    if if_revision is not None:
        request.if_revision = if_revision
    return Unary(
        _CACHE + "Put",
        request,
        cache_pb2.PutResponse,
        lambda pb: t.PutResult(t.PutOutcome(pb.outcome), pb.revision, pb.stored_confidence),
        degraded=lambda: t.PutResult(t.PutOutcome.UNSPECIFIED, 0, dropped=True),
        write=True,
    )


def delete(key: str, if_revision: int | None) -> Unary[t.DeleteResult]:
    request = cache_pb2.DeleteRequest(key=key)
    if if_revision is not None:
        request.if_revision = if_revision
    return Unary(
        _CACHE + "Delete",
        request,
        cache_pb2.DeleteResponse,
        lambda pb: t.DeleteResult(pb.deleted, pb.revision),
        degraded=lambda: t.DeleteResult(False, 0, dropped=True),
        write=True,
    )


def invalidate(
    key: str | None, key_prefix: str | None, tag: str | None, policy: str | None, everything: bool
) -> Unary[t.InvalidateResult]:
    request = cache_pb2.InvalidateRequest()
    if key is not None:
        request.key = key
    if key_prefix is not None:
        request.key_prefix = key_prefix
    if tag is not None:
        request.tag = tag
    if policy is not None:
        request.policy = policy
    if everything:
        request.all = True
    if sum(x is not None for x in (key, key_prefix, tag, policy)) + everything != 1:
        raise ValueError("invalidate takes exactly one of key, key_prefix, tag, policy and all=True")
    return Unary(
        _CACHE + "Invalidate",
        request,
        cache_pb2.InvalidateResponse,
        lambda pb: t.InvalidateResult(pb.count, pb.revision),
        degraded=lambda: t.InvalidateResult(0, 0, dropped=True),
        write=True,
    )


def get_random(tag: str, policy: str, provider: str) -> Unary[t.Entry | None]:
    request = cache_pb2.GetRandomRequest(tag=tag, policy=policy, provider=provider)
    return Unary(
        _CACHE + "GetRandom",
        request,
        cache_pb2.GetRandomResponse,
        lambda pb: t.Entry.from_pb(pb.entry) if pb.HasField("entry") else None,
        retry=True,
        degraded=lambda: None,
    )


def fetch(
    provider: str,
    path: str,
    wait: bool,
    priority: int,
    policy: str,
    tags: Sequence[str],
    max_stale: t.Seconds | None,
) -> Unary[t.FetchResult]:
    mode = cache_pb2.FETCH_MODE_WAIT if wait else cache_pb2.FETCH_MODE_BACKGROUND
    request = cache_pb2.FetchRequest(
        provider=provider, path=path, mode=mode, priority=priority, policy=policy, tags=list(tags)
    )
    _duration(request.max_stale, max_stale)
    # Retried: a repeated fetch shares the job the first one queued.
    return Unary(
        _CACHE + "Fetch",
        request,
        cache_pb2.FetchResponse,
        t.FetchResult.from_pb,
        retry=True,
        degraded=lambda: t.FetchResult(t.LookupStatus.MISS, None, None, False),
    )


def batch_fetch(items: Sequence[t.BatchFetchItem], priority: int) -> Unary[list[t.BatchFetchResult]]:
    request = cache_pb2.BatchFetchRequest(
        items=[
            cache_pb2.BatchFetchItem(
                provider=i.provider, path=i.path, policy=i.policy, tags=list(i.tags), priority=i.priority
            )
            for i in items
        ],
        priority=priority,
    )
    return Unary(
        _CACHE + "BatchFetch",
        request,
        cache_pb2.BatchFetchResponse,
        lambda pb: [t.BatchFetchResult.from_pb(r) for r in pb.results],
        retry=True,
    )


def publish_event(
    kind: t.EventKind,
    track_id: str,
    artist: str,
    album: str,
    old_artist: str,
    old_album: str,
    fingerprint: str,
) -> Unary[t.EventResult]:
    request = cache_pb2.PublishEventRequest(
        kind=f"LIBRARY_EVENT_KIND_{kind.name}",
        track_id=track_id,
        artist=artist,
        album=album,
        old_artist=old_artist,
        old_album=old_album,
        fingerprint=fingerprint,
    )
    return Unary(
        _CACHE + "PublishEvent",
        request,
        cache_pb2.PublishEventResponse,
        t.EventResult.from_pb,
        degraded=lambda: t.EventResult(0, (), 0, dropped=True),
        write=True,
    )


def stats() -> Unary[t.Stats]:
    return Unary(_CACHE + "Stats", cache_pb2.StatsRequest(), cache_pb2.StatsResponse, t.Stats.from_pb, retry=True)


def list_entries(
    key_prefix: str,
    tag: str,
    policy: str,
    provider: str,
    status: t.EntryStatus,
    page_size: int,
    page_token: str,
    without_values: bool,
) -> Unary[t.EntryPage]:
    request = cache_pb2.ListEntriesRequest(
        key_prefix=key_prefix,
        tag=tag,
        policy=policy,
        provider=provider,
        status=f"ENTRY_STATUS_{status.name}",
        page_size=page_size,
        page_token=page_token,
        without_values=without_values,
    )
    return Unary(
        _CACHE + "ListEntries",
        request,
        cache_pb2.ListEntriesResponse,
        lambda pb: t.EntryPage(tuple(t.Entry.from_pb(e) for e in pb.entries), pb.next_page_token, pb.revision),
        retry=True,
        degraded=lambda: t.EntryPage((), "", 0),
    )


def watch_request(
    key_prefix: str,
    tags: Sequence[str],
    policies: Sequence[str],
    providers: Sequence[str],
    kinds: Sequence[t.ChangeKind],
    include_values: bool,
) -> cache_pb2.WatchRequest:
    return cache_pb2.WatchRequest(
        key_prefix=key_prefix,
        tags=list(tags),
        policies=list(policies),
        providers=list(providers),
        kinds=[f"CHANGE_KIND_{k.name}" for k in kinds],
        include_values=include_values,
    )


WATCH = _CACHE + "Watch"
WATCH_RESPONSE = cache_pb2.WatchResponse
#: Watch errors after which the watch resumes from the last revision seen:
#: the server went away or is draining, or the stream fell behind its buffer.
WATCH_RESUMES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


class WatchCursor:
    """The resume point of a Watch: the revision of the last change or
    progress seen, and the request that continues after it."""

    def __init__(self, request: cache_pb2.WatchRequest, after_revision: int | None) -> None:
        self._request = request
        self.revision = after_revision

    def request(self) -> cache_pb2.WatchRequest:
        request = cache_pb2.WatchRequest()
        request.CopyFrom(self._request)
        if self.revision is not None:
            request.after_revision = self.revision
        return request

    def accept(self, response: cache_pb2.WatchResponse) -> t.Change | None:
        """Moves the cursor past ``response``; the change it carries, if any."""
        if response.HasField("change"):
            self.revision = response.change.revision
            return t.Change.from_pb(response.change)
        self.revision = response.progress.revision
        return None

    @staticmethod
    def resumes(error: RoadieError) -> bool:
        return error.code in WATCH_RESUMES


# ---------------------------------------------------------------- Jobs


def get_job(job_id: int) -> Unary[t.Job]:
    return Unary(
        _JOBS + "GetJob", jobs_pb2.GetJobRequest(id=job_id), jobs_pb2.GetJobResponse,
        lambda pb: t.Job.from_pb(pb.job), retry=True,
    )


def list_jobs(state: t.JobState, provider: str, page_size: int, page_token: str) -> Unary[t.JobPage]:
    request = jobs_pb2.ListJobsRequest(state=f"JOB_STATE_{state.name}", provider=provider, page_size=page_size, page_token=page_token)
    return Unary(
        _JOBS + "ListJobs",
        request,
        jobs_pb2.ListJobsResponse,
        lambda pb: t.JobPage(tuple(t.Job.from_pb(j) for j in pb.jobs), pb.next_page_token),
        retry=True,
    )


def cancel_job(job_id: int) -> Unary[t.Job]:
    return Unary(
        _JOBS + "CancelJob", jobs_pb2.CancelJobRequest(id=job_id), jobs_pb2.CancelJobResponse,
        lambda pb: t.Job.from_pb(pb.job), retry=True,
    )


def retry_job(job_id: int) -> Unary[t.Job]:
    return Unary(
        _JOBS + "RetryJob", jobs_pb2.RetryJobRequest(id=job_id), jobs_pb2.RetryJobResponse,
        lambda pb: t.Job.from_pb(pb.job), retry=True,
    )


# ---------------------------------------------------------------- Snapshots


def _validity(request: Any, library_mtime: datetime | None, max_age: t.Seconds | None) -> None:
    if library_mtime is not None:
        request.validity.library_mtime.CopyFrom(t.to_timestamp(library_mtime))
    if max_age is not None:
        request.validity.max_age.CopyFrom(t.to_duration(max_age))


def get_snapshot_info(name: str, library_mtime: datetime | None, max_age: t.Seconds | None) -> Unary[t.SnapshotInfo]:
    request = snapshots_pb2.GetSnapshotInfoRequest(name=name)
    _validity(request, library_mtime, max_age)
    return Unary(
        _SNAPSHOTS + "GetSnapshotInfo",
        request,
        snapshots_pb2.GetSnapshotInfoResponse,
        lambda pb: t.SnapshotInfo.from_pb(pb.info),
        retry=True,
    )


def delete_snapshot(name: str) -> Unary[int]:
    return Unary(
        _SNAPSHOTS + "DeleteSnapshot",
        snapshots_pb2.DeleteSnapshotRequest(name=name),
        snapshots_pb2.DeleteSnapshotResponse,
        lambda pb: int(pb.revision),
        retry=True,
    )


GET_SNAPSHOT = _SNAPSHOTS + "GetSnapshot"
PUT_SNAPSHOT = _SNAPSHOTS + "PutSnapshot"
MERGE_SNAPSHOT = _SNAPSHOTS + "MergeSnapshot"
GET_SNAPSHOT_RESPONSE = snapshots_pb2.GetSnapshotResponse
PUT_SNAPSHOT_RESPONSE = snapshots_pb2.PutSnapshotResponse
MERGE_SNAPSHOT_RESPONSE = snapshots_pb2.MergeSnapshotResponse


def get_snapshot_request(
    name: str, library_mtime: datetime | None, max_age: t.Seconds | None, only_if_valid: bool
) -> snapshots_pb2.GetSnapshotRequest:
    request = snapshots_pb2.GetSnapshotRequest(name=name, only_if_valid=only_if_valid)
    _validity(request, library_mtime, max_age)
    return request


class SnapshotReader:
    """Gathers a GetSnapshot stream: the info first, then the tracks."""

    def __init__(self) -> None:
        self.info: t.SnapshotInfo | None = None
        self.tracks: list[t.Track] = []

    def accept(self, response: snapshots_pb2.GetSnapshotResponse) -> None:
        if response.HasField("info"):
            self.info = t.SnapshotInfo.from_pb(response.info)
        self.tracks.extend(t.Track(tr.id, tr.json) for tr in response.tracks)

    def snapshot(self) -> t.Snapshot:
        if self.info is None:
            raise RoadieError(grpc.StatusCode.INTERNAL, "GetSnapshot answered without the snapshot's info")
        return t.Snapshot(self.info, self.tracks)


def _header(name: str, library_mtime: datetime, processed_ids: Iterable[str]) -> snapshots_pb2.SnapshotHeader:
    header = snapshots_pb2.SnapshotHeader(name=name, processed_ids=[str(i) for i in processed_ids])
    header.library_mtime.CopyFrom(t.to_timestamp(library_mtime))
    return header


def _chunks(tracks: Iterable[TrackLike], size: int) -> Iterator[list[snapshots_pb2.Track]]:
    chunk: list[snapshots_pb2.Track] = []
    for track in tracks:
        chunk.append((track if isinstance(track, t.Track) else t.Track.of(dict(track))).to_pb())
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def put_snapshot_requests(
    name: str, tracks: Iterable[TrackLike], library_mtime: datetime, processed_ids: Iterable[str]
) -> Iterator[snapshots_pb2.PutSnapshotRequest]:
    """The PutSnapshot stream: a header, then the tracks a chunk at a time,
    converted as they are sent (a generator of tracks is never held whole)."""
    yield snapshots_pb2.PutSnapshotRequest(header=_header(name, library_mtime, processed_ids))
    for chunk in _chunks(tracks, SNAPSHOT_CHUNK):
        yield snapshots_pb2.PutSnapshotRequest(tracks=chunk)


def merge_snapshot_requests(
    name: str,
    updates: Iterable[TrackLike],
    removed_ids: Iterable[str],
    library_mtime: datetime,
    processed_ids: Iterable[str],
) -> Iterator[snapshots_pb2.MergeSnapshotRequest]:
    """The MergeSnapshot stream: the header, the removals, then the updates,
    each a chunk at a time."""
    yield snapshots_pb2.MergeSnapshotRequest(header=_header(name, library_mtime, processed_ids))
    removed: list[str] = []
    for track_id in removed_ids:
        removed.append(str(track_id))
        if len(removed) >= SNAPSHOT_CHUNK * 10:
            yield snapshots_pb2.MergeSnapshotRequest(removed_ids=removed)
            removed = []
    if removed:
        yield snapshots_pb2.MergeSnapshotRequest(removed_ids=removed)
    for chunk in _chunks(updates, SNAPSHOT_CHUNK):
        yield snapshots_pb2.MergeSnapshotRequest(updates=chunk)


def snapshot_info(pb: Any) -> t.SnapshotInfo:
    """The info of a PutSnapshot or MergeSnapshot answer."""
    return t.SnapshotInfo.from_pb(pb.info)
