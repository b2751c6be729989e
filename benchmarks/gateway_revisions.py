"""Gateway throughput of two revisions side by side, on the mock engine.

The gateway alone (`lemur serve --engine mock`: no model, tokens at a fixed
pace) at the loads where it is the bottleneck on this machine: non-streaming
max_tokens 1 with 32 in flight (requests/s), and 128 streams of 64 tokens
(tokens/s). The base revision runs from a git worktree with the same
virtualenv; the two servers run one after the other (two at once would fight
over the cores), rounds alternating, and the report gives each revision's
median and the ratio new / base. It also reads the server process's CPU
time (user + system, from /proc) across each run and reports CPU
microseconds per request: unlike throughput, that does not move when a
neighbour takes the machine, so it is the steadier of the two. The server is pinned to CPU 0 and the load
generator to CPU 1 (`--no-pin` to let them float): unpinned, the two fight for
both cores and one revision's rounds can differ by 2x.

    .venv/bin/python benchmarks/gateway_revisions.py --base 90562ca --out benchmarks/results/revisions.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lemur.server.live import LiveServer, free_port, wait_ready  # noqa: E402
from tests.support.layout import lay_out  # noqa: E402

PY = sys.executable
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "run_shell", "description": "Run a shell command.",
     "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}},
                    "timeout_ms": {"type": "integer", "minimum": 1}}, "required": ["command"]}}},
]  # fmt: skip
SCENARIOS = {
    # name: lemur bench arguments, and the figure compared
    "non-streaming, max_tokens 1, 32 in flight": (
        ["--no-stream", "--concurrency", "32", "--num-requests", "2000", "--output-len", "1"],
        "request_throughput",
    ),
    # Two function tools, tool_choice auto: the schemas are checked and converted
    # once, then every request takes the cached grammar (the agents' case).
    "non-streaming with 2 tools, max_tokens 1, 32 in flight": (
        [
            "--no-stream",
            "--concurrency",
            "32",
            "--num-requests",
            "2000",
            "--output-len",
            "1",
            "--extra-body",
            json.dumps({"tools": TOOLS, "tool_choice": "auto"}),
        ],
        "request_throughput",
    ),
    "streaming 64 tokens, 128 streams": (
        ["--concurrency", "128", "--num-requests", "512", "--output-len", "64"],
        "output_token_throughput",
    ),
}


def pinned(cpu: int | None) -> list[str]:
    return ["taskset", "-c", str(cpu)] if cpu is not None else []


def serve_command(tree: Path, site: Path) -> tuple[list[str], Path]:
    """How to run `lemur serve` from a revision's tree, and from where: a tree
    from before the one import name ran as `python -m server` from its root;
    since, its wings are laid out as installed (tests/support/layout.py)."""
    if (tree / "server" / "__main__.py").exists():
        return [PY, "-m", "server", "serve"], tree
    return [PY, "-m", "lemur", "serve"], lay_out(tree, site)


def start(tree: Path, site: Path, model: Path, log: Path, cpu: int | None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    serve, cwd = serve_command(tree, site)
    cmd = [*pinned(cpu), *serve, str(model), "--engine", "mock", "--mock-tokens-per-s", "100",
           "--port", str(port), "--log-format", "text", "--log-level", "WARNING"]  # fmt: skip
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_ready(LiveServer(f"http://127.0.0.1:{port}", None, proc, log), timeout=120)
    except RuntimeError as exc:
        raise SystemExit(f"server from {tree} did not start: {exc}") from exc
    return proc, port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench(port: int, model: Path, args: list[str], out: Path, cpu: int | None) -> dict:
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [*pinned(cpu), PY, "-m", "lemur", "bench", "--base-url", url, "--tokenizer", str(model), "--input-len", "32",
           "--ignore-eos", "--warmup", "32", "--no-plots", "--quiet", "--out", str(out), *args]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=600)
    summary = json.loads(out.read_text())["summary"]
    if summary["failed"]:
        raise SystemExit(f"{summary['failed']} requests failed: {summary['errors']}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="90562ca", help="the revision to compare with (default %(default)s)")
    parser.add_argument("--new", default=None, help="the revision to measure (default: the working tree)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint for the tokenizer (default: tiny)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and the load generator")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "revisions.json")
    args = parser.parse_args(argv)
    server_cpu, client_cpu = (None, None) if args.no_pin else (0, 1)
    work = Path(tempfile.mkdtemp(prefix="lemur-revisions-"))
    model = args.model
    if model is None:
        from lemur.training.tiny import build_tiny_checkpoint

        model = build_tiny_checkpoint(work / "tiny")
    trees = {"base": work / "base", "new": work / "new" if args.new else REPO}
    for name, rev in (("base", args.base), ("new", args.new)):
        if rev:
            subprocess.run(["git", "worktree", "add", "--detach", str(trees[name]), rev], cwd=REPO, check=True)
    results: dict[str, dict[str, list[float]]] = {s: {"base": [], "new": []} for s in SCENARIOS}
    cpu_per_request: dict[str, dict[str, list[float]]] = {s: {"base": [], "new": []} for s in SCENARIOS}
    try:
        for r in range(args.rounds):
            for name in ("base", "new") if r % 2 == 0 else ("new", "base"):
                proc, port = start(trees[name], work / f"{name}-site", model, work / f"{name}-{r}.log", server_cpu)
                try:
                    for scenario, (bench_args, figure) in SCENARIOS.items():
                        before = cpu_seconds(proc.pid)
                        report = bench(port, model, bench_args, work / f"{name}-{r}.json", client_cpu)
                        cpu_us = (cpu_seconds(proc.pid) - before) / report["completed"] * 1e6
                        results[scenario][name].append(report[figure])
                        cpu_per_request[scenario][name].append(cpu_us)
                        line = f"{report[figure]:.1f}, server CPU {cpu_us:.0f} us/request"
                        print(f"round {r} {name:<4} {scenario}: {line}", flush=True)
                finally:
                    proc.terminate()
                    proc.wait(timeout=60)
    finally:
        for name, rev in (("base", args.base), ("new", args.new)):
            if rev:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees[name])], cwd=REPO, check=False)
    summary = {}
    for scenario, (_, figure) in SCENARIOS.items():
        base, new = (statistics.median(results[scenario][k]) for k in ("base", "new"))
        cpu_base, cpu_new = (statistics.median(cpu_per_request[scenario][k]) for k in ("base", "new"))
        summary[scenario] = {"figure": figure, "base": base, "new": new, "ratio": new / base,
                             "rounds": results[scenario], "cpu_us_per_request": cpu_per_request[scenario],
                             "cpu_ratio": cpu_base / cpu_new}  # fmt: skip
        print(f"{scenario}: base {base:.1f}, new {new:.1f} {figure}; new / base = {new / base:.3f}; "
              f"server CPU per request base {cpu_base:.0f} us, new {cpu_new:.0f} us, base / new = "
              f"{cpu_base / cpu_new:.3f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"base": args.base, "new": args.new or "working tree", "pinned": not args.no_pin}
    meta["date"] = time.strftime("%Y-%m-%d")
    args.out.write_text(json.dumps({**meta, "scenarios": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
