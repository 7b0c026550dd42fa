"""whats-now-playing's ``datacache``, backed by Roadie.

Swap ``nowplaying.datacache`` for this module: ``DataStorage`` (the storage
layer) and ``get_providers()`` (``musicbrainz`` and ``images``) keep their
method names, arguments and results, and are async like the originals.

What it writes, so that entries written here and by any other client agree:

* key: the URL, as the original (fetched entries: the canonical URL);
* policy: ``api_metadata`` (constructor argument ``policy``; images:
  ``image_policy``); the TTL of each write is the caller's ``ttl_seconds``;
* tags: ``nowplaying:DATA_TYPE:IDENTIFIER`` and
  ``nowplaying:DATA_TYPE:IDENTIFIER@PROVIDER`` (see ``lookup_tag``), which
  ``retrieve_by_identifier`` and ``get_random_image`` select on;
* metadata: ``nowplaying.encoding`` (``json``, ``text`` or ``bytes``: how
  ``data_value`` was encoded), ``nowplaying.status_code``,
  ``nowplaying.provider`` and ``nowplaying.metadata`` (the caller's metadata
  as a JSON object);
* a ``status_code`` other than 200 is stored NEGATIVE, so a random choice
  (``GetRandom``) only ever picks a status-200 entry.

Images and MusicBrainz answers are fetched by Roadie's worker (``immediate``
is a WAIT fetch, otherwise a BACKGROUND one) through the Roadie providers
``images`` (constructor argument ``image_provider``; its base URL must cover
the image URLs) and ``musicbrainz``; the original's ``provider`` argument
("theaudiodb", "fanarttv", ...) is the source label in the tags.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from roadie.aio import AsyncClient
from roadie.errors import RoadieError
from roadie.types import BatchFetchItem, Entry, EntryStatus, FetchResult, LookupStatus

log = logging.getLogger("roadie.compat.nowplaying")

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_POLICY = "api_metadata"
#: The Roadie provider that fetches image URLs.
DEFAULT_IMAGE_PROVIDER = "images"
#: The image kinds of the original's ImageProvider.
IMAGE_TYPES = ("thumbnail", "logo", "banner", "fanart")

_TAG_LIMIT = 256
_ENCODING = "nowplaying.encoding"
_STATUS = "nowplaying.status_code"
_PROVIDER = "nowplaying.provider"
_METADATA = "nowplaying.metadata"


def lookup_tag(data_type: str, identifier: str, provider: str | None = None) -> str:
    """The tag an entry for ``identifier`` and ``data_type`` (from
    ``provider``) carries. Beyond Roadie's 256-byte tag limit the identifier
    is replaced by its SHA-256, the same way on every path."""
    tag = f"nowplaying:{data_type}:{identifier}"
    if len(tag.encode()) + len((provider or "").encode()) + 1 > _TAG_LIMIT:
        tag = f"nowplaying:{data_type}:sha256:{hashlib.sha256(identifier.encode()).hexdigest()}"
    return tag if provider is None else f"{tag}@{provider}"


def _tags(data_type: str, identifier: str, provider: str) -> list[str]:
    return [lookup_tag(data_type, identifier), lookup_tag(data_type, identifier, provider)]


def encode(value: Any, mime_type: str | None) -> tuple[bytes, str, str]:
    """``value`` as bytes, its media type and its encoding name."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), mime_type or "application/octet-stream", "bytes"
    if isinstance(value, str):
        return value.encode(), mime_type or "text/plain; charset=utf-8", "text"
    return json.dumps(value, separators=(",", ":")).encode(), mime_type or "application/json", "json"


def decode(entry: Entry) -> Any:
    """An entry's value as the original returned it: what ``store`` was
    given, or, for fetched entries, JSON parsed, text as str, else bytes."""
    encoding = entry.metadata.get(_ENCODING)
    media = entry.media_type.split(";")[0].strip().lower()
    if encoding is None:
        if media == "application/json" or media.endswith("+json"):
            encoding = "json"
        elif media.startswith("text/"):
            encoding = "text"
    try:
        if encoding == "json":
            return json.loads(entry.value)
        if encoding == "text":
            return entry.value.decode()
    except ValueError:
        pass
    return entry.value


