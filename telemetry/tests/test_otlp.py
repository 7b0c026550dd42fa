"""Roadie's telemetry against a real OTLP receiver and a real store outage.

A real ``roadie-server`` and ``roadie-worker`` export over OTLP/gRPC to a
receiver in this process (the OpenTelemetry collector services from the
``opentelemetry-proto`` package, under grpcio). One ``Fetch`` in wait mode,
sent with a known ``traceparent``, goes through the queue to a loopback
upstream; the receiver must hold one trace from the caller's span through
the server's RPC span and the worker's job span to the upstream request,
whose ``traceparent`` the upstream saw, and the metrics an operator alerts
on with their attributes.

The second case cuts the server's and worker's path to Postgres (a TCP
relay in front of the machine's Postgres, so nothing else is disturbed):
health turns NOT_SERVING and both ``/readyz`` answer 503; when the path
returns, both recover by themselves.

Run from the repository root after building the binaries:

    python -m pytest telemetry/tests -v
"""

from __future__ import annotations

import contextlib
import http.server
import importlib
import importlib.resources
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.trace.v1 import trace_pb2

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("ROADIE_BIN_DIR", REPO / "target" / "debug"))
PROTO_DIR = REPO / "proto"
HOST = "127.0.0.1"
POSTGRES = os.environ.get("ROADIE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
WAIT = 30.0
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------
# The receiver, the upstream and the relay
# --------------------------------------------------------------------------


class Receiver(
    trace_service_pb2_grpc.TraceServiceServicer,
    metrics_service_pb2_grpc.MetricsServiceServicer,
):
    """An OTLP receiver, over gRPC (``port``) and over HTTP/protobuf
    (``http_port``, ``POST /v1/traces`` and ``/v1/metrics``), that keeps
    everything it is sent; waiting on it is woken by each export."""

    def __init__(self, port: int = 0) -> None:
        self.resource_spans: list[Any] = []
        self.resource_metrics: list[Any] = []
        self.changed = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"{HOST}:{port}")
        self.server.start()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                kinds = {
                    "/v1/traces": trace_service_pb2.ExportTraceServiceRequest,
                    "/v1/metrics": metrics_service_pb2.ExportMetricsServiceRequest,
                }
                kind = kinds.get(self.path)
                if kind is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                answer = receiver.Export(kind.FromString(body), None).SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.http_port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def Export(self, request, context):  # noqa: N802 (gRPC's name)
        with self.changed:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                self.resource_spans.extend(request.resource_spans)
                answer = trace_service_pb2.ExportTraceServiceResponse()
            else:
                self.resource_metrics.extend(request.resource_metrics)
                answer = metrics_service_pb2.ExportMetricsServiceResponse()
            self.changed.notify_all()
        return answer

    def wait_for(self, what: str, found: Callable[[], Any]) -> Any:
        with self.changed:
            result = self.changed.wait_for(found, timeout=WAIT)
        assert result, f"the receiver never got {what}"
        return result

    def spans(self) -> list[tuple[str, Any]]:
        """Every span received, with its service name."""
        out = []
        with self.changed:
            for rs in self.resource_spans:
                service = attribute(rs.resource.attributes, "service.name")
                for scope in rs.scope_spans:
                    out.extend((service, span) for span in scope.spans)
        return out

    def metrics(self) -> dict[str, list[dict[str, Any]]]:
        """Every metric name received, with the attributes of its points."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self.changed:
            for rm in self.resource_metrics:
                service = attribute(rm.resource.attributes, "service.name")
                for scope in rm.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        points = getattr(metric, kind).data_points if kind else []
                        for point in points:
                            attrs = {kv.key: value_of(kv.value) for kv in point.attributes}
                            attrs["service.name"] = service
                            out.setdefault(metric.name, []).append(attrs)
        return out


def value_of(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def attribute(attributes: Any, key: str) -> Any:
    for kv in attributes:
        if kv.key == key:
            return value_of(kv.value)
    return None


class Upstream:
    """A loopback HTTP upstream recording each request's path and headers;
    paths under /api/gated/ are answered once the gate opens, paths with an
    /echo/ segment by a redirect out of /api/ that repeats the request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                with outer.lock:
                    outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path.startswith("/api/gated/"):
                    outer.gate.wait(timeout=WAIT)
                if "/echo/" in self.path:
                    # A redirect out of the provider echoing the request
                    # (its secrets included) in the Location.
                    self.send_response(302)
                    self.send_header("location", f"/outside{self.path}")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                body = b'{"name":"ok"}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def headers_of(self, path: str) -> dict[str, str]:
        with self.lock:
            for seen, headers in self.requests:
                if seen == path:
                    return headers
        raise AssertionError(f"upstream never saw {path}: {self.requests}")


