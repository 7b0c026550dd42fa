"""Fixtures: a real roadie-server and roadie-worker on a real store (a fresh
SQLite file, or a fresh database on the machine's Postgres), fetching from a
real HTTP upstream on loopback. Every test runs on both backends.

The binaries come from ``$ROADIE_BIN_DIR`` (default ``target/debug``);
Postgres from ``$ROADIE_TEST_POSTGRES_URL``. With
``ROADIE_REQUIRE_POSTGRES=1`` (CI), a Postgres that cannot be reached fails
the Postgres tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
from grpc_health.v1 import health_pb2

import roadie

REPO = Path(__file__).resolve().parents[3]
BIN_DIR = Path(os.environ.get("ROADIE_BIN_DIR", REPO / "target" / "debug"))
POSTGRES = os.environ.get("ROADIE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
HOST = "127.0.0.1"
STARTUP = 30.0
SHUTDOWN = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def image_bytes(path: str) -> bytes:
    """The bytes the upstream serves for an image path: unique per path."""
    return b"\xff\xd8\xff\xe0" + hashlib.sha256(path.encode()).digest() * 8


class Upstream:
    """A loopback HTTP server standing in for MusicBrainz and an image CDN.

    ``/img/...`` serves JPEG bytes (``/img/missing/...`` answers 404);
    ``/ws/2/artist?query=Q`` answers MusicBrainz-shaped JSON naming Q.
    ``hits`` counts requests by path. ``holding(path)`` keeps requests for
    that path unanswered until its block ends, so a job stays running while a
    test looks at it."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.held: dict[str, threading.Event] = {}
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                url = urlsplit(self.path)
                upstream.hits[url.path] += 1
                held = upstream.held.get(url.path)
                if held is not None:
                    held.wait()
                if url.path.startswith("/img/missing/"):
                    self.answer(404, "text/plain", b"not found")
                elif url.path.startswith("/img/"):
                    self.answer(200, "image/jpeg", image_bytes(url.path))
                elif url.path == "/ws/2/artist":
                    query = parse_qs(url.query).get("query", [""])[0]
                    body = {"count": 1, "artists": [{"id": "mbid-" + query, "name": query, "score": 100}]}
                    self.answer(200, "application/json", json.dumps(body).encode())
                else:
                    self.answer(404, "text/plain", b"no such path")

            def answer(self, status: int, media_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.http.server_address[1]
        self.base = f"http://{HOST}:{self.port}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @contextlib.contextmanager
    def holding(self, path: str) -> Iterator[None]:
        released = threading.Event()
        self.held[path] = released
        try:
            yield
        finally:
            del self.held[path]
            released.set()

    def close(self) -> None:
        for released in self.held.values():
            released.set()
        self.http.shutdown()
        self.http.server_close()


class Process:
    """One Roadie binary, its stderr in a file."""

    def __init__(self, name: str, env: dict[str, str], log: Path, args: list[str] | None = None) -> None:
        binary = BIN_DIR / name
        if not binary.is_file():
            pytest.fail(f"{binary} not found: build it with `cargo build` (or set ROADIE_BIN_DIR)", pytrace=False)
        self.name = name
        self.log = log
        self.handle = log.open("ab")
        self.popen = subprocess.Popen(
            [str(binary), *(args or [])], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.handle
        )

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=SHUTDOWN)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()
        finally:
            self.handle.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, check: Any, what: str) -> None:
        """Polls ``check`` until it is true; fails with the process's
        stderr if the process exits first or ``STARTUP`` seconds pass."""
        deadline = time.monotonic() + STARTUP
        while not check():
            if self.popen.poll() is not None:
                pytest.fail(f"{self.name} exited early:\n{self.output()}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} not {what} after {STARTUP}s:\n{self.output()}", pytrace=False)
            time.sleep(0.05)