@dataclass(frozen=True)
class CachedEntry:
    """An entry as the original's storage returned it."""

    data: Any
    metadata: dict[str, Any]
    status_code: int
    mime_type: str
    url: str
    provider: str = ""
    created_at: datetime | None = None
    expires_at: datetime | None = None
    tags: tuple[str, ...] = field(default=())

    @staticmethod
    def of(entry: Entry) -> CachedEntry:
        try:
            metadata = json.loads(entry.metadata.get(_METADATA, "{}"))
        except ValueError:
            metadata = {}
        status = entry.metadata.get(_STATUS, "")
        provenance = entry.provenance
        if status.isdigit():
            status_code = int(status)
        elif provenance is not None and provenance.upstream_status:
            status_code = provenance.upstream_status
        else:
            status_code = 404 if entry.status == EntryStatus.NEGATIVE else 200
        provider = entry.metadata.get(_PROVIDER) or (provenance.provider if provenance else "")
        return CachedEntry(
            data=decode(entry),
            metadata=metadata if isinstance(metadata, dict) else {},
            status_code=status_code,
            mime_type=entry.media_type,
            url=entry.key,
            provider=provider,
            created_at=entry.created_at,
            expires_at=entry.expires_at,
            tags=entry.tags,
        )


def _live(entry: Entry, now: datetime) -> bool:
    """Not expired: the original never returns an expired entry."""
    if entry.status == EntryStatus.STALE:
        return False
    return entry.expires_at is None or entry.expires_at > now


def _fetched(result: FetchResult) -> tuple[Any, dict[str, Any]] | None:
    """A fetch's answer as the original's providers returned it:
    ``(data, metadata)``, or None when nothing usable came back in time."""
    if result.entry is None or result.status == LookupStatus.NEGATIVE:
        return None
    cached = CachedEntry.of(result.entry)
    return cached.data, {"url": cached.url, "mime_type": cached.mime_type, "status_code": cached.status_code}


class _Connected:
    """An AsyncClient made on first use, inside the caller's event loop."""

    def __init__(self, target: str | AsyncClient, options: Mapping[str, Any]) -> None:
        self._target = target
        self._options = dict(options)
        self._client = target if isinstance(target, AsyncClient) else None
        self._owned = not isinstance(target, AsyncClient)

    @property
    def client(self) -> AsyncClient:
        if self._client is None:
            assert isinstance(self._target, str)
            self._client = AsyncClient(self._target, **self._options)
        return self._client

    async def initialize(self) -> None:
        """Connects lazily; kept for the original's call sequence."""
        _ = self.client

    async def close(self) -> None:
        global _providers
        if self._client is not None and self._owned:
            await self._client.close()
            self._client = None
        if _providers is self:
            _providers = None


_providers: DataCacheProviders | None = None