class Relay:
    """A TCP relay to Postgres that can be cut (every connection closed, new
    ones refused) and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self.pump, args=(a, b), daemon=True).start()

    @staticmethod
    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def restore(self) -> None:
        self.open.set()


# --------------------------------------------------------------------------
# The processes
# --------------------------------------------------------------------------


class Process:
    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self.handle = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            [str(BIN_DIR / name)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.handle,
        )

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=WAIT)
        finally:
            self.handle.close()
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def base_env(
    store_url: str, upstream: Upstream, receiver: Receiver | None, protocol: str = "grpc"
) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NO_COLOR": "1",
        "ROADIE__STORE__URL": store_url,
        "ROADIE__PROVIDERS__TEST__BASE_URL": f"http://{HOST}:{upstream.port}/api/",
        "ROADIE__PROVIDERS__TEST__ALLOW_PRIVATE": "true",
        "ROADIE__WORKER__POLL_INTERVAL": "100ms",
        "ROADIE__ADMIN__SAMPLE_INTERVAL": "500ms",
        "ROADIE__LOG__FORMAT": "json",
    }
    if receiver is not None:
        port = receiver.port if protocol == "grpc" else receiver.http_port
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        }
    return env


def health_check(addr: str, service: str) -> int:
    """One Health.Check, as a Kubernetes gRPC probe sends it."""
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def health_watch(addr: str, service: str, timeout: float = 120.0) -> Iterator[int]:
    channel = grpc.insecure_channel(addr, options=CHANNEL_OPTIONS)
    stub = health_pb2_grpc.HealthStub(channel)
    # The call itself connects and waits for the channel, from any state: a
    # connection the start-up health service sent GOAWAY leaves its channel
    # IDLE, where a readiness future subscribed before waited out its
    # timeout without connecting again.
    request = health_pb2.HealthCheckRequest(service=service)
    for answer in stub.Watch(request, timeout=timeout, wait_for_ready=True):
        yield answer.status


def until_serving(addr: str, service: str) -> None:
    """Waits, for at most WAIT, until the server says SERVING for
    `service`; a health stream that ends (the server handing its port from
    its start-up health service to the full one) is opened again."""
    deadline = time.monotonic() + WAIT
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(grpc.RpcError):
            for status in health_watch(addr, service, timeout=left):
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
    raise AssertionError(f"{addr} never said SERVING for {service!r} within {WAIT} s")


def until_status(statuses: Iterator[int], want: int) -> None:
    for status in statuses:
        if status == want:
            return
    raise AssertionError(f"the health stream ended before {want}")


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.fixture(scope="session")
def pb(tmp_path_factory) -> SimpleNamespace:
    """The roadie.v1 stubs, generated from proto/ into a temporary directory."""
    out = tmp_path_factory.mktemp("stubs")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "roadie/v1/cache.proto",
            "roadie/v1/jobs.proto",
        ],
        check=True,
    )
    sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    return SimpleNamespace(
        cache=importlib.import_module("roadie.v1.cache_pb2"),
        cache_grpc=importlib.import_module("roadie.v1.cache_pb2_grpc"),
        jobs=importlib.import_module("roadie.v1.jobs_pb2"),
        jobs_grpc=importlib.import_module("roadie.v1.jobs_pb2_grpc"),
    )


# --------------------------------------------------------------------------
# The trace and the metrics
# --------------------------------------------------------------------------


# Every metric that must arrive after one Fetch and one Get, with the
# attributes a dashboard selects on.
REQUIRED: list[tuple[str, dict[str, Any]]] = [
    ("rpc.server.duration", {"rpc.method": "Fetch", "rpc.grpc.status_code": 0, "service.name": "roadie-server"}),
    ("roadie.cache.lookups", {"roadie.result": "hit", "roadie.policy": "api_metadata"}),
    ("roadie.cache.budget", {"roadie.policy": "api_metadata"}),
    ("roadie.cache.evictions", {"roadie.policy": "api_metadata"}),
    ("roadie.cache.expirations", {}),
    ("roadie.cache.entries", {"roadie.policy": "api_metadata"}),
    ("roadie.cache.size", {"roadie.policy": "api_metadata"}),
    ("roadie.ready", {"service.name": "roadie-server"}),
    ("roadie.ready", {"service.name": "roadie-worker"}),
    ("db.client.connection.count", {"db.client.connection.state": "idle", "service.name": "roadie-worker"}),
    ("roadie.watch.watchers", {}),
    ("roadie.watch.lag", {}),
    ("db.client.connection.count", {"db.client.connection.state": "idle", "db.system.name": "sqlite"}),
    ("db.client.connection.wait_time", {"db.system.name": "sqlite"}),
    ("roadie.provider.paused", {"roadie.provider": "test"}),
    ("roadie.rate_limit.wait", {"roadie.provider": "test"}),
    ("roadie.job.duration", {"roadie.provider": "test", "roadie.job.outcome": "completed", "service.name": "roadie-worker"}),
    ("http.client.request.duration", {"roadie.provider": "test", "http.response.status_code": 200}),
    ("roadie.queue.depth", {"roadie.provider": "test", "roadie.job.state": "running"}),
    ("roadie.queue.depth", {"roadie.provider": "test", "roadie.job.state": "available"}),
    ("roadie.queue.oldest_age", {"roadie.provider": "test"}),
]


def missing(metrics: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The required metrics not (yet) received with their attributes."""
    return [
        f"{name} {want}"
        for name, want in REQUIRED
        if not any(all(p.get(k) == v for k, v in want.items()) for p in metrics.get(name, []))
    ]


