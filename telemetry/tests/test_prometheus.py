"""The dashboard and the alert rules in deploy/observability against a real
Prometheus (Debian's ``prometheus`` package) scraping the admin ports of a
real ``roadie-server`` and ``roadie-worker``.

Every query of the Grafana dashboard must return series, so the dashboard
cannot name a metric that does not exist; every alert rule must load, its
expression must evaluate, and the signal it compares with its threshold
must return series.

Run from the repository root after building the binaries:

    python -m pytest telemetry/tests -v
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml  # type: ignore[import-untyped]

from test_otlp import (
    CHANNEL_OPTIONS,
    HOST,
    REPO,
    WAIT,
    Process,
    Upstream,
    base_env,
    free_port,
    pb,  # noqa: F401 (the fixture)
    until_serving,
    wait_until,
)

OBSERVABILITY = REPO / "deploy" / "observability"
DASHBOARD = OBSERVABILITY / "grafana" / "roadie.json"
ALERTS = OBSERVABILITY / "alerts.yml"
# The comparison that ends an alert expression: `signal OP threshold`.
THRESHOLD = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*[-\d.e]+\s*$")


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail("prometheus is not installed (.ci/run installs Debian's package)", pytrace=False)
    return found


def query(port: int, expr: str) -> dict[str, Any]:
    url = f"http://{HOST}:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def until_ready(prometheus: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Waits for Prometheus's own readiness endpoint: it listens only after
    opening its TSDB and loading the rules, which a slow machine stretches
    past the server's start. A Prometheus that exited fails with its log."""

    def ready() -> bool:
        if prometheus.poll() is not None:
            raise AssertionError(f"prometheus exited with {prometheus.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/-/ready", timeout=5) as answer:
                return int(answer.status) == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    wait_until(ready, "prometheus to say it is ready")


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in board["panels"] for target in panel["targets"]]


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_every_dashboard_query_and_alert_rule_has_series(pb, tmp_path: Path) -> None:  # noqa: F811
    promtool = shutil.which("promtool")
    assert promtool, "promtool ships with prometheus"
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    upstream = Upstream()
    port, server_admin, worker_admin, prom_port = free_port(), free_port(), free_port(), free_port()
    env = base_env(f"sqlite://{tmp_path}/roadie.db", upstream, None)
    server = Process(
        "roadie-server",
        env | {"ROADIE__SERVER__LISTEN": f"{HOST}:{port}", "ROADIE__ADMIN__LISTEN": f"{HOST}:{server_admin}"},
        tmp_path / "server.log",
    )
    worker = Process(
        "roadie-worker",
        env | {"ROADIE__ADMIN__LISTEN": f"{HOST}:{worker_admin}", "ROADIE__WORKER__CONCURRENCY": "1"},
        tmp_path / "worker.log",
    )
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "roadie-server", "static_configs": [{"targets": [f"{HOST}:{server_admin}"]}]},
            {"job_name": "roadie-worker", "static_configs": [{"targets": [f"{HOST}:{worker_admin}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={HOST}:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
    )
    try:
        until_serving(f"{HOST}:{port}", "roadie.v1.Cache")
        until_ready(prometheus, prom_port, tmp_path / "prometheus.log")
        channel = grpc.insecure_channel(f"{HOST}:{port}", options=CHANNEL_OPTIONS)
        cache = pb.cache_grpc.CacheStub(channel)
        answer = cache.Fetch(
            pb.cache.FetchRequest(provider="test", path="artist/1", mode=pb.cache.FETCH_MODE_WAIT), timeout=WAIT
        )
        assert answer.status == pb.cache.LOOKUP_STATUS_HIT
        cache.Get(pb.cache.GetRequest(key=answer.entry.key), timeout=WAIT)
        # One open watcher for the watchers' panel.
        watch = cache.Watch(pb.cache.WatchRequest(), timeout=120)
        next(watch)
        for path in ("gated/1", "gated/2"):
            cache.Fetch(
                pb.cache.FetchRequest(provider="test", path=path, mode=pb.cache.FETCH_MODE_BACKGROUND), timeout=WAIT
            )

        queries = dashboard_queries()
        assert len(queries) >= 10, queries

        def empty() -> list[str]:
            return [f"{title}: {expr}" for title, expr in queries if not query(prom_port, expr)["data"]["result"]]

        # Prometheus is another process: its view is read through its API
        # until every query has series (rates need two scrapes), bounded.
        wait_until(lambda: not empty(), "every dashboard query to return series")

        rules = alert_rules()
        assert {r["alert"] for r in rules} >= {
            "RoadieOldestJobTooOld",
            "RoadieProviderPausedLong",
            "RoadieHitRatioCollapse",
            "RoadieNotReady",
            "RoadieChangeStreamLag",
        }
        for rule in rules:
            expr = " ".join(rule["expr"].split())
            whole = query(prom_port, expr)
            assert whole["status"] == "success", (rule["alert"], whole)
            signal = THRESHOLD.sub("", expr)
            assert signal != expr, f"{rule['alert']}: no threshold at the end of {expr!r}"
            assert query(prom_port, signal)["data"]["result"], f"{rule['alert']}: {signal!r} has no series"

        assert set(rules_health(prom_port)) == {r["alert"] for r in rules}
        wait_until(lambda: all(h == "ok" for h in rules_health(prom_port).values()), "every rule to evaluate")
        print(f"\n{len(queries)} dashboard queries and {len(rules)} alert rules have series")
    finally:
        upstream.gate.set()
        prometheus.terminate()
        prometheus.wait(timeout=WAIT)
        codes = (worker.stop(), server.stop())
    assert codes == (0, 0), f"exit codes {codes}\n{server.output()}\n{worker.output()}"


def rules_health(port: int) -> dict[str, str]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/api/v1/rules", timeout=10) as answer:
        groups = json.load(answer)["data"]["groups"]
    return {r["name"]: r["health"] for g in groups for r in g["rules"]}