class DataStorage(_Connected):
    """The original's URL-keyed storage, on Roadie. ``target`` is a Roadie
    address or an ``AsyncClient``; other keyword arguments go to the
    ``AsyncClient`` (``token``, ``degrade=True``, ...)."""

    def __init__(self, target: str | AsyncClient = DEFAULT_TARGET, *, policy: str = DEFAULT_POLICY, **options: Any) -> None:
        super().__init__(target, options)
        self.policy = policy

    async def store(
        self,
        url: str,
        identifier: str,
        data_type: str,
        provider: str,
        data_value: Any,
        ttl_seconds: int | None,
        metadata: dict[str, Any] | None = None,
        status_code: int = 200,
        mime_type: str | None = None,
    ) -> bool:
        """Stores ``data_value`` (bytes, str or anything JSON) under ``url``,
        replacing what was there. False when Roadie refused or could not be
        reached (the reason is logged)."""
        value, media_type, encoding = encode(data_value, mime_type)
        stored_metadata = {
            _ENCODING: encoding,
            _STATUS: str(status_code),
            _PROVIDER: provider,
            _METADATA: json.dumps(metadata or {}, separators=(",", ":"), default=str),
        }
        try:
            result = await self.client.put(
                url,
                value,
                media_type=media_type,
                policy=self.policy,
                tags=_tags(data_type, identifier, provider),
                metadata=stored_metadata,
                ttl=ttl_seconds if ttl_seconds is not None and ttl_seconds > 0 else None,
                negative=status_code != 200,
            )
        except RoadieError as error:
            log.warning("store of %s refused: %s", url[:128], error)
            return False
        return result.written

    async def retrieve_by_url(self, url: str) -> CachedEntry | None:
        """The unexpired entry stored under ``url``, or None."""
        lookup = await self.client.get(url)
        if lookup.entry is None or lookup.status not in (LookupStatus.HIT, LookupStatus.NEGATIVE):
            return None
        return CachedEntry.of(lookup.entry)

    async def retrieve_by_identifier(
        self, identifier: str, data_type: str, provider: str | None = None, random: bool = False
    ) -> list[CachedEntry] | CachedEntry | None:
        """Every unexpired entry for ``identifier`` and ``data_type``
        (optionally from ``provider``), in URL order; with ``random=True``
        one random entry of status 200, or None."""
        tag = lookup_tag(data_type, identifier, provider)
        if random:
            entry = await self.client.get_random(tag)
            return CachedEntry.of(entry) if entry is not None else None
        now = datetime.now(timezone.utc)
        return [CachedEntry.of(e) async for e in self.client.list_entries(tag=tag) if _live(e, now)]

    async def delete_by_url(self, url: str) -> bool:
        """Deletes the entry under ``url``; whether there was one."""
        return (await self.client.delete(url)).deleted


class ImageProvider:
    """Artist images: fetched by Roadie's worker, chosen at random."""

    def __init__(self, owner: DataCacheProviders) -> None:
        self._owner = owner

    async def _cache(
        self, image_type: str, url: str, artist_identifier: str, provider: str, immediate: bool
    ) -> tuple[Any, dict[str, Any]] | None:
        owner = self._owner
        result = await owner.client.fetch(
            owner.image_provider,
            url,
            wait=immediate,
            policy=owner.image_policy,
            tags=_tags(image_type, artist_identifier, provider),
        )
        return _fetched(result)

    async def cache_artist_thumbnail(
        self, url: str, artist_identifier: str, provider: str, immediate: bool = True, metadata: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]] | None:
        """Fetches (``immediate``: waits for) an artist thumbnail; its
        ``(data, metadata)`` when it came back in time, else None.
        ``metadata`` is accepted as the original's, and not stored: a fetch
        stores the upstream's answer and its provenance."""
        return await self._cache("thumbnail", url, artist_identifier, provider, immediate)

    async def cache_artist_logo(
        self, url: str, artist_identifier: str, provider: str, immediate: bool = True, metadata: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]] | None:
        """As ``cache_artist_thumbnail``, for a logo."""
        return await self._cache("logo", url, artist_identifier, provider, immediate)

    async def cache_artist_banner(
        self, url: str, artist_identifier: str, provider: str, immediate: bool = True, metadata: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]] | None:
        """As ``cache_artist_thumbnail``, for a banner."""
        return await self._cache("banner", url, artist_identifier, provider, immediate)

    async def cache_artist_fanart(
        self, url: str, artist_identifier: str, provider: str, immediate: bool = True, metadata: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]] | None:
        """As ``cache_artist_thumbnail``, for fan art."""
        return await self._cache("fanart", url, artist_identifier, provider, immediate)

    async def get_random_image(
        self, artist_identifier: str, image_type: str, provider: str | None = None
    ) -> tuple[Any, dict[str, Any], str] | None:
        """A random cached image of this artist and type (status 200 only):
        ``(data, metadata, url)``, or None."""
        entry = await self._owner.client.get_random(lookup_tag(image_type, artist_identifier, provider))
        if entry is None:
            return None
        cached = CachedEntry.of(entry)
        return cached.data, cached.metadata, cached.url

    async def random_image_bytes(
        self, artist_identifier: str, image_type: str, provider: str | None = None
    ) -> bytes | None:
        """A random image's bytes, or None."""
        found = await self.get_random_image(artist_identifier, image_type, provider)
        return found[0] if found is not None and isinstance(found[0], bytes) else None

    async def fill_queue(
        self, identifier: str, imagetype: str, srclocationlist: list[str], provider: str, maxcount: int | None = None
    ) -> int:
        """Queues background fetches of image URLs in one call; how many are
        queued or were already queued (cached URLs count 0)."""
        urls = srclocationlist[:maxcount] if maxcount is not None else srclocationlist
        if not urls:
            return 0
        owner = self._owner
        tags = tuple(_tags(imagetype, identifier, provider))
        items = [BatchFetchItem(owner.image_provider, url, owner.image_policy, tags) for url in urls]
        results = await owner.client.batch_fetch(items)
        for url, result in zip(urls, results):
            if result.error is not None:
                log.warning("image %s not queued: %s", url[:128], result.error.message)
        return sum(1 for r in results if r.job is not None)

    async def get_cache_keys_for_identifier(
        self, artist_identifier: str, image_type: str, provider: str | None = None
    ) -> list[str]:
        """The URLs cached for this artist and image type."""
        tag = lookup_tag(image_type, artist_identifier, provider)
        now = datetime.now(timezone.utc)
        return [e.key async for e in self._owner.client.list_entries(tag=tag, without_values=True) if _live(e, now)]