def ancestors(span: Any, by_id: dict[bytes, Any]) -> list[Any]:
    chain = []
    while span.parent_span_id and span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_one_trace_from_the_rpc_through_the_queue_to_the_provider(pb, tmp_path, protocol) -> None:
    receiver = Receiver()
    upstream = Upstream()
    port = free_port()
    env = base_env(f"sqlite://{tmp_path}/roadie.db", upstream, receiver, protocol)
    server = Process("roadie-server", env | {"ROADIE__SERVER__LISTEN": f"{HOST}:{port}"}, tmp_path / "server.log")
    worker = Process("roadie-worker", env | {"ROADIE__WORKER__CONCURRENCY": "1"}, tmp_path / "worker.log")
    try:
        until_serving(f"{HOST}:{port}", "roadie.v1.Cache")
        trace_id = secrets.token_hex(16)
        caller_span = secrets.token_hex(8)
        channel = grpc.insecure_channel(f"{HOST}:{port}", options=CHANNEL_OPTIONS)
        cache = pb.cache_grpc.CacheStub(channel)
        answer = cache.Fetch(
            pb.cache.FetchRequest(provider="test", path="artist/1", mode=pb.cache.FETCH_MODE_WAIT),
            metadata=[("traceparent", f"00-{trace_id}-{caller_span}-01")],
            timeout=WAIT,
        )
        assert answer.status == pb.cache.LOOKUP_STATUS_HIT, answer
        # A read of what is cached now, for the lookup counters.
        cache.Get(pb.cache.GetRequest(key=answer.entry.key), timeout=WAIT)
        # Two background jobs for the worker's one slot, held upstream: one
        # running, one available, for the queue's figures.
        for path in ("gated/1", "gated/2"):
            cache.Fetch(
                pb.cache.FetchRequest(provider="test", path=path, mode=pb.cache.FETCH_MODE_BACKGROUND),
                timeout=WAIT,
            )

        sent = upstream.headers_of("/api/artist/1").get("traceparent", "")
        assert sent.split("-")[1:2] == [trace_id], f"upstream saw traceparent {sent!r}"

        receiver.wait_for("every required metric", lambda: not missing(receiver.metrics()))
        upstream.gate.set()
    finally:
        upstream.gate.set()
        codes = (worker.stop(), server.stop())
    assert codes == (0, 0), f"exit codes {codes}\n{server.output()}\n{worker.output()}"

    # Both binaries flushed their spans on SIGTERM.
    spans = [(service, s) for service, s in receiver.spans() if s.trace_id.hex() == trace_id]
    by_id = {s.span_id: s for _, s in spans}
    services = {service for service, _ in spans}
    assert services == {"roadie-server", "roadie-worker"}, [(svc, s.name) for svc, s in spans]

    [rpc] = [s for svc, s in spans if svc == "roadie-server" and s.name == "roadie.v1.Cache/Fetch"]
    assert rpc.parent_span_id.hex() == caller_span, "the RPC span continues the caller's trace"
    assert rpc.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert attribute(rpc.attributes, "rpc.method") == "Fetch"
    assert attribute(rpc.attributes, "rpc.grpc.status_code") == 0
    assert attribute(rpc.attributes, "roadie.key").endswith("/api/artist/1")

    [job] = [s for svc, s in spans if svc == "roadie-worker" and s.name == "job test"]
    assert rpc in ancestors(job, by_id), "the worker's job span descends from the RPC's span"
    assert attribute(job.attributes, "roadie.job.outcome") == "completed"

    [get] = [s for svc, s in spans if svc == "roadie-worker" and s.name == "GET"]
    assert job in ancestors(get, by_id)
    assert get.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert attribute(get.attributes, "http.response.status_code") == 200
    assert sent.split("-")[2] == get.span_id.hex(), "the upstream's traceparent names the request's span"

    [enqueue] = [s for svc, s in spans if svc == "roadie-server" and s.name == "db job_enqueue"]
    assert rpc in ancestors(enqueue, by_id)
    assert attribute(enqueue.attributes, "db.system.name") == "sqlite"
    all_names = {s.name for _, s in receiver.spans()}
    assert {"db job_claim", "db job_finish"} <= all_names, all_names

    print("\nthe trace as received:")
    for service, span in sorted(spans, key=lambda p: p[1].start_time_unix_nano):
        depth = len(ancestors(span, by_id))
        parent = span.parent_span_id.hex() or "-"
        print(f"  {'  ' * depth}{span.name}  [{service}]  span {span.span_id.hex()} parent {parent}")

    metrics = receiver.metrics()
    print("\nmetrics received (name: attribute keys):")
    for name in sorted(metrics):
        keys = sorted({k for point in metrics[name] for k in point})
        print(f"  {name}: {', '.join(keys)}")

    assert not missing(metrics), missing(metrics)


