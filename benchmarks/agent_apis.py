"""The same load through chat, the Responses API and the Messages API, side
by side in one run, on the mock engine (the gateway alone: what differs
between the three is their front door).

One server (pinned to CPU 0, `lemur bench` to CPU 1), rounds alternating the
order of the APIs; medians per API, the ratio to chat, and the server's CPU
time per request (steadier than throughput on a shared machine).

    .venv/bin/python benchmarks/agent_apis.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway_revisions import PY, REPO, bench, cpu_seconds, pinned

from lemur.server.live import LiveServer, free_port, wait_ready

APIS = ("chat", "responses", "messages")
SCENARIOS = {
    "streaming 64 tokens, 128 streams": (
        ["--concurrency", "128", "--num-requests", "512", "--output-len", "64"],
        "output_token_throughput",
    ),
    "non-streaming, max_tokens 1, 32 in flight": (
        ["--no-stream", "--concurrency", "32", "--num-requests", "2000", "--output-len", "1"],
        "request_throughput",
    ),
}


def start(model: Path, log: Path, cpu: int | None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    flags = ["--engine", "mock", "--mock-tokens-per-s", "100", "--port", str(port), "--log-format", "text",
             "--log-level", "WARNING", "--responses-store", "none"]  # fmt: skip
    cmd = [*pinned(cpu), PY, "-m", "lemur", "serve", str(model), *flags]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=log.parent, stdout=f, stderr=subprocess.STDOUT)
    wait_ready(LiveServer(f"http://127.0.0.1:{port}", None, proc, log), timeout=120)
    return proc, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "agent-apis.json")
    args = parser.parse_args(argv)
    server_cpu, client_cpu = (None, None) if args.no_pin else (0, 1)
    work = Path(tempfile.mkdtemp(prefix="lemur-apis-"))
    from lemur.training.tiny import build_tiny_checkpoint

    model = build_tiny_checkpoint(work / "tiny")
    figures = {s: {api: [] for api in APIS} for s in SCENARIOS}
    cpu = {s: {api: [] for api in APIS} for s in SCENARIOS}
    proc, port = start(model, work / "server.log", server_cpu)
    try:
        for r in range(args.rounds):
            for api in APIS if r % 2 == 0 else APIS[::-1]:
                for scenario, (bench_args, figure) in SCENARIOS.items():
                    before = cpu_seconds(proc.pid)
                    report = bench(port, model, [*bench_args, "--endpoint", api], work / f"{api}.json", client_cpu)
                    cpu_us = (cpu_seconds(proc.pid) - before) / report["completed"] * 1e6
                    figures[scenario][api].append(report[figure])
                    cpu[scenario][api].append(cpu_us)
                    print(f"round {r} {api:<9} {scenario}: {report[figure]:.1f}, server CPU {cpu_us:.0f} us/request")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    summary: dict[str, dict] = {}
    for scenario, (_, figure) in SCENARIOS.items():
        chat = statistics.median(figures[scenario]["chat"])
        rows = {}
        for api in APIS:
            value, cpu_us = statistics.median(figures[scenario][api]), statistics.median(cpu[scenario][api])
            rows[api] = {figure: value, "ratio_to_chat": value / chat, "cpu_us_per_request": cpu_us,
                         "rounds": figures[scenario][api]}  # fmt: skip
            print(f"{scenario}: {api} {value:.1f} {figure} ({value / chat:.3f} of chat), {cpu_us:.0f} us CPU/request")
        summary[scenario] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "pinned": not args.no_pin, "python": sys.version.split()[0]}
    args.out.write_text(json.dumps({**meta, "scenarios": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