class MusicBrainzProvider:
    """MusicBrainz lookups through Roadie's ``musicbrainz`` provider (its
    rate limit holds across every worker)."""

    def __init__(self, owner: DataCacheProviders) -> None:
        self._owner = owner

    async def _fetch(
        self, path: str, identifier: str, data_type: str, immediate: bool
    ) -> tuple[Any, dict[str, Any]] | None:
        owner = self._owner
        result = await owner.client.fetch(
            "musicbrainz", path, wait=immediate, policy=owner.policy, tags=_tags(data_type, identifier, "musicbrainz")
        )
        return _fetched(result)

    async def search_artists(self, query: str, limit: int = 10, immediate: bool = True) -> tuple[Any, dict[str, Any]] | None:
        """Artists matching ``query``: ``(results, metadata)`` or None."""
        path = "artist?" + urlencode({"query": query, "fmt": "json", "limit": str(limit)})
        return await self._fetch(path, f"search_{query}".replace(" ", "_").lower(), "artist_search", immediate)

    async def search_recordings(self, query: str, limit: int = 10, immediate: bool = True) -> tuple[Any, dict[str, Any]] | None:
        """Recordings matching ``query``: ``(results, metadata)`` or None."""
        path = "recording?" + urlencode({"query": query, "fmt": "json", "limit": str(limit)})
        identifier = f"recording_search_{query}".replace(" ", "_").lower()
        return await self._fetch(path, identifier, "recording_search", immediate)

    async def get_artist(
        self, artist_id: str, includes: list[str] | None = None, immediate: bool = True
    ) -> tuple[Any, dict[str, Any]] | None:
        """An artist by MusicBrainz id: ``(artist, metadata)`` or None."""
        params = {"fmt": "json"} | ({"inc": "+".join(includes)} if includes else {})
        return await self._fetch(f"artist/{artist_id}?" + urlencode(params), artist_id, "artist_details", immediate)


class DataCacheProviders(_Connected):
    """``musicbrainz`` and ``images`` on one Roadie connection."""

    def __init__(
        self,
        target: str | AsyncClient = DEFAULT_TARGET,
        *,
        policy: str = DEFAULT_POLICY,
        image_policy: str = DEFAULT_POLICY,
        image_provider: str = DEFAULT_IMAGE_PROVIDER,
        **options: Any,
    ) -> None:
        super().__init__(target, options)
        self.policy = policy
        self.image_policy = image_policy
        self.image_provider = image_provider
        self.musicbrainz = MusicBrainzProvider(self)
        self.images = ImageProvider(self)


def get_providers(target: str | AsyncClient = DEFAULT_TARGET, **options: Any) -> DataCacheProviders:
    """The process's providers, made on the first call (as the original's);
    ``close()`` forgets them, so the next call connects anew."""
    global _providers
    if _providers is None:
        _providers = DataCacheProviders(target, **options)
    return _providers
