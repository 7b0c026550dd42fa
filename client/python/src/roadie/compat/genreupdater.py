"""The library tagger's cache (``CacheOrchestrator``), backed by Roadie.

Construct ``CacheOrchestrator(target)`` where the tool constructed its own:
album years, API results, the generic cache, track invalidation and the
library snapshot keep their method names, arguments and results.

Keys are stable across processes and restarts (no salted hash): artist and
album names are normalised by ``normalize`` on every path (Unicode NFKC,
case-folded, control characters dropped, runs of whitespace made one space),
then escaped into the key so that a ``/`` in a name cannot collide. What it
writes, so that entries written here and by any other client agree:

* album years: key ``genreupdater:album_year:ARTIST/ALBUM``, policy
  ``album_year``, value the year as text, the confidence as the entry's
  confidence (a lower one never replaces a higher one), tags
  ``artist:ARTIST`` and ``album:ARTIST/ALBUM`` (normalised, unescaped: the
  tags the server's library-event rules render);
* API results: key ``genreupdater:api:SOURCE:ARTIST/ALBUM``, a JSON object
  ``{"year": ..., "metadata": {...}}``; successes under ``api_metadata`` (the
  long lifetime), failures NEGATIVE under ``failed_lookup`` (the
  failed-lookup lifetime); tag ``album:ARTIST/ALBUM``;
* the generic cache: key ``genreupdater:generic:KEY`` (a key that is not a
  string is written as JSON), policy ``generic``, value JSON;
* the snapshot: Roadie snapshot ``library`` (constructor argument
  ``snapshot_name``), valid as the tool's (at any age while the library's
  modification time has not advanced, otherwise for 24 h).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from roadie.aio import AsyncClient
from roadie.client import Client
from roadie.errors import NotFound
from roadie.types import Entry, EntryStatus, EventKind, LookupStatus, Track

DEFAULT_TARGET = "127.0.0.1:50051"
PREFIX = "genreupdater:"
#: The key ``get_async`` and ``get`` read as "every generic entry".
ALL = "ALL"
_KEY_LIMIT = 1024


def normalize(name: str) -> str:
    """An artist or album name as every key and tag spells it."""
    text = unicodedata.normalize("NFKC", name)
    text = "".join(c for c in text if unicodedata.category(c) != "Cc" or c.isspace())
    return " ".join(text.casefold().split())


def _key(kind: str, *parts: str) -> str:
    key = PREFIX + kind + ":" + "/".join(quote(p, safe=" :@'&,.!()-_") for p in parts)
    if len(key.encode()) > _KEY_LIMIT:
        key = PREFIX + kind + ":sha256:" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()
    return key


def album_key(artist: str, album: str) -> str:
    """The key of an album's year."""
    return _key("album_year", normalize(artist), normalize(album))


def api_key(artist: str, album: str, source: str) -> str:
    """The key of one source's API result for an album."""
    return _key("api", source, normalize(artist), normalize(album))


def generic_key(key: Any) -> str:
    """The key of a generic-cache entry (stable for any JSON-able key)."""
    text = key if isinstance(key, str) else json.dumps(key, sort_keys=True, default=str)
    return _key("generic", text)


def artist_tag(artist: str) -> str:
    return f"artist:{normalize(artist)}"


def album_tag(artist: str, album: str) -> str:
    return f"album:{normalize(artist)}/{normalize(album)}"


@dataclass(frozen=True)
class AlbumCacheEntry:
    """An album's cached year."""

    artist: str
    album: str
    year: str
    timestamp: float
    confidence: int


@dataclass(frozen=True)
class CachedApiResult:
    """One source's cached answer for an album. ``year`` is None for a
    failed or negative lookup; ``ttl`` the seconds it was stored for."""

    artist: str
    album: str
    year: str | None
    source: str
    timestamp: float
    ttl: int | None
    metadata: dict[str, Any]
    api_response: dict[str, Any] | None


def _json(value: Any) -> bytes:
    """A value as every path of this cache stores it."""
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def _timestamp(entry: Entry) -> float:
    return entry.updated_at.timestamp() if entry.updated_at is not None else 0.0


def _ttl(entry: Entry) -> int | None:
    if entry.expires_at is None or entry.updated_at is None:
        return None
    return round((entry.expires_at - entry.updated_at).total_seconds())


def _track_field(track: Any, name: str) -> str:
    data = track.model_dump() if hasattr(track, "model_dump") else track
    value = data.get(name) if isinstance(data, Mapping) else getattr(track, name, None)
    return str(value or "").strip()


