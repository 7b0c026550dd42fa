"""roadie.compat.genreupdater: the behaviours the library tagger's cache
documents (album years, API results, generic cache, invalidation, the
library snapshot), on Roadie, both backends."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest

import roadie
from roadie.compat import genreupdater
from roadie.compat.genreupdater import CacheOrchestrator

from conftest import Roadie, Upstream, start_roadie

T = TypeVar("T")
TEN_YEARS = 10 * 365 * 24 * 3600


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


@pytest.fixture
def cache(server: Roadie) -> Iterator[CacheOrchestrator]:
    orchestrator = CacheOrchestrator(server.address)
    yield orchestrator
    asyncio.run(orchestrator.shutdown())


def test_album_years_keep_the_higher_confidence(cache: CacheOrchestrator) -> None:
    async def scenario() -> None:
        await cache.initialize()
        assert await cache.get_album_year("Daft Punk", "Discovery") is None
        await cache.store_album_year("Daft Punk", "Discovery", "2001", confidence=95)
        # A later API answer of lower confidence never replaces it...
        await cache.store_album_year("Daft Punk", "Discovery", "2000", confidence=60)
        entry = await cache.get_album_year_entry_from_cache("Daft Punk", "Discovery")
        assert entry is not None and (entry.year, entry.confidence) == ("2001", 95)
        assert (entry.artist, entry.album) == ("Daft Punk", "Discovery") and entry.timestamp > 0
        # ...one of equal or higher confidence does.
        await cache.store_album_year_in_cache("Daft Punk", "Discovery", "2001", confidence=100)
        assert (await cache.get_album_year_entry_from_cache("Daft Punk", "Discovery")).confidence == 100  # type: ignore[union-attr]
        # Names are normalised the same way on every path.
        assert await cache.get_album_year("  daft   PUNK ", "discovery") == "2001"
        assert await cache.get_album_year_from_cache("Ｄａｆｔ Punk", "DISCOVERY") == "2001"
        await cache.invalidate_album_cache("daft punk", "discovery")
        assert await cache.get_album_year("Daft Punk", "Discovery") is None

    run(scenario)


def test_keys_are_stable_across_processes() -> None:
    here = genreupdater.album_key("AC/DC", "Back in Black")
    code = "from roadie.compat import genreupdater as g; print(g.album_key('AC/DC', 'Back in Black'))"
    # A new interpreter with another hash seed computes the same key.
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "12345"}
    )
    assert other.stdout.strip() == here
    # A slash inside a name cannot make two albums collide.
    assert genreupdater.album_key("AC", "DC/Back in Black") != here
    assert CacheOrchestrator.generate_album_key("ac/dc", "back in black") == here


def test_api_results_positive_and_negative(cache: CacheOrchestrator) -> None:
    async def scenario() -> None:
        await cache.set_cached_api_result("Justice", "Cross", "musicbrainz", "2007", metadata={"mbid": "x1"})
        await cache.set_cached_api_result("Justice", "Cross", "discogs", None)
        await cache.set_cached_api_result("Justice", "Cross", "lastfm", "2008", is_negative=True)
        good = await cache.get_cached_api_result("justice", "cross", "musicbrainz")
        assert good is not None and (good.year, good.source, good.metadata) == ("2007", "musicbrainz", {"mbid": "x1"})
        assert good.api_response is not None and good.api_response["year"] == "2007"
        assert good.ttl is not None and good.ttl >= TEN_YEARS - 60
        for source in ("discogs", "lastfm"):
            failed = await cache.get_cached_api_result("Justice", "Cross", source)
            assert failed is not None and failed.year is None and failed.api_response is None
            # Failures live under the failed-lookup lifetime (one hour by default).
            assert failed.ttl == 3600
        assert await cache.get_cached_api_result("Justice", "Cross", "wikimedia") is None

    run(scenario)


def test_generic_cache_get_set_compute_and_all(cache: CacheOrchestrator) -> None:
    cache.set("tracks_Daft Punk", [{"id": "1"}])
    cache.set(("tuple", 1), {"k": "v"}, ttl=60)
    assert cache.get("tracks_Daft Punk") == [{"id": "1"}]
    assert cache.get(("tuple", 1)) == {"k": "v"}
    assert cache.get("absent") is None
    calls: list[int] = []

    async def compute() -> dict[str, int]:
        calls.append(1)
        return {"computed": 1}

    async def scenario() -> None:
        assert await cache.get_async("lazy", compute) == {"computed": 1}
        assert await cache.get_async("lazy", compute) == {"computed": 1}
        assert calls == [1]
        await cache.set_async("async", [1, 2])
        everything = await cache.get_async("ALL")
        assert sorted(map(str, everything)) == sorted(map(str, [[{"id": "1"}], {"k": "v"}, {"computed": 1}, [1, 2]]))

    run(scenario)
    assert len(cache.get("ALL")) == 4
    cache.invalidate("lazy")
    assert cache.get("lazy") is None


def test_a_modified_track_invalidates_its_album_and_nothing_else(server: Roadie, cache: CacheOrchestrator) -> None:
    async def scenario() -> None:
        await cache.store_album_year("Daft Punk", "Discovery", "2001", 95)
        await cache.store_album_year("Daft Punk", "Homework", "1997", 95)
        await cache.set_cached_api_result("Daft Punk", "Discovery", "musicbrainz", "2001")
        await cache.set_cached_api_result("Daft Punk", "Discovery", "discogs", None)
        await cache.set_cached_api_result("Daft Punk", "Homework", "musicbrainz", "1997")
        cache.set("tracks_all", [1])
        cache.set("tracks_Daft Punk", [1])
        cache.set("unrelated", [1])
        # Track metadata another client cached for the track: the server's rule drops it.
        async with roadie.AsyncClient(server.address) as other:
            await other.put("track/42", b"{}", policy="track_metadata", tags=["track:42"])
            await cache.invalidate_for_track({"id": "42", "artist": "Daft Punk", "album": "Discovery"})
            assert not (await other.get("track/42")).found
        assert await cache.get_album_year("Daft Punk", "Discovery") is None
        assert await cache.get_cached_api_result("Daft Punk", "Discovery", "musicbrainz") is None
        assert await cache.get_cached_api_result("Daft Punk", "Discovery", "discogs") is None
        assert await cache.get_album_year("Daft Punk", "Homework") == "1997"
        assert await cache.get_cached_api_result("Daft Punk", "Homework", "musicbrainz") is not None
        assert cache.get("tracks_all") is None and cache.get("tracks_Daft Punk") is None
        assert cache.get("unrelated") == [1]

    run(scenario)


def test_invalidate_all_and_clear_touch_only_this_cache(server: Roadie, cache: CacheOrchestrator) -> None:
    async def scenario() -> None:
        async with roadie.AsyncClient(server.address) as other:
            await other.put("someone/else", b"v")
            await cache.store_album_year("A", "B", "1999")
            await cache.set_cached_api_result("A", "B", "musicbrainz", "1999")
            await cache.set_async("g", 1)
            await cache.invalidate_all_albums()
            assert await cache.get_album_year("A", "B") is None
            assert await cache.get_cached_api_result("A", "B", "musicbrainz") is not None
            await cache.invalidate_all()
            assert await cache.get_cached_api_result("A", "B", "musicbrainz") is None
            assert await cache.get_async("g") is None
            await cache.set_async("g", 1)
            await cache.clear()
            assert await cache.get_async("g") is None
            assert (await other.get("someone/else")).found

    run(scenario)


def test_merge_tracks_keeps_order(cache: CacheOrchestrator) -> None:
    existing = [{"id": "1", "v": 1}, {"id": "2", "v": 1}, {"id": "3", "v": 1}]
    merged = CacheOrchestrator.merge_tracks(existing, [{"id": "2", "v": 2}, {"id": "4", "v": 1}, {"id": "5", "v": 1}])
    assert merged == [{"id": "1", "v": 1}, {"id": "2", "v": 2}, {"id": "3", "v": 1}, {"id": "4", "v": 1}, {"id": "5", "v": 1}]


def test_snapshot_validity_and_delta_merge(backend: str, tmp_path: Path, upstream: Upstream) -> None:
    library = {"mtime": datetime(2026, 3, 1, tzinfo=timezone.utc)}
    for instance in start_roadie(backend, tmp_path, upstream, {"ROADIE__SNAPSHOTS__MAX_AGE": "2s"}):
        cache = CacheOrchestrator(instance.address, library_mtime=lambda: library["mtime"])

        async def scenario() -> None:
            assert await cache.load_snapshot() is None
            captured = library["mtime"]  # before the library is read
            tracks = [{"id": str(i), "name": f"t{i}"} for i in range(1000)]
            await cache.update_snapshot(tracks, processed_track_ids=["0"], library_mtime_override=captured)
            # Valid at any age while the library has not changed.
            assert await cache.load_snapshot() == tracks
            await cache.merge_snapshot([{"id": "5", "name": "new five"}, {"id": "new"}], removed_ids=["0"])
            loaded = await cache.load_snapshot()
            assert loaded is not None and len(loaded) == 1000
            assert loaded[0]["id"] == "1" and loaded[4] == {"id": "5", "name": "new five"} and loaded[-1] == {"id": "new"}
            assert loaded == CacheOrchestrator.merge_tracks([t for t in tracks if t["id"] != "0"], [loaded[4], loaded[-1]])
            info = await cache.client.get_snapshot_info(cache.snapshot_name)
            assert info.processed_ids == ("5", "new")
            # The library changed: valid only while younger than max_age (2 s here).
            library["mtime"] = captured + timedelta(hours=1)
            deadline = time.monotonic() + 20
            while await cache.load_snapshot() is not None:
                assert time.monotonic() < deadline, "the snapshot never went stale"
                await asyncio.sleep(0.1)
            await cache.shutdown()

        run(scenario)
