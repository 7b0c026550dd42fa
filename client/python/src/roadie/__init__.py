"""Python client for Roadie, the cache for external API responses.

``roadie.Client`` (blocking) and ``roadie.AsyncClient`` (asyncio) cover every
call of the roadie.v1 Cache, Jobs and Snapshots services with typed results
(``roadie.types``) and typed errors (``roadie.errors``). ``roadie.compat``
holds drop-in adapters for the two applications Roadie replaces.
"""

from roadie.aio import AsyncClient, AsyncWatcher
from roadie.client import Client, Watcher
from roadie.errors import (
    Aborted,
    Compacted,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RoadieError,
    Unauthenticated,
    Unavailable,
)
from roadie.types import (
    BatchFetchItem,
    BatchFetchResult,
    Change,
    ChangeKind,
    Entry,
    EntryStatus,
    EventKind,
    FetchResult,
    Job,
    JobState,
    Lookup,
    LookupStatus,
    PutOutcome,
    PutResult,
    Snapshot,
    SnapshotInfo,
    Stats,
    Track,
)

__all__ = [
    "Aborted",
    "AsyncClient",
    "AsyncWatcher",
    "BatchFetchItem",
    "BatchFetchResult",
    "Change",
    "ChangeKind",
    "Client",
    "Compacted",
    "DeadlineExceeded",
    "Entry",
    "EntryStatus",
    "EventKind",
    "FetchResult",
    "InvalidArgument",
    "Job",
    "JobState",
    "Lookup",
    "LookupStatus",
    "NotFound",
    "PermissionDenied",
    "PutOutcome",
    "PutResult",
    "ResourceExhausted",
    "RoadieError",
    "Snapshot",
    "SnapshotInfo",
    "Stats",
    "Track",
    "Unauthenticated",
    "Unavailable",
    "Watcher",
]