class Roadie:
    """A server and a worker on one store, and the upstream they fetch from."""

    def __init__(
        self,
        store_url: str,
        workdir: Path,
        upstream: Upstream,
        extra: dict[str, str],
        args: list[str] | None = None,
        ca: bytes | None = None,
    ) -> None:
        self.port = free_port()
        self.args = args or []
        self.ca = ca
        self.address = f"{HOST}:{self.port}"
        self.workdir = workdir
        self.upstream = upstream
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NO_COLOR": "1",
            "ROADIE__STORE__URL": store_url,
            "ROADIE__SERVER__LISTEN": self.address,
            "ROADIE__ADMIN__LISTEN": f"{HOST}:0",
            "ROADIE__WORKER__POLL_INTERVAL": "50ms",
            # MusicBrainz and the image CDN, on loopback, fast enough to test.
            "ROADIE__PROVIDERS__MUSICBRAINZ__BASE_URL": f"{upstream.base}/ws/2/",
            "ROADIE__PROVIDERS__MUSICBRAINZ__ALLOW_PRIVATE": "true",
            "ROADIE__PROVIDERS__MUSICBRAINZ__RATE_PER_SECOND": "200",
            "ROADIE__PROVIDERS__IMAGES__BASE_URL": f"{upstream.base}/img/",
            "ROADIE__PROVIDERS__IMAGES__ALLOW_PRIVATE": "true",
            "ROADIE__PROVIDERS__IMAGES__RATE_PER_SECOND": "200",
        } | extra
        self.server: Process | None = None
        self.worker: Process | None = None

    def start_server(self) -> None:
        self.server = Process("roadie-server", self.env, self.workdir / "server.log", self.args)
        self.server.wait_for(self._serving, "serving")

    def start_worker(self) -> None:
        """Starts the worker and waits for its /readyz (so it has its signal
        handlers and its store before a test can stop it)."""
        admin = free_port()
        env = self.env | {"ROADIE__ADMIN__LISTEN": f"{HOST}:{admin}"}
        self.worker = Process("roadie-worker", env, self.workdir / "worker.log")
        self.worker.wait_for(lambda: _ready(admin), "ready")

    def stop_server(self) -> None:
        assert self.server is not None
        code = self.server.stop()
        assert code == 0, f"roadie-server exited {code}:\n{self.server.output()}"
        self.server = None

    def stop(self) -> None:
        for process in (self.worker, self.server):
            if process is not None:
                code = process.stop()
                assert code == 0, f"exit code {code}:\n{process.output()}"

    def _serving(self) -> bool:
        """One health probe, on a fresh channel (a refused connection would
        leave a kept channel in reconnect backoff)."""
        options = [("grpc.enable_http_proxy", 0)]
        channel = (
            grpc.secure_channel(self.address, grpc.ssl_channel_credentials(self.ca), options=options)
            if self.ca is not None
            else grpc.insecure_channel(self.address, options=options)
        )
        with channel:
            try:
                check = channel.unary_unary(
                    "/grpc.health.v1.Health/Check",
                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    response_deserializer=health_pb2.HealthCheckResponse.FromString,
                )
                answer = check(health_pb2.HealthCheckRequest(service="roadie.v1.Cache"), timeout=1)
            except grpc.RpcError:
                return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


# Loopback requests never go through a proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _ready(admin_port: int) -> bool:
    try:
        with _DIRECT.open(f"http://{HOST}:{admin_port}/readyz", timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _postgres_database() -> Generator[str, None, None]:
    name = f"roadie_test_py_{uuid.uuid4().hex[:12]}"
    created = subprocess.run(["psql", POSTGRES, "-qc", f"CREATE DATABASE {name}"], capture_output=True, text=True)
    if created.returncode != 0:
        message = f"Postgres at {POSTGRES} unavailable: {created.stderr.strip()}"
        if os.environ.get("ROADIE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield POSTGRES.rsplit("/", 1)[0] + "/" + name
    finally:
        subprocess.run(["psql", POSTGRES, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def start_roadie(
    backend: str,
    workdir: Path,
    upstream: Upstream,
    extra: dict[str, str] | None = None,
    args: list[str] | None = None,
    ca: bytes | None = None,
) -> Iterator[Roadie]:
    """A running server and worker on a fresh store of ``backend``, with
    ``extra`` settings (``ROADIE__*``) and server ``args``; ``ca`` when the
    server speaks TLS."""
    databases = _postgres_database() if backend == "postgres" else None
    store_url = next(databases) if databases is not None else f"sqlite://{workdir / 'roadie.db'}"
    instance = Roadie(store_url, workdir, upstream, extra or {}, args, ca)
    try:
        instance.start_server()
        instance.start_worker()
        yield instance
        instance.stop()
    finally:
        for process in (instance.worker, instance.server):
            if process is not None and process.popen.poll() is None:
                process.popen.kill()
        if databases is not None:
            databases.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def server(backend: str, tmp_path: Path, upstream: Upstream) -> Iterator[Roadie]:
    """A fresh Roadie (server, worker, store) for one test."""
    yield from start_roadie(backend, tmp_path, upstream)


@pytest.fixture
def client(server: Roadie) -> Iterator[roadie.Client]:
    with roadie.Client(server.address) as c:
        yield c


def wait_until(check: Any, what: str, timeout: float = 20.0) -> Any:
    """Polls ``check`` until it returns something truthy; fails naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s", pytrace=False)
        time.sleep(0.05)