# --------------------------------------------------------------------------
# Health that tells the truth
# --------------------------------------------------------------------------


@pytest.fixture
def postgres_db() -> Iterator[str]:
    """A fresh database on the machine's Postgres; its name."""
    name = f"roadie_test_otel_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", POSTGRES, "-qc", f"CREATE DATABASE {name}"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["psql", POSTGRES, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)


def test_health_and_readiness_follow_the_store(postgres_db, tmp_path) -> None:
    relay = Relay((HOST, 5432))
    upstream = Upstream()
    port, server_admin, worker_admin = free_port(), free_port(), free_port()
    env = base_env(f"postgres://postgres@{HOST}:{relay.port}/{postgres_db}", upstream, None)
    env["ROADIE__STORE__ACQUIRE_TIMEOUT"] = "1s"
    server = Process(
        "roadie-server",
        env | {"ROADIE__SERVER__LISTEN": f"{HOST}:{port}", "ROADIE__ADMIN__LISTEN": f"{HOST}:{server_admin}"},
        tmp_path / "server.log",
    )
    worker = Process("roadie-worker", env | {"ROADIE__ADMIN__LISTEN": f"{HOST}:{worker_admin}"}, tmp_path / "worker.log")
    try:
        until_serving(f"{HOST}:{port}", "")
        overall = health_watch(f"{HOST}:{port}", "")
        until_status(overall, health_pb2.HealthCheckResponse.SERVING)
        assert readyz(server_admin) == 200

        relay.cut()
        until_status(overall, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert readyz(server_admin) == 503
        # Alive all the same: a liveness probe must not restart it for this.
        assert health_check(f"{HOST}:{port}", "liveness") == health_pb2.HealthCheckResponse.SERVING
        # The worker is ready only while it can claim: its next claim fails.
        wait_until(lambda: readyz(worker_admin) == 503, "the worker's /readyz to fail")

        relay.restore()
        until_status(overall, health_pb2.HealthCheckResponse.SERVING)
        assert readyz(server_admin) == 200
        wait_until(lambda: readyz(worker_admin) == 200, "the worker's /readyz to recover")
        with urllib.request.urlopen(f"http://{HOST}:{server_admin}/livez", timeout=5) as live:
            assert live.status == 200
    finally:
        codes = (worker.stop(), server.stop())
    assert codes == (0, 0), f"exit codes {codes}\n{server.output()}\n{worker.output()}"
    assert '"why":"the store does not answer"' in server.output(), server.output()


def wait_until(check: Callable[[], bool], what: str) -> None:
    """For readiness only another process knows, read through its admin port
    as a probe reads it: asked again every 100 ms, for at most WAIT."""
    done = threading.Event()
    for _ in range(int(WAIT * 10)):
        if check():
            return
        done.wait(0.1)
    raise AssertionError(f"timed out waiting for {what}")
