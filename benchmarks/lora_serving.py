"""What serving LoRA adapters costs: base-only traffic against 50/50
base/adapter traffic on one server, and the time to load an adapter at run
time.

One real gateway (`lemur serve MODEL --lora-modules NAME=ADAPTER`, vLLM engine
on this machine, runtime loading on). Each measurement runs two `lemur bench`
processes at once, each with half the concurrency: both on the base model
(base-only), or one on the base and one on the adapter (50/50). Same prompts,
same output lengths (ignore_eos), rounds alternating; reports the total
output tokens/s of each (median of rounds) and their ratio. Then loads and
unloads the adapter under a new name a few times, timing the request.

    .venv/bin/python benchmarks/lora_serving.py --model models/lemur-tiny-chat \\
        --adapter models/adapters/house-style --out benchmarks/results/lora.json
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
sys.path.insert(0, str(REPO))

from lemur.server.live import running  # noqa: E402

ADMIN_KEY = "lemur-bench-admin"
ADAPTER = "adapter"


def bench_cmd(url: str, model: Path, name: str, out: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "lemur", "bench", "--base-url", f"{url}/v1", "--model", name, "--tokenizer",
            str(model), "--input-len", "128", "--output-len", str(args.output_len), "--ignore-eos",
            "--concurrency", str(args.concurrency // 2), "--num-requests", str(args.requests // 2), "--warmup", "2",
            "--temperature", "1.0", "--no-plots", "--quiet", "--out", str(out)]  # fmt: skip


def run_pair(url: str, model: Path, names: tuple[str, str], work: Path, tag: str, args: argparse.Namespace) -> float:
    """Two bench processes at once; their summed output tokens/s."""
    outs = [work / f"{tag}-{i}.json" for i in range(2)]
    procs = [subprocess.Popen(bench_cmd(url, model, n, o, args), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for n, o in zip(names, outs, strict=True)]  # fmt: skip
    total = 0.0
    for proc, out in zip(procs, outs, strict=True):
        _, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"bench failed: {err.decode()[-2000:]}")
        summary = json.loads(out.read_text())["summary"]
        if summary["failed"]:
            raise SystemExit(f"{summary['failed']} requests failed: {summary['errors']}")
        total += summary["output_token_throughput"]
    return total


def load_times(url: str, adapter: Path, times: int) -> list[dict[str, float]]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    rows = []
    for i in range(times):
        name = f"reloaded-{i}"
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(adapter)},
                       headers=headers, timeout=120)  # fmt: skip
        wall = time.perf_counter() - t0
        r.raise_for_status()
        body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        t1 = time.perf_counter()
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).raise_for_status()
        first = time.perf_counter() - t1
        httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=headers, timeout=120)
        rows.append({"load_request_s": wall, "server_load_s": r.json()["load_seconds"], "first_request_s": first})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--loads", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lemur-lora-"))
    extra = ("--lora-modules", f"{ADAPTER}={args.adapter}", "--lora-admin-key", ADMIN_KEY, "--max-loras", "2")
    with running(args.model, extra=extra) as url:
        base = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        runs: dict[str, list[float]] = {"base_only": [], "half_adapter": []}
        for r in range(args.rounds):
            order = ("base_only", "half_adapter") if r % 2 == 0 else ("half_adapter", "base_only")
            for kind in order:
                names = (base, base) if kind == "base_only" else (base, ADAPTER)
                runs[kind].append(run_pair(url, args.model, names, work, f"{kind}-{r}", args))
                print(f"round {r} {kind}: {runs[kind][-1]:.1f} output tokens/s", flush=True)
        loads = load_times(url, args.adapter, args.loads)
    base_tps, mixed_tps = statistics.median(runs["base_only"]), statistics.median(runs["half_adapter"])
    load_s = statistics.median(x["load_request_s"] for x in loads)
    result = {"model": str(args.model), "adapter": str(args.adapter), "date": time.strftime("%Y-%m-%d"),
              "concurrency": args.concurrency, "output_len": args.output_len, "runs": runs,
              "base_only": base_tps, "half_adapter": mixed_tps, "ratio": mixed_tps / base_tps,
              "loads": loads, "load_request_median_s": load_s}  # fmt: skip
    print(f"50/50 base/adapter / base-only = {mixed_tps:.1f} / {base_tps:.1f} = {mixed_tps / base_tps:.3f}; "
          f"runtime load {load_s * 1e3:.1f} ms (median of {len(loads)})")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
