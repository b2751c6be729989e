"""The cost of a grammar: chat throughput with a json_schema against plain chat.

One real gateway (`lemur serve`, vLLM engine on this machine) on a model,
and `lemur bench` against it, alternating plain chat and chat with
`response_format: json_schema`, same load (closed loop, streaming) and the
same number of output tokens per request: the schema asks for a long array
of digits, so both kinds run to max_tokens and the grammar is in force for
every token. Reports output tokens/s of each (median of the rounds), the
ratio json_schema / plain, and the time to build a grammar: the gateway's
own conversion (`lemur:grammar_build_seconds`) and the first request with a
new schema against a repeat of it (vLLM compiles it in the engine, then
caches it).

    .venv/bin/python benchmarks/structured_outputs.py --out benchmarks/results/structured.json
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

DIGIT = {"type": "integer", "minimum": 0, "maximum": 9}
DIGITS = {"type": "object", "required": ["digits"],
          "properties": {"digits": {"type": "array", "minItems": 400, "items": DIGIT}}}  # fmt: skip


def schema_body(name: str) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": DIGITS}}}


def bench(url: str, model: Path, extra: dict, out: Path, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "lemur", "bench", "--base-url", f"{url}/v1", "--tokenizer",
           str(model), "--input-len", "128", "--output-len", str(args.output_len), "--ignore-eos",
           "--concurrency", str(args.concurrency), "--num-requests", str(args.requests), "--warmup", "4",
           "--temperature", "1.0", "--no-plots", "--quiet", "--out", str(out),
           "--extra-body", json.dumps(extra)]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=1800)
    summary = json.loads(out.read_text())["summary"]
    if summary["failed"]:
        raise SystemExit(f"{summary['failed']} requests failed: {summary['errors']}")
    return summary["output_token_throughput"]


def first_and_repeat(url: str, model_name: str) -> tuple[float, float]:
    """Latency of one short request with a schema never seen before, then the same again."""
    body = {"model": model_name, "messages": [{"role": "user", "content": "digits"}], "max_tokens": 4,
            **schema_body(f"fresh{time.time_ns()}")}  # fmt: skip
    body["response_format"]["json_schema"]["schema"] = {**DIGITS, "description": str(time.time_ns())}
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120).raise_for_status()
        times.append(time.perf_counter() - t0)
    return times[0], times[1]


def grammar_build_seconds(url: str) -> tuple[float, int]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("lemur:grammar_build_seconds_")}  # fmt: skip
    count = int(values.get("lemur:grammar_build_seconds_count", 0))
    return values.get("lemur:grammar_build_seconds_sum", 0.0) / max(count, 1), count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="default: the tiny untrained checkpoint, built here")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="lemur-structured-"))
    model = args.model
    if model is None:
        from lemur.training.tiny import build_tiny_checkpoint

        model = build_tiny_checkpoint(work / "tiny")
    with running(model) as url:
        name = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        first, repeat = first_and_repeat(url, name)
        runs: dict[str, list[float]] = {"plain": [], "json_schema": []}
        for r in range(args.rounds):
            order = ("plain", "json_schema") if r % 2 == 0 else ("json_schema", "plain")
            for kind in order:
                extra = schema_body("digits") if kind == "json_schema" else {}
                runs[kind].append(bench(url, model, extra, work / f"{kind}-{r}.json", args))
                print(f"round {r} {kind}: {runs[kind][-1]:.1f} output tokens/s", flush=True)
        build_mean, builds = grammar_build_seconds(url)
    plain, constrained = statistics.median(runs["plain"]), statistics.median(runs["json_schema"])
    result = {"model": str(model), "date": time.strftime("%Y-%m-%d"), "runs": runs, "plain": plain,
              "json_schema": constrained, "ratio": constrained / plain,
              "gateway_grammar_build_mean_s": build_mean, "gateway_grammar_builds": builds,
              "first_request_new_schema_s": first, "same_schema_again_s": repeat}  # fmt: skip
    print(f"json_schema / plain = {constrained:.1f} / {plain:.1f} = {constrained / plain:.3f}; gateway grammar build "
          f"{build_mean * 1e3:.2f} ms mean over {builds}; new schema {first:.3f} s, again {repeat:.3f} s")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
