"""A provider's secret query parameter reaches the provider and no other
channel.

A real ``roadie-server`` and ``roadie-worker``, both logging at debug level
and exporting spans and metrics to a real OTLP receiver, fetch through a
provider whose ``api_key`` query parameter comes from an environment
variable (``providers.test.secret_query.api_key``). The loopback upstream
must see the planted value; the server's and the worker's logs, every span
and metric received, the Fetch answer (the entry's key, the job's URL),
``Get``, ``ListJobs``, ``Watch`` with values from revision 0, and the
store's files themselves (entries, job rows, the change log) must not. A
client's own ``api_key`` in the path is dropped too.
"""

from __future__ import annotations

import grpc

from test_otlp import (
    CHANNEL_OPTIONS,
    HOST,
    WAIT,
    Process,
    Receiver,
    Upstream,
    base_env,
    free_port,
    pb,  # noqa: F401 (the fixture)
    until_serving,
)

PLANTED = "planted-s3cr3t-7d41"
PLANTED_IN_PATH = "planted-path-s3cr3t-91ac"
CLIENT_SUPPLIED = "client-s3cr3t-0b2e"


def test_a_planted_secret_reaches_only_the_provider(pb, tmp_path) -> None:  # noqa: F811
    receiver = Receiver()
    upstream = Upstream()
    port = free_port()
    env = base_env(f"sqlite://{tmp_path}/roadie.db", upstream, receiver) | {
        "ROADIE__PROVIDERS__TEST__SECRET_QUERY__API_KEY": "ROADIE_TEST_SECRET",
        # A provider taking its key as a path segment.
        "ROADIE__PROVIDERS__KEYED__BASE_URL": f"http://{HOST}:{upstream.port}/api/{{key}}/",
        "ROADIE__PROVIDERS__KEYED__ALLOW_PRIVATE": "true",
        "ROADIE__PROVIDERS__KEYED__SECRET_PATH__KEY": "ROADIE_TEST_PATH_SECRET",
        "ROADIE__LOG__LEVEL": "debug",
        "RUST_LOG": "debug",
    }
    server = Process(
        "roadie-server", env | {"ROADIE__SERVER__LISTEN": f"{HOST}:{port}"}, tmp_path / "server.log"
    )
    # Only the worker holds the key, as in the deployment files.
    worker = Process(
        "roadie-worker",
        env | {"ROADIE_TEST_SECRET": PLANTED, "ROADIE_TEST_PATH_SECRET": PLANTED_IN_PATH},
        tmp_path / "worker.log",
    )
    seen: dict[str, str] = {}
    try:
        until_serving(f"{HOST}:{port}", "roadie.v1.Cache")
        channel = grpc.insecure_channel(f"{HOST}:{port}", options=CHANNEL_OPTIONS)
        cache = pb.cache_grpc.CacheStub(channel)
        jobs = pb.jobs_grpc.JobsStub(channel)
        answer = cache.Fetch(
            pb.cache.FetchRequest(
                provider="test",
                path=f"track/1?format=json&api_key={CLIENT_SUPPLIED}",
                mode=pb.cache.FETCH_MODE_WAIT,
            ),
            timeout=WAIT,
        )
        assert answer.status == pb.cache.LOOKUP_STATUS_HIT, answer
        seen["the Fetch answer"] = str(answer)
        keyed = cache.Fetch(
            pb.cache.FetchRequest(provider="keyed", path="thing/2", mode=pb.cache.FETCH_MODE_WAIT),
            timeout=WAIT,
        )
        assert keyed.status == pb.cache.LOOKUP_STATUS_HIT, keyed
        assert "%7Bkey%7D" in keyed.entry.key, keyed.entry.key
        seen["the keyed Fetch answer"] = str(keyed)
        # Redirects out of the provider that echo each secret: refused, and
        # the refusal (logged, stored on the job) names the target concealed.
        for provider, path in (("test", "echo/3"), ("keyed", "echo/4")):
            echoed = cache.Fetch(
                pb.cache.FetchRequest(provider=provider, path=path, mode=pb.cache.FETCH_MODE_WAIT),
                timeout=WAIT,
            )
            seen[f"the {provider} redirect's answer"] = str(echoed)
        seen["Get"] = str(cache.Get(pb.cache.GetRequest(key=answer.entry.key), timeout=WAIT))
        seen["ListJobs"] = str(jobs.ListJobs(pb.jobs.ListJobsRequest(), timeout=WAIT))
        changes = []
        last = cache.Stats(pb.cache.StatsRequest(), timeout=WAIT).revision
        stream = cache.Watch(pb.cache.WatchRequest(after_revision=0, include_values=True), timeout=WAIT)
        for message in stream:
            changes.append(str(message))
            if message.HasField("change") and message.change.revision >= last:
                stream.cancel()
                break
        seen["Watch"] = "\n".join(changes)
        # Everything the processes exported so far, the job's spans included.
        receiver.wait_for(
            "the worker's job span",
            lambda: any(s.name == "job test" for _, s in receiver.spans()),
        )
    finally:
        codes = (worker.stop(), server.stop())
    assert codes == (0, 0), f"exit codes {codes}\n{server.output()}\n{worker.output()}"

    [(path, _)] = [(p, h) for p, h in upstream.requests if p.startswith("/api/track/1")]
    assert f"api_key={PLANTED}" in path, f"the provider gets the key: {path}"
    assert CLIENT_SUPPLIED not in path, f"the client's own value is replaced: {path}"
    [(keyed_path, _)] = [(p, h) for p, h in upstream.requests if p.endswith("/thing/2")]
    assert keyed_path == f"/api/{PLANTED_IN_PATH}/thing/2", keyed_path
    echoes = [p for p, _ in upstream.requests if "/echo/" in p]
    assert any(PLANTED in p for p in echoes) and any(PLANTED_IN_PATH in p for p in echoes), echoes
    assert not any(p.startswith("/outside") for p, _ in upstream.requests), "redirects out are not followed"

    seen["the server's log"] = server.output()
    seen["the worker's log"] = worker.output()
    seen["the spans"] = "\n".join(str(span) for _, span in receiver.spans())
    seen["the metrics"] = str(receiver.metrics())
    for name in ("roadie.db", "roadie.db-wal"):
        store_file = tmp_path / name
        if store_file.exists():
            seen[f"the store's {name}"] = store_file.read_bytes().decode("latin-1")
    assert "upstream answered" in seen["the worker's log"], "the worker logged at debug level"
    assert "track/1" in seen["the spans"], "spans name the request"
    for channel_name, text in seen.items():
        for secret in (PLANTED, PLANTED_IN_PATH, CLIENT_SUPPLIED):
            assert secret not in text, f"{channel_name} carries {secret}"
