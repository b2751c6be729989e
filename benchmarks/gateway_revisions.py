"""Gateway throughput of two revisions side by side, on the mock engine.

The gateway alone (`lemur serve --engine mock`: no model, tokens at a fixed
pace) at the loads where it is the bottleneck on this machine: non-streaming
max_tokens 1 with 32 in flight (requests/s), and 128 streams of 64 tokens
(tokens/s). The base revision runs from a git worktree with the same
virtualenv; the two servers run one after the other (two at once would fight
over the cores), rounds alternating, and the report gives each revision's
median and the ratio new / base.

    .venv/bin/python benchmarks/gateway_revisions.py --base 90562ca --out benchmarks/results/revisions.json
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

import httpx

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
SCENARIOS = {
    # name: lemur bench arguments, and the figure compared
    "non-streaming, max_tokens 1, 32 in flight": (
        ["--no-stream", "--concurrency", "32", "--num-requests", "2000", "--output-len", "1"],
        "request_throughput",
    ),
    "streaming 64 tokens, 128 streams": (
        ["--concurrency", "128", "--num-requests", "512", "--output-len", "64"],
        "output_token_throughput",
    ),
}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cwd: Path, model: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [PY, "-m", "server", "serve", str(model), "--engine", "mock", "--mock-tokens-per-s", "100",
           "--port", str(port), "--log-format", "text", "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server in {cwd} exited: see {log}")
        time.sleep(0.3)
    raise SystemExit(f"server in {cwd} not ready: see {log}")


def bench(port: int, model: Path, args: list[str], out: Path) -> dict:
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [PY, "-m", "server", "bench", "--base-url", url, "--tokenizer", str(model), "--input-len", "32",
           "--ignore-eos", "--warmup", "32", "--no-plots", "--quiet", "--out", str(out), *args]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=600)
    summary = json.loads(out.read_text())["summary"]
    if summary["failed"]:
        raise SystemExit(f"{summary['failed']} requests failed: {summary['errors']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="90562ca", help="the revision to compare with (default %(default)s)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint for the tokenizer (default: tiny)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "revisions.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lemur-revisions-"))
    model = args.model
    if model is None:
        from training.tiny import build_tiny_checkpoint

        model = build_tiny_checkpoint(work / "tiny")
    base_tree = work / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=REPO, check=True)
    trees = {"base": base_tree, "new": REPO}
    results: dict[str, dict[str, list[float]]] = {s: {"base": [], "new": []} for s in SCENARIOS}
    try:
        for r in range(args.rounds):
            for name in ("base", "new") if r % 2 == 0 else ("new", "base"):
                proc, port = start(trees[name], model, work / f"{name}-{r}.log")
                try:
                    for scenario, (bench_args, figure) in SCENARIOS.items():
                        report = bench(port, model, bench_args, work / f"{name}-{r}.json")
                        results[scenario][name].append(report[figure])
                        print(f"round {r} {name:<4} {scenario}: {report[figure]:.1f}", flush=True)
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=REPO, check=False)
    summary = {}
    for scenario, (_, figure) in SCENARIOS.items():
        base, new = (statistics.median(results[scenario][k]) for k in ("base", "new"))
        summary[scenario] = {"figure": figure, "base": base, "new": new, "ratio": new / base,
                             "rounds": results[scenario]}  # fmt: skip
        print(f"{scenario}: base {base:.1f}, new {new:.1f} {figure}; new / base = {new / base:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"base": args.base, "scenarios": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