class CacheOrchestrator:
    """The tool's cache surface on Roadie. ``target`` is a Roadie address;
    keyword arguments go to both clients (``token``, ``degrade=True``, ...).
    ``library_mtime`` returns the library's modification time now (for the
    snapshot's validity); unset, snapshots are judged by age alone."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        snapshot_name: str = "library",
        library_mtime: Callable[[], datetime | None] | None = None,
        album_policy: str = "album_year",
        api_policy: str = "api_metadata",
        failed_policy: str = "failed_lookup",
        generic_policy: str = "generic",
        **options: Any,
    ) -> None:
        self._target = target
        self._options = options
        self._aio: AsyncClient | None = None
        # The original's set/get/invalidate are synchronous.
        self._sync = Client(target, **options)
        self.snapshot_name = snapshot_name
        self._library_mtime = library_mtime or (lambda: None)
        self.album_policy = album_policy
        self.api_policy = api_policy
        self.failed_policy = failed_policy
        self.generic_policy = generic_policy

    @property
    def client(self) -> AsyncClient:
        """The asyncio client, made on first use inside the caller's loop."""
        if self._aio is None:
            self._aio = AsyncClient(self._target, **self._options)
        return self._aio

    async def initialize(self) -> None:
        """Connects lazily; kept for the original's call sequence."""
        _ = self.client

    async def shutdown(self) -> None:
        """Closes both connections."""
        if self._aio is not None:
            await self._aio.close()
            self._aio = None
        self._sync.close()

    generate_album_key = staticmethod(album_key)

    # ------------------------------------------------------------ album years

    async def get_album_year_entry_from_cache(self, artist: str, album: str) -> AlbumCacheEntry | None:
        """The album's cached year with its confidence, or None."""
        lookup = await self.client.get(album_key(artist, album), policy=self.album_policy)
        entry = lookup.entry
        if entry is None or lookup.status != LookupStatus.HIT:
            return None
        return AlbumCacheEntry(
            artist=entry.metadata.get("artist", artist),
            album=entry.metadata.get("album", album),
            year=entry.value.decode(),
            timestamp=_timestamp(entry),
            confidence=entry.confidence,
        )

    async def get_album_year(self, artist: str, album: str) -> str | None:
        """The album's cached year, or None."""
        entry = await self.get_album_year_entry_from_cache(artist, album)
        return entry.year if entry is not None else None

    get_album_year_from_cache = get_album_year

    async def store_album_year(self, artist: str, album: str, year: str, confidence: int = 0) -> None:
        """Caches the album's year at ``confidence`` (0-100); a stored year
        of higher confidence is kept."""
        await self.client.put(
            album_key(artist, album),
            str(year).encode(),
            media_type="text/plain; charset=utf-8",
            policy=self.album_policy,
            tags=[artist_tag(artist), album_tag(artist, album)],
            confidence=confidence,
            keep_higher_confidence=True,
            metadata={"artist": artist, "album": album},
        )

    store_album_year_in_cache = store_album_year

    async def invalidate_album_cache(self, artist: str, album: str) -> None:
        """Forgets the album's cached year."""
        await self.client.delete(album_key(artist, album))

    async def invalidate_all_albums(self) -> None:
        """Forgets every cached album year."""
        await self.client.invalidate(key_prefix=PREFIX + "album_year:")

    # ------------------------------------------------------------ API results

    async def get_cached_api_result(self, artist: str, album: str, source: str) -> CachedApiResult | None:
        """``source``'s cached answer for the album (a failed lookup comes
        back with ``year`` None until its lifetime ends), or None."""
        lookup = await self.client.get(api_key(artist, album, source), policy=self.api_policy)
        entry = lookup.entry
        if entry is None or lookup.status not in (LookupStatus.HIT, LookupStatus.NEGATIVE):
            return None
        try:
            data = json.loads(entry.value) if entry.value else {}
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        negative = lookup.status == LookupStatus.NEGATIVE
        year = data.get("year")
        return CachedApiResult(
            artist=entry.metadata.get("artist", artist),
            album=entry.metadata.get("album", album),
            year=None if negative or year is None else str(year),
            source=source,
            timestamp=_timestamp(entry),
            ttl=_ttl(entry),
            metadata=data.get("metadata") or {},
            api_response=None if negative else data,
        )

    async def set_cached_api_result(
        self,
        artist: str,
        album: str,
        source: str,
        year: str | None,
        *,
        metadata: dict[str, Any] | None = None,
        is_negative: bool = False,
    ) -> None:
        """Caches ``source``'s answer: a year under the long lifetime, a
        failure (no year, or ``is_negative``) under the failed-lookup one."""
        success = year is not None and not is_negative
        body = {"year": year, "metadata": metadata or {}}
        await self.client.put(
            api_key(artist, album, source),
            _json(body),
            media_type="application/json",
            policy=self.api_policy if success else self.failed_policy,
            tags=[album_tag(artist, album)],
            negative=not success,
            metadata={"artist": artist, "album": album, "source": source},
        )

    # ------------------------------------------------------------ generic cache

    def set(self, key_data: Any, value: Any, ttl: int | None = None) -> None:
        """Caches a JSON-able value (``ttl`` seconds; unset: the policy's)."""
        self._sync.put(
            generic_key(key_data), _json(value), media_type="application/json", policy=self.generic_policy, ttl=ttl
        )

    async def set_async(self, key_data: Any, value: Any, ttl: int | None = None) -> None:
        """As ``set``, awaited."""
        await self.client.put(
            generic_key(key_data), _json(value), media_type="application/json", policy=self.generic_policy, ttl=ttl
        )

    def get(self, key_data: Any) -> Any:
        """The cached value, or None; ``"ALL"``: every generic value."""
        if key_data == ALL:
            return [json.loads(e.value) for e in self._sync.list_entries(key_prefix=PREFIX + "generic:", status=EntryStatus.FRESH)]
        lookup = self._sync.get(generic_key(key_data), policy=self.generic_policy)
        return json.loads(lookup.entry.value) if lookup.entry is not None and lookup.status == LookupStatus.HIT else None

    async def get_async(self, key_data: Any, compute_func: Callable[[], Awaitable[Any]] | None = None) -> Any:
        """The cached value; on a miss, ``compute_func``'s result, cached.
        ``"ALL"``: every generic value."""
        if key_data == ALL:
            return [json.loads(e.value) async for e in self.client.list_entries(key_prefix=PREFIX + "generic:", status=EntryStatus.FRESH)]
        lookup = await self.client.get(generic_key(key_data), policy=self.generic_policy)
        if lookup.entry is not None and lookup.status == LookupStatus.HIT:
            return json.loads(lookup.entry.value)
        if compute_func is None:
            return None
        computed = await compute_func()
        await self.set_async(key_data, computed)
        return computed

    def invalidate(self, key_data: Any) -> None:
        """Forgets one generic entry."""
        self._sync.delete(generic_key(key_data))

    # ------------------------------------------------------------ invalidation

    async def invalidate_for_track(self, track: Any) -> None:
        """Forgets what a changed track makes stale: the generic track lists,
        and for its artist and album the year and every API result; then
        publishes TRACK_MODIFIED so the server's rules (and every watcher)
        follow."""
        artist = _track_field(track, "artist")
        original_artist = _track_field(track, "original_artist")
        album = _track_field(track, "album")
        track_id = _track_field(track, "id")
        await self.client.delete(generic_key("tracks_all"))
        for candidate in {a for a in (artist, original_artist) if a}:
            await self.client.delete(generic_key(f"tracks_{candidate}"))
        if artist and album:
            await self.client.invalidate(tag=album_tag(artist, album))
            await self.client.publish_event(
                EventKind.TRACK_MODIFIED,
                track_id=track_id,
                artist=normalize(artist),
                album=normalize(album),
                old_artist=normalize(artist),
                old_album=normalize(album),
            )

    async def invalidate_all(self) -> None:
        """Forgets everything this cache wrote (years, API results, generic)."""
        await self.client.invalidate(key_prefix=PREFIX)

    clear = invalidate_all

    # ------------------------------------------------------------ snapshot

    async def load_snapshot(self) -> list[dict[str, Any]] | None:
        """The snapshot's tracks if it is valid for the library now, else None."""
        try:
            snapshot = await self.client.get_snapshot(
                self.snapshot_name, library_mtime=self._library_mtime(), only_if_valid=True
            )
        except NotFound:
            return None
        if not snapshot.info.valid:
            return None
        return [track.data() for track in snapshot.tracks]

    async def update_snapshot(
        self,
        tracks: Sequence[Mapping[str, Any]],
        processed_track_ids: Sequence[str] | None = None,
        library_mtime_override: datetime | None = None,
    ) -> None:
        """Writes the whole snapshot. Pass ``library_mtime_override`` captured
        before the tracks were read; otherwise the library's time now."""
        mtime = library_mtime_override or self._library_mtime() or datetime.now(timezone.utc)
        await self.client.put_snapshot(
            self.snapshot_name,
            (Track.of(dict(t)) for t in tracks),
            library_mtime=mtime,
            processed_ids=processed_track_ids or (),
        )

    async def merge_snapshot(
        self,
        updates: Sequence[Mapping[str, Any]],
        removed_ids: Sequence[str] = (),
        processed_track_ids: Sequence[str] | None = None,
        library_mtime_override: datetime | None = None,
    ) -> None:
        """Applies a delta to the stored snapshot on the server, in one
        revision (``merge_tracks``'s rule, plus removals), without sending
        the whole library."""
        mtime = library_mtime_override or self._library_mtime() or datetime.now(timezone.utc)
        await self.client.merge_snapshot(
            self.snapshot_name,
            (Track.of(dict(t)) for t in updates),
            removed_ids,
            library_mtime=mtime,
            processed_ids=processed_track_ids or [str(t.get("id", "")) for t in updates],
        )

    @staticmethod
    def merge_tracks(existing: list[dict[str, Any]], updates: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The original's merge, locally: updated tracks replaced where they
        stand, new ones appended in the delta's order."""
        position = {str(t.get("id")): i for i, t in enumerate(existing)}
        merged = list(existing)
        for track in updates:
            index = position.get(str(track.get("id")))
            if index is None:
                position[str(track.get("id"))] = len(merged)
                merged.append(track)
            else:
                merged[index] = track
        return merged
