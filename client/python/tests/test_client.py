"""roadie.Client against a real server and worker, on both backends."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest

import roadie
from roadie import ChangeKind, EntryStatus, EventKind, JobState, LookupStatus, PutOutcome

from conftest import Roadie, Upstream, image_bytes, start_roadie, wait_until


def test_put_then_get_round_trips_every_field(client: roadie.Client) -> None:
    written = client.put(
        "rt/1",
        b'{"a":1}',
        media_type="application/json",
        policy="api_metadata",
        tags=["artist:daft punk", "album:daft punk/discovery"],
        confidence=70,
        fingerprint="fp-1",
        metadata={"source": "test"},
        ttl=timedelta(hours=1),
    )
    assert written.outcome == PutOutcome.WRITTEN and written.written and written.revision > 0
    lookup = client.get("rt/1")
    assert lookup.status == LookupStatus.HIT
    entry = lookup.entry
    assert entry is not None
    assert (entry.key, entry.value, entry.media_type, entry.policy) == ("rt/1", b'{"a":1}', "application/json", "api_metadata")
    assert set(entry.tags) == {"artist:daft punk", "album:daft punk/discovery"}
    assert (entry.confidence, entry.fingerprint, entry.metadata) == (70, "fp-1", {"source": "test"})
    assert entry.status == EntryStatus.FRESH and entry.revision == written.revision
    assert entry.json() == {"a": 1}
    assert entry.created_at is not None and entry.expires_at is not None
    assert timedelta(minutes=59) < entry.expires_at - entry.created_at <= timedelta(hours=1)
    # A read naming another fingerprint misses; an absent key is a miss, not an error.
    assert client.get("rt/1", fingerprint="fp-2").status == LookupStatus.MISS
    assert client.get("rt/absent") == roadie.Lookup(LookupStatus.MISS, None)


def test_batch_get_answers_in_request_order(client: roadie.Client) -> None:
    client.put("bg/a", b"A")
    client.put("bg/c", b"C")
    results = client.batch_get(["bg/c", "bg/b", "bg/a", "bg/c"])
    assert [r.entry.value if r.entry else None for r in results] == [b"C", None, b"A", b"C"]


def test_conditions_keep_their_meaning(client: roadie.Client) -> None:
    first = client.put("cond/1", b"v1", confidence=90)
    kept = client.put("cond/1", b"v2", confidence=50, keep_higher_confidence=True)
    assert (kept.outcome, kept.stored_confidence, kept.written) == (PutOutcome.KEPT_HIGHER_CONFIDENCE, 90, False)
    mismatch = client.put("cond/1", b"v3", if_revision=first.revision + 100)
    assert mismatch.outcome == PutOutcome.REVISION_MISMATCH and mismatch.revision == first.revision
    assert client.put("cond/new", b"x", if_revision=0).written
    assert client.put("cond/new", b"y", if_revision=0).outcome == PutOutcome.REVISION_MISMATCH
    deleted = client.delete("cond/1", if_revision=first.revision)
    assert deleted.deleted and deleted.revision > first.revision
    assert not client.delete("cond/1").deleted


def test_bad_input_is_a_typed_error_naming_the_field(client: roadie.Client) -> None:
    with pytest.raises(roadie.InvalidArgument) as caught:
        client.put("k" * 1025, b"v")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "key" and "1024" in (caught.value.description or "")
    with pytest.raises(roadie.InvalidArgument) as caught:
        client.put("bad/policy", b"v", policy="no_such_policy")
    assert caught.value.field == "policy"
    # Nothing was written by either.
    assert client.get("bad/policy").status == LookupStatus.MISS
    with pytest.raises(ValueError):
        client.invalidate(tag="a", policy="generic")
    with pytest.raises(TypeError):
        client.put("bad/type", "text")  # type: ignore[arg-type]


def test_invalidate_selects_by_tag_prefix_and_policy(client: roadie.Client) -> None:
    for i in range(3):
        client.put(f"inv/tagged/{i}", b"v", tags=["artist:x"])
    client.put("inv/other", b"v")
    assert client.invalidate(tag="artist:x").count == 3
    assert client.get("inv/other").found
    client.put("inv/p/1", b"v")
    client.put("inv/p/2", b"v")
    assert client.invalidate(key_prefix="inv/p/").count == 2
    assert client.invalidate(policy="generic").count == 1


def test_get_random_picks_among_live_tagged_entries(client: roadie.Client) -> None:
    for i in range(4):
        client.put(f"rand/{i}", f"{i}".encode(), tags=["artist:r"])
    client.put("rand/negative", b"", tags=["artist:r"], negative=True)
    seen = {client.get_random("artist:r").key for _ in range(40)}  # type: ignore[union-attr]
    assert seen <= {f"rand/{i}" for i in range(4)} and len(seen) > 1
    assert client.get_random("artist:nobody") is None


def test_fetch_waits_for_the_worker_and_then_hits(client: roadie.Client, upstream: Upstream) -> None:
    result = client.fetch("images", "a/b.jpg", tags=["nowplaying:thumbnail:x"], timeout=20)
    assert result.status == LookupStatus.HIT and result.entry is not None
    assert result.entry.value == image_bytes("/img/a/b.jpg")
    assert result.entry.provenance is not None and result.entry.provenance.provider == "images"
    assert result.entry.provenance.upstream_status == 200
    hits = upstream.hits["/img/a/b.jpg"]
    again = client.fetch("images", "a/b.jpg")
    assert again.status == LookupStatus.HIT and again.job is None
    assert upstream.hits["/img/a/b.jpg"] == hits
    missing = client.fetch("images", "missing/c.jpg", timeout=20)
    assert missing.status == LookupStatus.NEGATIVE


def test_background_fetch_and_the_jobs_service(client: roadie.Client, upstream: Upstream) -> None:
    queued = client.fetch("images", "bg/one.jpg", wait=False)
    assert queued.status == LookupStatus.MISS and queued.job is not None
    job = wait_until(
        lambda: (j := client.get_job(queued.job.id)).state == JobState.COMPLETED and j,
        "background job completes",
    )
    assert job.url.endswith("/img/bg/one.jpg") and job.provider == "images"
    page = client.list_jobs(state=JobState.COMPLETED, provider="images", page_size=10)
    assert job.id in {j.id for j in page.jobs}
    with pytest.raises(roadie.NotFound):
        client.get_job(10**12)
    assert client.get(job.url).status == LookupStatus.HIT


def test_batch_fetch_answers_each_item(client: roadie.Client, upstream: Upstream) -> None:
    client.fetch("images", "bf/cached.jpg", timeout=20)
    items = [
        roadie.BatchFetchItem("images", "bf/cached.jpg"),
        roadie.BatchFetchItem("images", "bf/new.jpg", tags=("t:1",)),
        roadie.BatchFetchItem("no_such_provider", "x"),
    ]
    # The upstream serves every test of the session: count from here.
    before = upstream.hits["/img/bf/new.jpg"]
    with upstream.holding("/img/bf/new.jpg"):
        cached, new, refused = client.batch_fetch(items)
        assert cached.status == LookupStatus.HIT and cached.job is None
        assert new.status == LookupStatus.MISS and new.job is not None
        assert refused.error is not None and refused.error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.error.field.endswith("provider")
        shared = client.batch_fetch([roadie.BatchFetchItem("images", "bf/new.jpg")])[0]
        assert shared.status == LookupStatus.MISS and shared.job is not None
        assert shared.job.id == new.job.id and shared.job_shared
    wait_until(lambda: client.get(new.job.url).status == LookupStatus.HIT, "the held fetch lands")
    assert upstream.hits["/img/bf/new.jpg"] == before + 1


def test_publish_event_invalidates_by_the_server_rules(client: roadie.Client) -> None:
    client.put("ev/api", b"{}", policy="api_metadata", tags=["album:a/b"])
    client.put("ev/track", b"{}", policy="track_metadata", tags=["track:42"])
    result = client.publish_event(EventKind.TRACK_MODIFIED, track_id="42", old_artist="a", old_album="b")
    assert result.count == 2 and not result.dropped
    assert {(a.policy, a.count) for a in result.applied if a.count} == {("api_metadata", 1), ("track_metadata", 1)}
    assert not client.get("ev/api").found and not client.get("ev/track").found


def test_list_entries_pages_in_key_order(client: roadie.Client) -> None:
    keys = [f"ls/{i:02}" for i in range(7)]
    for key in reversed(keys):
        client.put(key, key.encode(), tags=["ls"])
    page = client.list_entries_page(key_prefix="ls/", page_size=3)
    assert [e.key for e in page.entries] == keys[:3] and page.next_page_token and page.revision > 0
    listed = list(client.list_entries(key_prefix="ls/", page_size=3, without_values=True))
    assert [e.key for e in listed] == keys and all(e.value == b"" for e in listed)
    assert [e.key for e in client.list_entries(tag="ls")] == keys


def test_stats_counts_by_policy(client: roadie.Client) -> None:
    client.put("st/1", b"x" * 100)
    client.get("st/1")
    stats = client.stats()
    assert stats.backend in ("sqlite", "postgres")
    generic = stats.policies["generic"]
    assert generic.entries >= 1 and generic.bytes >= 100 and generic.hits >= 1
    assert "musicbrainz" in stats.providers and stats.revision >= 1


def test_watch_streams_changes_and_resumes_across_a_server_restart(server: Roadie) -> None:
    with roadie.Client(server.address) as writer, roadie.Client(server.address) as reader:
        writer.put("w/before", b"1")
        watcher = reader.watch(after_revision=0, key_prefix="w/", include_values=True)
        first = next(watcher)
        assert (first.kind, first.key) == (ChangeKind.PUT, "w/before")
        assert first.entry is not None and first.entry.value == b"1"
        # The server goes away and comes back on the same port and store;
        # the watcher resumes after the last revision it saw, missing nothing.
        server.stop_server()
        server.start_server()
        writer.put("w/after", b"2")
        writer.delete("w/before")
        second, third = next(watcher), next(watcher)
        assert (second.kind, second.key) == (ChangeKind.PUT, "w/after")
        assert (third.kind, third.key) == (ChangeKind.DELETE, "w/before")
        assert first.revision < second.revision < third.revision == watcher.revision
        watcher.close()
        assert list(watcher) == []


def test_watch_from_a_compacted_revision_raises_compacted(tmp_path: Path, upstream: Upstream) -> None:
    settings = {"ROADIE__WATCH__RETENTION_COUNT": "2", "ROADIE__MAINTENANCE__INTERVAL": "50ms"}
    for instance in start_roadie("sqlite", tmp_path, upstream, settings):
        with roadie.Client(instance.address) as client:
            for i in range(5):
                client.put(f"c/{i}", b"v")

            def compacted() -> roadie.Compacted | None:
                watcher = client.watch(after_revision=0)
                try:
                    next(watcher)
                except roadie.Compacted as error:
                    return error
                finally:
                    watcher.close()
                return None

            error = wait_until(compacted, "the change log is compacted")
            assert error.code == grpc.StatusCode.OUT_OF_RANGE and error.oldest_revision > 1
            resumed = client.watch(after_revision=error.oldest_revision - 1)
            assert next(resumed).revision == error.oldest_revision
            resumed.close()


def test_snapshots_write_read_merge_and_validity(client: roadie.Client) -> None:
    mtime = datetime(2026, 1, 1, tzinfo=timezone.utc)
    tracks = ({"id": f"t{i}", "n": i} for i in range(2500))  # a generator: streamed
    info = client.put_snapshot("lib", tracks, library_mtime=mtime, processed_ids=["t0"])
    assert (info.tracks, info.valid, info.processed_ids) == (2500, True, ("t0",))
    merged = client.merge_snapshot(
        "lib", [{"id": "t1", "n": "one"}, {"id": "new"}], removed_ids=["t0"], library_mtime=mtime
    )
    assert merged.tracks == 2500 and merged.revision > info.revision
    snapshot = client.get_snapshot("lib", library_mtime=mtime)
    ids = [t.id for t in snapshot.tracks]
    assert ids[0] == "t1" and ids[-1] == "new" and "t0" not in ids and len(ids) == 2500
    assert snapshot.tracks[0].data() == {"id": "t1", "n": "one"}
    # The library changed after the snapshot, and the snapshot is older than max_age.
    later = mtime + timedelta(days=1)
    stale = client.get_snapshot_info("lib", library_mtime=later, max_age=timedelta(seconds=0.001))
    assert not stale.valid and stale.validity
    assert client.get_snapshot("lib", library_mtime=later, max_age=0.001, only_if_valid=True).tracks == []
    assert client.get_snapshot_info("lib", library_mtime=later).valid  # younger than 24 h
    assert client.delete_snapshot("lib") > merged.revision
    with pytest.raises(roadie.NotFound):
        client.get_snapshot_info("lib")


def test_degraded_client_answers_misses_and_drops_writes_while_the_server_is_down(
    server: Roadie, caplog: pytest.LogCaptureFixture
) -> None:
    with roadie.Client(server.address, degrade=True, degrade_timeout=0.5) as client:
        assert client.put("dg/1", b"v").written
        server.stop_server()
        started = time.monotonic()
        assert client.get("dg/1") == roadie.Lookup(LookupStatus.MISS, None)
        assert client.batch_get(["dg/1", "dg/2"]) == [roadie.Lookup.miss(), roadie.Lookup.miss()]
        assert client.get_random("t") is None
        with caplog.at_level(logging.WARNING, logger="roadie"):
            dropped = client.put("dg/2", b"v")
        assert time.monotonic() - started < 3.0
        assert dropped.dropped and not dropped.written
        assert (client.degraded_reads, client.dropped_writes) == (3, 1)
        assert "dropped" in caplog.text
        # Calls that are not reads or writes still say the server is away.
        with pytest.raises(roadie.Unavailable):
            client.stats()
        # It reconnects by itself once the server is back.
        server.start_server()
        wait_until(lambda: client.get("dg/1").found, "reads hit again after the server came back")
        assert client.put("dg/3", b"v").written


def test_without_degrading_an_unreachable_server_is_unavailable() -> None:
    from conftest import free_port

    with roadie.Client(f"127.0.0.1:{free_port()}", retries=1, timeout=2) as client:
        with pytest.raises(roadie.Unavailable):
            client.get("k")


def test_tokens_and_roles(tmp_path: Path, upstream: Upstream) -> None:
    tokens = {"reader": ("read", "r-token-1"), "writer": ("write", "w-token-1")}
    config = tmp_path / "roadie.toml"
    config.write_text(
        "".join(
            f'[[auth.tokens]]\nname = "{name}"\nrole = "{role}"\n'
            f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
            for name, (role, token) in tokens.items()
        )
    )
    for instance in start_roadie("sqlite", tmp_path, upstream, args=["--config", str(config)]):
        with roadie.Client(instance.address) as anonymous:
            with pytest.raises(roadie.Unauthenticated):
                anonymous.get("k")
        with roadie.Client(instance.address, token="r-token-1") as reader:
            assert reader.get("k").status == LookupStatus.MISS
            with pytest.raises(roadie.PermissionDenied) as caught:
                reader.put("k", b"v")
            assert "write" in caught.value.message
        with roadie.Client(instance.address, token="w-token-1") as writer:
            assert writer.put("k", b"v").written
    with pytest.raises(ValueError):
        roadie.Client("127.0.0.1:1", token="has space")


def _self_signed(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=roadie test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
    )
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def test_tls_with_a_ca_of_our_own(tmp_path: Path, upstream: Upstream) -> None:
    ca, cert, key = _self_signed(tmp_path)
    settings = {"ROADIE__SERVER__TLS__CERT": str(cert), "ROADIE__SERVER__TLS__KEY": str(key)}
    for instance in start_roadie("sqlite", tmp_path, upstream, settings, ca=ca.read_bytes()):
        with roadie.Client(f"https://{instance.address}", ca=ca) as client:
            assert client.put("tls/1", b"v").written
            assert client.get("tls/1").found
        # Cleartext against a TLS port fails; an https address never falls back.
        with roadie.Client(f"http://{instance.address}", retries=0, timeout=2) as cleartext:
            with pytest.raises(roadie.RoadieError):
                cleartext.get("tls/1")
    with pytest.raises(ValueError):
        roadie.Client("http://127.0.0.1:1", ca=ca)
    with pytest.raises(ValueError):
        roadie.Client("grpcs://127.0.0.1:1")
