"""roadie.AsyncClient against a real server and worker, on both backends."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

import roadie
from roadie import ChangeKind, LookupStatus

from conftest import Roadie, image_bytes


def test_async_reads_writes_and_errors(server: Roadie) -> None:
    async def scenario() -> None:
        async with roadie.AsyncClient(server.address) as client:
            assert (await client.put("a/1", b"one", tags=["t"])).written
            lookup = await client.get("a/1")
            assert lookup.status == LookupStatus.HIT and lookup.entry is not None and lookup.entry.value == b"one"
            results = await client.batch_get(["a/absent", "a/1"])
            assert [r.status for r in results] == [LookupStatus.MISS, LookupStatus.HIT]
            with pytest.raises(roadie.InvalidArgument) as caught:
                await client.put("a/2", b"v", policy="nope")
            assert caught.value.field == "policy"
            for i in range(5):
                await client.put(f"a/list/{i}", b"v")
            keys = [e.key async for e in client.list_entries(key_prefix="a/list/", page_size=2)]
            assert keys == [f"a/list/{i}" for i in range(5)]
            assert (await client.invalidate(key_prefix="a/list/")).count == 5
            assert (await client.stats()).policies["generic"].entries == 1

    asyncio.run(scenario())


def test_async_fetch_and_watch(server: Roadie) -> None:
    before = server.upstream.hits["/img/aio/x.jpg"]

    async def scenario() -> None:
        async with roadie.AsyncClient(server.address) as client:
            start = (await client.stats()).revision
            watcher = client.watch(after_revision=start, key_prefix="http", kinds=[ChangeKind.FETCH])
            # Many callers at once, one upstream request per URL.
            results = await asyncio.gather(*(client.fetch("images", "aio/x.jpg", timeout=20) for _ in range(5)))
            assert {r.entry.value for r in results if r.entry} == {image_bytes("/img/aio/x.jpg")}
            change = await asyncio.wait_for(watcher.__anext__(), 20)
            assert change.kind == ChangeKind.FETCH and change.key.endswith("/img/aio/x.jpg")
            assert change.provider == "images" and watcher.revision == change.revision
            watcher.close()
            assert [c async for c in watcher] == []
        assert server.upstream.hits["/img/aio/x.jpg"] == before + 1

    asyncio.run(scenario())


def test_async_snapshots(server: Roadie) -> None:
    async def scenario() -> None:
        mtime = datetime(2026, 6, 1, tzinfo=timezone.utc)
        async with roadie.AsyncClient(server.address) as client:
            info = await client.put_snapshot("s", [{"id": i} for i in range(10)], library_mtime=mtime)
            assert info.tracks == 10
            merged = await client.merge_snapshot("s", [{"id": 3, "x": 1}], ["0"], library_mtime=mtime)
            assert merged.tracks == 9
            snapshot = await client.get_snapshot("s", library_mtime=mtime)
            assert [t.data()["id"] for t in snapshot.tracks] == list(range(1, 10))
            assert snapshot.tracks[2].data() == {"id": 3, "x": 1}
            assert (await client.get_snapshot_info("s")).revision == merged.revision
            await client.delete_snapshot("s")
            with pytest.raises(roadie.NotFound):
                await client.get_snapshot("s")

    asyncio.run(scenario())


def test_async_degradation(server: Roadie) -> None:
    async def scenario() -> None:
        async with roadie.AsyncClient(server.address, degrade=True) as client:
            assert (await client.put("d/1", b"v")).written
            server.stop_server()
            assert await client.get("d/1") == roadie.Lookup.miss()
            assert (await client.put("d/2", b"v")).dropped
            assert (await client.fetch("images", "d.jpg")).status == LookupStatus.MISS
            assert (client.degraded_reads, client.dropped_writes) == (2, 1)
            server.start_server()
            for _ in range(100):
                if (await client.get("d/1")).found:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("no hit after the server came back")

    asyncio.run(scenario())
