"""Contract test: a Python gRPC client talking to a real ``roadie-server``.

The Rust end-to-end tests use the Rust client, which shares code with the
server; this file proves the wire contract in ``proto/roadie/v1`` is enough on
its own.  Stubs are generated from the .proto files at test time (nothing
generated is committed), a real server binary is started on a free loopback
port with a throw-away SQLite database, and every test talks to it over gRPC.

Run from the repository root (see README.md):

    python -m pytest client/python -v
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.resources
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "proto"
PROTO_FILES = ["roadie/v1/cache.proto", "roadie/v1/jobs.proto"]
DEFAULT_SERVER_BIN = REPO / "target" / "debug" / "roadie-server"

HOST = "127.0.0.1"
CACHE_SERVICE = "roadie.v1.Cache"
# Timeout, in seconds, of every RPC the tests make.
RPC_TIMEOUT = 10
STARTUP_DEADLINE = 30
SHUTDOWN_DEADLINE = 15
# TTL of the default "generic" policy (server/src/config.rs).
GENERIC_TTL = 300
MAX_KEY_BYTES = 1024

# grpc honours http_proxy/https_proxy; a proxy must never see loopback traffic.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


# --------------------------------------------------------------------------
# Fixtures: stubs, server, channel
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pb(tmp_path_factory) -> SimpleNamespace:
    """Generates the roadie.v1 Python stubs into a temporary directory and
    imports them: ``pb.cache`` (messages) and ``pb.cache_grpc`` (stubs)."""
    out = tmp_path_factory.mktemp("stubs")
    # The well-known types (google/protobuf/*.proto) ship inside grpc_tools.
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *PROTO_FILES,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(
            f"protoc failed ({result.returncode}):\n{result.stdout}{result.stderr}",
            pytrace=False,
        )
    # The generated modules import each other as `roadie.v1.*` (a namespace
    # package, no __init__.py), so the output root goes on sys.path.
    sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    stubs = SimpleNamespace(
        cache=importlib.import_module("roadie.v1.cache_pb2"),
        cache_grpc=importlib.import_module("roadie.v1.cache_pb2_grpc"),
    )
    # The stubs must be the ones just generated, not the roadie package's
    # (installed, it would shadow them and this test would prove nothing).
    for module in vars(stubs).values():
        if not Path(module.__file__).is_relative_to(out):
            pytest.fail(
                f"{module.__name__} came from {module.__file__}, not from the stubs generated "
                "for this test: run it in an environment without the roadie package",
                pytrace=False,
            )
    return stubs


def _free_port() -> int:
    # Bind to port 0 so the kernel picks a free port, then release it for the
    # server. Another process could grab it in between; unlikely on loopback.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _check_serving(address: str) -> bool:
    """One health probe. A fresh channel per probe, so a refused connection
    does not leave the channel in reconnect backoff (which grows to minutes)."""
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        try:
            response = health.Check(
                health_pb2.HealthCheckRequest(service=CACHE_SERVICE), timeout=1
            )
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


@contextlib.contextmanager
def running_server(workdir: Path, settings: dict[str, str] | None = None) -> Iterator[str]:
    """Starts ``roadie-server`` in ``workdir`` on a free loopback port with a
    fresh SQLite database (plus ``settings``, as ``ROADIE__*`` environment
    variables), yields its ``host:port``, and at the end checks that SIGTERM
    stops it cleanly (exit code 0) within the deadline."""
    binary = Path(os.environ.get("ROADIE_SERVER_BIN", DEFAULT_SERVER_BIN))
    if not binary.is_file():
        pytest.fail(
            f"roadie-server binary not found at {binary}: build it with "
            "`cargo build -p roadie-server` (or set ROADIE_SERVER_BIN)",
            pytrace=False,
        )

    port = _free_port()
    address = f"{HOST}:{port}"
    # Drop any ROADIE__* settings inherited from the caller's shell so the
    # server runs on its defaults plus exactly the settings below.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROADIE__")}
    env.update(settings or {})
    env["ROADIE__SERVER__LISTEN"] = address
    env["ROADIE__STORE__URL"] = f"sqlite://{workdir / 'roadie.db'}"
    # The server colours its log even when stderr is not a terminal; keep the
    # stderr quoted in failure messages readable.
    env["NO_COLOR"] = "1"

    # The server logs to stderr; a file, not a pipe, so a chatty server can
    # never block on a full pipe nobody is reading.
    log_path = workdir / "stderr.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [str(binary)],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )

    def server_log() -> str:
        log.flush()
        return log_path.read_text(errors="replace")

    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while not _check_serving(address):
            if process.poll() is not None:
                pytest.fail(
                    f"roadie-server exited early with code {process.returncode}; "
                    f"stderr:\n{server_log()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"roadie-server on {address} not SERVING {CACHE_SERVICE} "
                    f"after {STARTUP_DEADLINE}s; stderr:\n{server_log()}",
                    pytrace=False,
                )
            time.sleep(0.1)
    except BaseException:
        process.kill()
        process.wait()
        log.close()
        raise

    try:
        yield address
    except BaseException:
        # The caller failed; that failure is the one to report.
        process.kill()
        process.wait()
        log.close()
        raise

    try:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=SHUTDOWN_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(
                f"roadie-server did not exit within {SHUTDOWN_DEADLINE}s of "
                f"SIGTERM; stderr:\n{server_log()}",
                pytrace=False,
            )
        assert code == 0, (
            f"roadie-server exited with code {code} after SIGTERM; "
            f"stderr:\n{server_log()}"
        )
    finally:
        log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[str]:
    """The server every test shares, on its default settings."""
    with running_server(tmp_path_factory.mktemp("server")) as address:
        yield address


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(server, options=CHANNEL_OPTIONS) as channel:
        yield channel
    # Closed here, before `server` tears down, so SIGTERM finds no open
    # connection left to drain.


@pytest.fixture(scope="session")
def cache(pb, channel):
    return pb.cache_grpc.CacheStub(channel)


@pytest.fixture
def prefix(request) -> str:
    """A key prefix no other test (or run) uses, so tests stay independent."""
    return f"contract/{request.node.name}/{uuid.uuid4().hex}/"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def put(cache, pb, key: str, value: bytes = b"v", **fields):
    """Puts an entry and checks it was written."""
    response = cache.Put(
        pb.cache.PutRequest(key=key, value=value, **fields), timeout=RPC_TIMEOUT
    )
    assert response.outcome == pb.cache.PUT_OUTCOME_WRITTEN, response
    return response


def get(cache, pb, key: str):
    return cache.Get(pb.cache.GetRequest(key=key), timeout=RPC_TIMEOUT)


def status_name(pb, status: int) -> str:
    """LOOKUP_STATUS_* name, so failures read as names rather than numbers."""
    return pb.cache.LookupStatus.Name(status)


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The google.rpc.ErrorInfo detail of an error, if it carries one."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def next_change(pb, stream):
    """The next change on a Watch stream, skipping progress messages."""
    for message in stream:
        if message.WhichOneof("event") == "change":
            return message.change
        assert message.WhichOneof("event") == "progress", message
    pytest.fail("the Watch stream ended", pytrace=False)


def has_bad_request_detail(error: grpc.RpcError) -> bool:
    """Whether the error carries the google.rpc.BadRequest detail the API
    promises. Decoding it needs the googleapis protos, which grpc_tools does
    not bundle; finding its type URL in the encoded status is enough here."""
    trailers = dict(error.trailing_metadata() or ())
    return b"type.googleapis.com/google.rpc.BadRequest" in trailers.get(
        "grpc-status-details-bin", b""
    )


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_health_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", CACHE_SERVICE):
        response = health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


def test_put_then_get_round_trips_every_field(cache, pb, prefix):
    # A non-ASCII key and a value that is not valid UTF-8: both must survive.
    key = f"https://musicbrainz.org/ws/2/artist/é?{prefix}"
    value = b"\x00\xff binary \x80\x00"
    tags = ["artist:björk", "kind:artist"]
    metadata = {"source": "contract-test", "note": "ünïcode"}

    before = time.time()
    put_response = put(
        cache,
        pb,
        key,
        value,
        media_type="application/octet-stream+test",
        tags=tags,
        metadata=metadata,
        confidence=75,
    )
    assert put_response.revision > 0

    response = get(cache, pb, key)
    assert status_name(pb, response.status) == "LOOKUP_STATUS_HIT"
    entry = response.entry
    assert entry.key == key
    assert entry.value == value
    assert entry.media_type == "application/octet-stream+test"
    assert list(entry.tags) == tags
    assert dict(entry.metadata) == metadata
    assert entry.confidence == 75
    assert entry.policy == "generic"
    assert entry.status == pb.cache.ENTRY_STATUS_FRESH
    # The revision a Put reports is the one a reader sees (for compare-and-set).
    assert entry.revision == put_response.revision

    # No TTL given: the "generic" policy's 300 s applies.
    assert entry.HasField("expires_at")
    remaining = entry.expires_at.ToNanoseconds() / 1e9 - before
    assert GENERIC_TTL - 5 <= remaining <= GENERIC_TTL + 5, remaining


def test_get_of_absent_key_is_a_miss_not_an_error(cache, pb, prefix):
    response = get(cache, pb, prefix + "absent")
    assert status_name(pb, response.status) == "LOOKUP_STATUS_MISS"
    assert not response.HasField("entry")


def test_batch_get_answers_in_request_order(cache, pb, prefix):
    present, absent, present2 = prefix + "a", prefix + "b", prefix + "c"
    put(cache, pb, present, b"one")
    put(cache, pb, present2, b"two")

    keys = [present, absent, present2]
    response = cache.BatchGet(pb.cache.BatchGetRequest(keys=keys), timeout=RPC_TIMEOUT)

    assert len(response.results) == 3
    assert [status_name(pb, r.status) for r in response.results] == [
        "LOOKUP_STATUS_HIT",
        "LOOKUP_STATUS_MISS",
        "LOOKUP_STATUS_HIT",
    ]
    first, missing, third = response.results
    assert (first.entry.key, first.entry.value) == (present, b"one")
    assert not missing.HasField("entry")
    assert (third.entry.key, third.entry.value) == (present2, b"two")


def test_invalidate_by_tag_deletes_only_tagged_entries(cache, pb, prefix):
    # The tag is unique to this run so no other entry in the store carries it
    # and the count is exact.
    tag = f"artist:test-{uuid.uuid4().hex}"
    tagged = [prefix + "tagged-1", prefix + "tagged-2"]
    untagged = prefix + "untagged"
    for key in tagged:
        put(cache, pb, key, tags=[tag, "kind:artist"])
    put(cache, pb, untagged, tags=["kind:artist"])

    response = cache.Invalidate(pb.cache.InvalidateRequest(tag=tag), timeout=RPC_TIMEOUT)
    assert response.count == 2
    assert response.revision > 0

    for key in tagged:
        assert status_name(pb, get(cache, pb, key).status) == "LOOKUP_STATUS_MISS", key
    assert status_name(pb, get(cache, pb, untagged).status) == "LOOKUP_STATUS_HIT"


def test_invalidate_by_key_prefix_counts_what_it_deleted(cache, pb, prefix):
    doomed = [prefix + "album/1", prefix + "album/2", prefix + "album/é"]
    # Shares all but the case of the prefix: a prefix match is byte-exact.
    survivor = prefix + "Album/1"
    for key in [*doomed, survivor]:
        put(cache, pb, key)

    response = cache.Invalidate(
        pb.cache.InvalidateRequest(key_prefix=prefix + "album/"), timeout=RPC_TIMEOUT
    )
    assert response.count == len(doomed)

    for key in doomed:
        assert status_name(pb, get(cache, pb, key).status) == "LOOKUP_STATUS_MISS", key
    assert status_name(pb, get(cache, pb, survivor).status) == "LOOKUP_STATUS_HIT"

    # Nothing left to match: a count of zero, not an error.
    again = cache.Invalidate(
        pb.cache.InvalidateRequest(key_prefix=prefix + "album/"), timeout=RPC_TIMEOUT
    )
    assert again.count == 0


def test_list_entries_pages_in_key_order_and_names_the_revision(cache, pb, prefix):
    keys = [prefix + f"image/{i:02}" for i in range(5)] + [prefix + "image/é"]
    for key in reversed(keys):
        put(cache, pb, key, value=b"\x89PNG", tags=["artist:listed"])
    put(cache, pb, prefix + "imagez")  # shares the prefix but the slash

    listed, token, revisions = [], "", set()
    while True:
        page = cache.ListEntries(
            pb.cache.ListEntriesRequest(
                key_prefix=prefix + "image/", page_size=4, page_token=token, without_values=True
            ),
            timeout=RPC_TIMEOUT,
        )
        assert len(page.entries) <= 4
        listed.extend(page.entries)
        revisions.add(page.revision)
        token = page.next_page_token
        if not token:
            break
    assert [e.key for e in listed] == keys, "bytewise key order, every page followed"
    assert all(e.value == b"" and list(e.tags) == ["artist:listed"] for e in listed)
    assert len(revisions) == 1 and revisions.pop() >= max(e.revision for e in listed)

    with_values = cache.ListEntries(
        pb.cache.ListEntriesRequest(key_prefix=prefix + "image/", page_size=1), timeout=RPC_TIMEOUT
    )
    assert with_values.entries[0].value == b"\x89PNG"

    with pytest.raises(grpc.RpcError) as caught:
        cache.ListEntries(pb.cache.ListEntriesRequest(page_size=1001), timeout=RPC_TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in caught.value.details()
    assert "1000" in caught.value.details()
    assert has_bad_request_detail(caught.value)


def test_overlong_key_is_invalid_argument_naming_key_and_limit(cache, pb):
    with pytest.raises(grpc.RpcError) as caught:
        get(cache, pb, "k" * (MAX_KEY_BYTES + 1))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "key" in error.details()
    assert str(MAX_KEY_BYTES) in error.details()
    assert has_bad_request_detail(error)


def test_unknown_policy_is_invalid_argument_naming_policy(cache, pb, prefix):
    with pytest.raises(grpc.RpcError) as caught:
        cache.Put(
            pb.cache.PutRequest(key=prefix + "k", value=b"v", policy="nonsense"),
            timeout=RPC_TIMEOUT,
        )
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "policy" in error.details()
    assert has_bad_request_detail(error)
    # Rejected, so nothing was written.
    assert status_name(pb, get(cache, pb, prefix + "k").status) == "LOOKUP_STATUS_MISS"


def test_keep_higher_confidence_keeps_the_stored_entry(cache, pb, prefix):
    key = prefix + "artist"
    first = put(cache, pb, key, b"confident", confidence=90)

    response = cache.Put(
        pb.cache.PutRequest(
            key=key, value=b"guess", confidence=10, keep_higher_confidence=True
        ),
        timeout=RPC_TIMEOUT,
    )
    assert response.outcome == pb.cache.PUT_OUTCOME_KEPT_HIGHER_CONFIDENCE
    assert response.stored_confidence == 90
    # Not written, so the revision reported is the stored entry's.
    assert response.revision == first.revision

    entry = get(cache, pb, key).entry
    assert (entry.value, entry.confidence) == (b"confident", 90)


def test_watch_opens_with_progress_then_streams_each_change(cache, pb, prefix):
    request = pb.cache.WatchRequest(key_prefix=prefix)
    stream = cache.Watch(request, timeout=RPC_TIMEOUT)
    try:
        # The first message says where the stream starts; once it is in, the
        # server is subscribed and no later change can be missed.
        first = next(stream)
        assert first.WhichOneof("event") == "progress", first
        start = first.progress.revision

        written = put(cache, pb, prefix + "artist", b"{}", tags=["kind:artist"])
        change = next_change(pb, stream)
        assert change.revision == written.revision
        assert change.revision > start
        assert change.kind == pb.cache.CHANGE_KIND_PUT
        assert change.key == prefix + "artist"
        assert change.policy == "generic"
        assert list(change.tags) == ["kind:artist"]
        # Values only when asked for.
        assert not change.HasField("entry")
    finally:
        stream.cancel()

    # Resuming after the start position delivers the same change again, and
    # the stream opens at exactly that position.
    request.after_revision = start
    request.include_values = True
    resumed = cache.Watch(request, timeout=RPC_TIMEOUT)
    try:
        first = next(resumed)
        assert first.WhichOneof("event") == "progress", first
        assert first.progress.revision == start
        change = next_change(pb, resumed)
        assert change.revision == written.revision
        assert change.entry.value == b"{}"
    finally:
        resumed.cancel()


def test_watch_with_an_unspecified_kind_is_invalid_argument(cache, pb):
    request = pb.cache.WatchRequest(kinds=[pb.cache.CHANGE_KIND_UNSPECIFIED])
    with pytest.raises(grpc.RpcError) as caught:
        next(cache.Watch(request, timeout=RPC_TIMEOUT))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "kinds" in error.details()
    assert has_bad_request_detail(error)


def test_watch_from_a_compacted_revision_names_the_oldest_retained(pb, tmp_path):
    # A server of its own that keeps only the last two changes and compacts
    # every 50 ms.
    settings = {
        "ROADIE__WATCH__RETENTION_COUNT": "2",
        "ROADIE__MAINTENANCE__INTERVAL": "50ms",
    }
    with (
        running_server(tmp_path, settings) as address,
        grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel,
    ):
        cache = pb.cache_grpc.CacheStub(channel)
        for i in range(5):
            put(cache, pb, f"compacted/{i}")
        request = pb.cache.WatchRequest(after_revision=0)
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            stream = cache.Watch(request, timeout=RPC_TIMEOUT)
            try:
                next(stream)
            except grpc.RpcError as caught:
                error = caught
                break
            finally:
                stream.cancel()
            if time.monotonic() > deadline:
                pytest.fail("the change log was never compacted", pytrace=False)
            time.sleep(0.05)

        assert error.code() == grpc.StatusCode.OUT_OF_RANGE
        info = error_info(error)
        assert info is not None, error
        assert (info.domain, info.reason) == ("roadie.v1", "REVISION_COMPACTED")
        oldest = int(info.metadata["oldest_revision"])
        assert oldest > 1
        assert f"oldest retained revision is {oldest}" in error.details()

        # From just before the oldest retained revision nothing is missing.
        stream = cache.Watch(
            pb.cache.WatchRequest(after_revision=oldest - 1), timeout=RPC_TIMEOUT
        )
        try:
            assert next(stream).progress.revision == oldest - 1
            assert next_change(pb, stream).revision == oldest
        finally:
            stream.cancel()
