"""What the client's methods take and return: plain dataclasses and enums,
each with the one conversion from its protobuf message (``from_pb``)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Union

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from roadie.v1 import cache_pb2, jobs_pb2, snapshots_pb2

#: A length of time: seconds, or a timedelta.
Seconds = Union[float, int, timedelta]


def _time(ts: timestamp_pb2.Timestamp, present: bool = True) -> datetime | None:
    if not present:
        return None
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=timezone.utc)


def to_timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp for ``when`` (a naive datetime is taken as UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(timezone.utc))
    return ts


def to_duration(length: Seconds) -> duration_pb2.Duration:
    """A protobuf Duration for ``length`` (seconds or a timedelta)."""
    seconds = length.total_seconds() if isinstance(length, timedelta) else float(length)
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {seconds}s")
    duration = duration_pb2.Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


class EntryStatus(enum.IntEnum):
    """Freshness of an entry when it was read."""

    UNSPECIFIED = 0
    FRESH = 1
    STALE = 2
    NEGATIVE = 3


class LookupStatus(enum.IntEnum):
    """What a read found."""

    UNSPECIFIED = 0
    MISS = 1
    HIT = 2
    STALE = 3
    NEGATIVE = 4


class PutOutcome(enum.IntEnum):
    """Whether and why a Put wrote."""

    UNSPECIFIED = 0
    WRITTEN = 1
    KEPT_HIGHER_CONFIDENCE = 2
    REVISION_MISMATCH = 3


class ChangeKind(enum.IntEnum):
    """Kinds of change on the Watch stream."""

    UNSPECIFIED = 0
    PUT = 1
    DELETE = 2
    INVALIDATE = 3
    EXPIRE = 4
    EVICT = 5
    FETCH = 6
    NEGATIVE = 7
    SNAPSHOT = 8


class EventKind(enum.IntEnum):
    """Library events (Cache.PublishEvent)."""

    UNSPECIFIED = 0
    TRACK_ADDED = 1
    TRACK_REMOVED = 2
    TRACK_MODIFIED = 3
    FINGERPRINT_CHANGED = 4
    LIBRARY_SYNC = 5
    MANUAL_INVALIDATION = 6


class JobState(enum.IntEnum):
    """Where a fetch job is in its life cycle."""

    UNSPECIFIED = 0
    AVAILABLE = 1
    RUNNING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5


@dataclass(frozen=True)
class Provenance:
    """Where a fetched entry came from."""

    provider: str
    upstream_status: int
    etag: str
    last_modified: str


@dataclass(frozen=True)
class Entry:
    """A cached entry."""

    key: str
    value: bytes
    media_type: str
    policy: str
    tags: tuple[str, ...]
    confidence: int
    fingerprint: str
    metadata: dict[str, str]
    status: EntryStatus
    created_at: datetime | None
    updated_at: datetime | None
    expires_at: datetime | None
    revision: int
    provenance: Provenance | None

    @staticmethod
    def from_pb(pb: cache_pb2.Entry) -> Entry:
        provenance = None
        if pb.HasField("provenance"):
            p = pb.provenance
            provenance = Provenance(p.provider, p.upstream_status, p.etag, p.last_modified)
        return Entry(
            key=pb.key,
            value=pb.value,
            media_type=pb.media_type,
            policy=pb.policy,
            tags=tuple(pb.tags),
            confidence=pb.confidence,
            fingerprint=pb.fingerprint,
            metadata=dict(pb.metadata),
            status=EntryStatus(pb.status),
            created_at=_time(pb.created_at, pb.HasField("created_at")),
            updated_at=_time(pb.updated_at, pb.HasField("updated_at")),
            expires_at=_time(pb.expires_at, pb.HasField("expires_at")),
            revision=pb.revision,
            provenance=provenance,
        )

    def json(self) -> Any:
        """The value parsed as JSON."""
        return json.loads(self.value)


@dataclass(frozen=True)
class Lookup:
    """The answer to a read: a status and, unless it missed, the entry."""

    status: LookupStatus
    entry: Entry | None

    @property
    def found(self) -> bool:
        """True when an entry came back (HIT, STALE or NEGATIVE)."""
        return self.entry is not None

    @staticmethod
    def from_pb(pb: cache_pb2.GetResponse) -> Lookup:
        entry = Entry.from_pb(pb.entry) if pb.HasField("entry") else None
        return Lookup(LookupStatus(pb.status), entry)

    @staticmethod
    def miss() -> Lookup:
        return Lookup(LookupStatus.MISS, None)


@dataclass(frozen=True)
class PutResult:
    """The answer to a Put. ``dropped``: the client was degraded and did not
    send it (see ``Client(degrade=...)``)."""

    outcome: PutOutcome
    revision: int
    stored_confidence: int = 0
    dropped: bool = False

    @property
    def written(self) -> bool:
        return self.outcome == PutOutcome.WRITTEN


@dataclass(frozen=True)
class DeleteResult:
    """The answer to a Delete."""

    deleted: bool
    revision: int
    dropped: bool = False


@dataclass(frozen=True)
class InvalidateResult:
    """The answer to an Invalidate: how many entries went."""

    count: int
    revision: int
    dropped: bool = False


@dataclass(frozen=True)
class AppliedRule:
    """One invalidation an event rule made."""

    policy: str
    tag: str
    count: int


@dataclass(frozen=True)
class EventResult:
    """The answer to PublishEvent."""

    count: int
    applied: tuple[AppliedRule, ...]
    revision: int
    dropped: bool = False

    @staticmethod
    def from_pb(pb: cache_pb2.PublishEventResponse) -> EventResult:
        applied = tuple(AppliedRule(a.policy, a.tag, a.count) for a in pb.applied)
        return EventResult(pb.count, applied, pb.revision)


@dataclass(frozen=True)
class Job:
    """A fetch job."""

    id: int
    provider: str
    url: str
    priority: int
    state: JobState
    attempt: int
    max_attempts: int
    run_after: datetime | None
    lease_expires_at: datetime | None
    lease_holder: str
    last_error: str
    created_at: datetime | None
    updated_at: datetime | None
    finished_at: datetime | None
    traceparent: str
    policy: str

    @staticmethod
    def from_pb(pb: jobs_pb2.Job) -> Job:
        return Job(
            id=pb.id,
            provider=pb.provider,
            url=pb.url,
            priority=pb.priority,
            state=JobState(pb.state),
            attempt=pb.attempt,
            max_attempts=pb.max_attempts,
            run_after=_time(pb.run_after, pb.HasField("run_after")),
            lease_expires_at=_time(pb.lease_expires_at, pb.HasField("lease_expires_at")),
            lease_holder=pb.lease_holder,
            last_error=pb.last_error,
            created_at=_time(pb.created_at, pb.HasField("created_at")),
            updated_at=_time(pb.updated_at, pb.HasField("updated_at")),
            finished_at=_time(pb.finished_at, pb.HasField("finished_at")),
            traceparent=pb.traceparent,
            policy=pb.policy,
        )


@dataclass(frozen=True)
class JobPage:
    """A page of ListJobs, newest first."""

    jobs: tuple[Job, ...]
    next_page_token: str


@dataclass(frozen=True)
class FetchResult:
    """The answer to a Fetch: an entry, or the job fetching it."""

    status: LookupStatus
    entry: Entry | None
    job: Job | None
    job_shared: bool

    @staticmethod
    def from_pb(pb: cache_pb2.FetchResponse) -> FetchResult:
        return FetchResult(
            status=LookupStatus(pb.status),
            entry=Entry.from_pb(pb.entry) if pb.HasField("entry") else None,
            job=Job.from_pb(pb.job) if pb.HasField("job") else None,
            job_shared=pb.job_shared,
        )


@dataclass(frozen=True)
class BatchFetchItem:
    """One path for BatchFetch."""

    provider: str
    path: str
    policy: str = ""
    tags: tuple[str, ...] = ()
    priority: int = 0


@dataclass(frozen=True)
class ItemError:
    """Why one item of a BatchFetch was refused."""

    code: grpc.StatusCode
    field: str
    message: str


_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class BatchFetchResult:
    """The answer for one BatchFetch item: cached (HIT or NEGATIVE), queued
    (MISS with a job) or refused (``error``)."""

    status: LookupStatus
    job: Job | None
    job_shared: bool
    error: ItemError | None

    @staticmethod
    def from_pb(pb: cache_pb2.BatchFetchResult) -> BatchFetchResult:
        error = None
        if pb.HasField("error"):
            code = _CODES.get(pb.error.code, grpc.StatusCode.UNKNOWN)
            error = ItemError(code, pb.error.field, pb.error.message)
        job = Job.from_pb(pb.job) if pb.HasField("job") else None
        return BatchFetchResult(LookupStatus(pb.status), job, pb.job_shared, error)


@dataclass(frozen=True)
class Change:
    """One change on the Watch stream."""

    revision: int
    kind: ChangeKind
    key: str
    policy: str
    tags: tuple[str, ...]
    provider: str
    at: datetime | None
    entry: Entry | None

    @staticmethod
    def from_pb(pb: cache_pb2.Change) -> Change:
        return Change(
            revision=pb.revision,
            kind=ChangeKind(pb.kind),
            key=pb.key,
            policy=pb.policy,
            tags=tuple(pb.tags),
            provider=pb.provider,
            at=_time(pb.at, pb.HasField("at")),
            entry=Entry.from_pb(pb.entry) if pb.HasField("entry") else None,
        )


@dataclass(frozen=True)
class EntryPage:
    """A page of ListEntries, in key order. ``revision``: the change-log
    revision the listing's first page read at (Watch from it for no gap)."""

    entries: tuple[Entry, ...]
    next_page_token: str
    revision: int


