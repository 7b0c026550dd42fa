"""What telemetry costs a Get hit: roadie-server with no OTEL_* variables,
the same server exporting over OTLP/gRPC to a real receiver with 1 % and
with every trace sampled, and (with --baseline) a server built before
telemetry existed; alternating, several rounds, medians and ratios.

    target/ci-python/bin/python bench/telemetry.py [--rounds 5] [--seconds 5] [--baseline BIN]

Needs the release binaries (cargo build --release -p roadie-server -p
roadie-bench) and the telemetry test's Python packages
(pip install -r telemetry/tests/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "telemetry" / "tests"))
from test_otlp import HOST, Receiver, free_port, until_serving  # noqa: E402

RELEASE = REPO / "target" / "release"


def round_of(variant: str, binary: Path, receiver: Receiver, seconds: int, work: Path) -> dict:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "ROADIE__STORE__URL": f"sqlite://{work}/bench-{port}.db",
        "ROADIE__SERVER__LISTEN": f"{HOST}:{port}",
    }
    ratio = VARIANTS[variant]
    if ratio is not None:
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{receiver.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(ratio),
        }
    server = subprocess.Popen([str(binary)], env=env, stderr=subprocess.DEVNULL)
    try:
        until_serving(f"{HOST}:{port}", "roadie.v1.Cache")
        out = subprocess.run(
            [str(RELEASE / "roadie-bench"), "load", "--addr", f"{HOST}:{port}", "--scenario", "get-hit",
             "--duration", f"{seconds}s", "--json"],
            capture_output=True, text=True, check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


# Variant → trace sampling ratio exported (None: no OTEL_* set).
VARIANTS: dict[str, float | None] = {
    "before telemetry (--baseline)": None,
    "off (no OTEL_* set)": None,
    "on, 1 % of traces": 0.01,
    "on, every trace": 1.0,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="a roadie-server built before telemetry")
    args = parser.parse_args()
    receiver = Receiver()
    binaries = {name: RELEASE / "roadie-server" for name in VARIANTS}
    if args.baseline:
        binaries["before telemetry (--baseline)"] = args.baseline
    else:
        del binaries["before telemetry (--baseline)"]
    results: dict[str, list[dict]] = {name: [] for name in binaries}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.rounds):
            for name, binary in binaries.items():
                results[name].append(round_of(name, binary, receiver, args.seconds, Path(work)))

    def median(name: str, field: str) -> float:
        return statistics.median(r[field] for r in results[name])

    off = median("off (no OTEL_* set)", "throughput")
    print(f"Get hit, 64 callers, {args.rounds} rounds of {args.seconds} s each, variants alternating (median):")
    print("| roadie-server | calls/s | vs off | p50 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- |")
    for name in binaries:
        print(f"| {name} | {median(name, 'throughput'):.0f} | {median(name, 'throughput') / off:.2f} "
              f"| {median(name, 'p50_us') / 1000:.3f} | {median(name, 'p99_us') / 1000:.3f} |")
    print(f"spans received: {len(receiver.spans())}")


if __name__ == "__main__":
    main()
