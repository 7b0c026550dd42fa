"""roadie.compat.nowplaying: the behaviours whats-now-playing's datacache
documents (storage, random images, providers), on Roadie, both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import roadie
from roadie.compat import nowplaying
from roadie.compat.nowplaying import CachedEntry, DataCacheProviders, DataStorage

from conftest import Roadie, image_bytes

T = TypeVar("T")


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(scenario())  # type: ignore[arg-type]


async def poll(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := await check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.05)
    return found


def test_storage_round_trips_json_text_and_bytes(server: Roadie) -> None:
    async def scenario() -> None:
        storage = DataStorage(server.address)
        await storage.initialize()
        values: list[tuple[str, Any, str | None]] = [
            ("https://api.example/a.json", {"bio": "x", "n": [1, 2]}, None),
            ("https://api.example/b.txt", "plain text", None),
            ("https://img.example/c.jpg", b"\xff\xd8binary", "image/jpeg"),
        ]
        for url, value, mime in values:
            assert await storage.store(url, "daft_punk", "bio", "theaudiodb", value, 3600, {"lang": "en"}, 200, mime)
        for url, value, mime in values:
            entry = await storage.retrieve_by_url(url)
            assert isinstance(entry, CachedEntry)
            assert (entry.data, entry.metadata, entry.status_code, entry.url) == (value, {"lang": "en"}, 200, url)
            assert entry.provider == "theaudiodb"
        assert (await storage.retrieve_by_url("https://img.example/c.jpg")).mime_type == "image/jpeg"  # type: ignore[union-attr]
        assert await storage.retrieve_by_url("https://api.example/absent") is None
        await storage.close()

    run(scenario)


def test_storing_a_url_again_replaces_it(server: Roadie) -> None:
    async def scenario() -> None:
        storage = DataStorage(server.address)
        url = "https://api.example/replace"
        assert await storage.store(url, "artist", "bio", "p1", {"v": 1}, 3600)
        assert await storage.store(url, "artist", "bio", "p2", {"v": 2}, 3600, status_code=200)
        entry = await storage.retrieve_by_url(url)
        assert entry is not None and entry.data == {"v": 2} and entry.provider == "p2"
        # Replaced, not added: one entry for the identifier, under the new provider only.
        listed = await storage.retrieve_by_identifier("artist", "bio")
        assert isinstance(listed, list) and [e.url for e in listed] == [url]
        assert await storage.retrieve_by_identifier("artist", "bio", provider="p1") == []
        await storage.close()

    run(scenario)


def test_many_images_per_artist_random_choice_and_status_filter(server: Roadie) -> None:
    async def scenario() -> None:
        storage = DataStorage(server.address)
        good = {f"https://img.example/dp/{i}.jpg" for i in range(4)}
        for i, url in enumerate(sorted(good)):
            provider = "theaudiodb" if i % 2 == 0 else "fanarttv"
            await storage.store(url, "daft_punk", "thumbnail", provider, image_bytes(url), 3600, mime_type="image/jpeg")
        await storage.store("https://img.example/dp/gone.jpg", "daft_punk", "thumbnail", "theaudiodb", b"", 3600, status_code=404)
        await storage.store("https://img.example/other.jpg", "justice", "thumbnail", "theaudiodb", b"x", 3600)
        await storage.store("https://img.example/dp/logo.jpg", "daft_punk", "logo", "theaudiodb", b"x", 3600)

        listed = await storage.retrieve_by_identifier("daft_punk", "thumbnail")
        assert isinstance(listed, list)
        assert {e.url for e in listed} == good | {"https://img.example/dp/gone.jpg"}
        assert {e.status_code for e in listed} == {200, 404}
        picked = set()
        for _ in range(40):
            one = await storage.retrieve_by_identifier("daft_punk", "thumbnail", random=True)
            assert isinstance(one, CachedEntry) and one.status_code == 200
            assert one.data == image_bytes(one.url)
            picked.add(one.url)
        assert picked <= good and len(picked) > 1
        # The provider filter.
        fanart = await storage.retrieve_by_identifier("daft_punk", "thumbnail", provider="fanarttv")
        assert isinstance(fanart, list) and {e.provider for e in fanart} == {"fanarttv"} and len(fanart) == 2
        one = await storage.retrieve_by_identifier("daft_punk", "thumbnail", provider="fanarttv", random=True)
        assert isinstance(one, CachedEntry) and one.provider == "fanarttv"
        assert await storage.retrieve_by_identifier("nobody", "thumbnail", random=True) is None
        await storage.close()

    run(scenario)


def test_expired_entries_are_not_returned(server: Roadie) -> None:
    async def scenario() -> None:
        storage = DataStorage(server.address)
        await storage.store("https://api.example/short", "a", "bio", "p", {"v": 1}, 1)
        await storage.store("https://api.example/long", "a", "bio", "p", {"v": 2}, 3600)
        assert await storage.retrieve_by_url("https://api.example/short") is not None

        async def expired() -> bool:
            return await storage.retrieve_by_url("https://api.example/short") is None

        await poll(expired, "the 1 s entry expires")
        listed = await storage.retrieve_by_identifier("a", "bio")
        assert isinstance(listed, list) and [e.url for e in listed] == ["https://api.example/long"]
        assert await storage.retrieve_by_identifier("a", "bio", random=True) is not None
        await storage.close()

    run(scenario)


def test_images_provider_immediate_background_random_and_queue(server: Roadie) -> None:
    base = server.upstream.base

    async def scenario() -> None:
        providers = DataCacheProviders(server.address)
        await providers.initialize()
        images = providers.images
        url = f"{base}/img/np/thumb1.jpg"
        got = await images.cache_artist_thumbnail(url, "daft_punk", "theaudiodb", immediate=True)
        assert got is not None and got[0] == image_bytes("/img/np/thumb1.jpg")
        assert got[1]["status_code"] == 200
        # Background: queued, answered later by the worker.
        url2 = f"{base}/img/np/thumb2.jpg"
        assert await images.cache_artist_thumbnail(url2, "daft_punk", "fanarttv", immediate=False) is None

        async def both_cached() -> bool:
            return len(await images.get_cache_keys_for_identifier("daft_punk", "thumbnail")) == 2

        await poll(both_cached, "the background image is fetched")
        assert await images.get_cache_keys_for_identifier("daft_punk", "thumbnail", provider="fanarttv") == [url2]
        picked = {(await images.get_random_image("daft_punk", "thumbnail"))[2] for _ in range(30)}  # type: ignore[index]
        assert picked == {url, url2}
        data, _metadata, chosen = await images.get_random_image("daft_punk", "thumbnail", "fanarttv")  # type: ignore[misc]
        assert (data, chosen) == (image_bytes("/img/np/thumb2.jpg"), url2)
        assert await images.random_image_bytes("daft_punk", "thumbnail", "theaudiodb") == image_bytes("/img/np/thumb1.jpg")
        # Other kinds, a 404 (never picked), and a queue of many.
        assert await images.cache_artist_logo(f"{base}/img/np/logo.jpg", "daft_punk", "theaudiodb") is not None
        assert await images.cache_artist_banner(f"{base}/img/missing/banner.jpg", "daft_punk", "theaudiodb") is None
        assert await images.get_random_image("daft_punk", "banner") is None
        queued = await images.fill_queue(
            "justice", "fanart", [f"{base}/img/np/f{i}.jpg" for i in range(5)] + [url], "fanarttv", maxcount=5
        )
        assert queued == 5

        async def fanart_cached() -> bool:
            return len(await images.get_cache_keys_for_identifier("justice", "fanart")) == 5

        await poll(fanart_cached, "the queued fan art is fetched")
        assert await images.cache_artist_fanart(f"{base}/img/np/f0.jpg", "justice", "fanarttv") is not None
        await providers.close()

    run(scenario)


def test_musicbrainz_search_is_fetched_once_and_then_cached(server: Roadie) -> None:
    async def scenario() -> None:
        providers = nowplaying.get_providers(server.address)
        assert nowplaying.get_providers() is providers
        found = await providers.musicbrainz.search_artists("Daft Punk", limit=5)
        assert found is not None and found[0]["artists"][0]["name"] == "Daft Punk"
        hits = server.upstream.hits["/ws/2/artist"]
        again = await providers.musicbrainz.search_artists("Daft Punk", limit=5)
        assert again is not None and again[0] == found[0]
        assert server.upstream.hits["/ws/2/artist"] == hits
        await providers.close()
        assert nowplaying.get_providers(server.address) is not providers
        await nowplaying.get_providers().close()

    run(scenario)


def test_degraded_storage_never_blocks_live_operations(server: Roadie) -> None:
    async def scenario() -> None:
        storage = DataStorage(server.address, degrade=True)
        assert await storage.store("https://api.example/d", "a", "bio", "p", {"v": 1}, 3600)
        server.stop_server()
        started = time.monotonic()
        assert await storage.retrieve_by_url("https://api.example/d") is None
        assert not await storage.store("https://api.example/e", "a", "bio", "p", {"v": 1}, 3600)
        assert await storage.retrieve_by_identifier("a", "bio", random=True) is None
        assert time.monotonic() - started < 2.0
        assert isinstance(storage.client, roadie.AsyncClient) and storage.client.dropped_writes == 1
        await storage.close()

    run(scenario)