@dataclass(frozen=True)
class PolicyStats:
    """Numbers for one policy."""

    policy: str
    entries: int
    bytes: int
    raw_bytes: int
    budget_bytes: int
    hits: int
    misses: int
    stale: int
    negative: int
    evicted: int


@dataclass(frozen=True)
class ProviderStats:
    """Numbers for one provider."""

    provider: str
    rate_per_second: float
    backlog: int
    next_request_at: datetime | None
    total_wait_seconds: float


@dataclass(frozen=True)
class Stats:
    """The answer to Stats."""

    policies: dict[str, PolicyStats]
    providers: dict[str, ProviderStats]
    revision: int
    started_at: datetime | None
    backend: str
    tail_revision: int
    watchers: int
    hot_tier: dict[str, int] | None
    wal_bytes: int | None

    @staticmethod
    def from_pb(pb: cache_pb2.StatsResponse) -> Stats:
        policies = {
            p.policy: PolicyStats(
                p.policy, p.entries, p.bytes, p.raw_bytes, p.budget_bytes,
                p.hits, p.misses, p.stale, p.negative, p.evicted,
            )
            for p in pb.policies
        }
        providers = {
            p.provider: ProviderStats(
                p.provider,
                p.rate_per_second,
                p.backlog,
                _time(p.next_request_at, p.HasField("next_request_at")),
                _seconds(p.total_wait),
            )
            for p in pb.providers
        }
        hot = None
        if pb.HasField("hot_tier"):
            h = pb.hot_tier
            hot = {
                "entries": h.entries, "bytes": h.bytes, "max_bytes": h.max_bytes,
                "hits": h.hits, "misses": h.misses, "bypassed": h.bypassed,
            }
        return Stats(
            policies=policies,
            providers=providers,
            revision=pb.revision,
            started_at=_time(pb.started_at, pb.HasField("started_at")),
            backend=pb.backend,
            tail_revision=pb.tail_revision,
            watchers=pb.watchers,
            hot_tier=hot,
            wal_bytes=pb.wal.bytes if pb.HasField("wal") else None,
        )


@dataclass(frozen=True)
class Track:
    """One track of a library snapshot: its id and the track as JSON."""

    id: str
    json: bytes

    @staticmethod
    def of(track: dict[str, Any], id_field: str = "id") -> Track:
        """A Track from a JSON-able dict whose ``id_field`` is its id."""
        if id_field not in track:
            raise ValueError(f"track has no {id_field!r} field: {str(track)[:64]}")
        return Track(str(track[id_field]), json.dumps(track, separators=(",", ":")).encode())

    def data(self) -> Any:
        """The track parsed from its JSON."""
        return json.loads(self.json)

    def to_pb(self) -> snapshots_pb2.Track:
        return snapshots_pb2.Track(id=self.id, json=self.json)


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot holds, without its tracks, and whether it is valid
    for the library as the reader described it."""

    name: str
    library_mtime: datetime | None
    processed_ids: tuple[str, ...]
    tracks: int
    bytes: int
    created_at: datetime | None
    updated_at: datetime | None
    revision: int
    valid: bool
    validity: str

    @staticmethod
    def from_pb(pb: snapshots_pb2.SnapshotInfo) -> SnapshotInfo:
        return SnapshotInfo(
            name=pb.name,
            library_mtime=_time(pb.library_mtime, pb.HasField("library_mtime")),
            processed_ids=tuple(pb.processed_ids),
            tracks=pb.tracks,
            bytes=pb.bytes,
            created_at=_time(pb.created_at, pb.HasField("created_at")),
            updated_at=_time(pb.updated_at, pb.HasField("updated_at")),
            revision=pb.revision,
            valid=pb.valid,
            validity=pb.validity,
        )


@dataclass(frozen=True)
class Snapshot:
    """A snapshot read back: its info and its tracks in order (no tracks when
    read with ``only_if_valid`` and it was not valid)."""

    info: SnapshotInfo
    tracks: list[Track] = field(default_factory=list)
