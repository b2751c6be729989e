"""`lemur bench`: load-test any OpenAI-compatible endpoint.

    lemur bench --base-url http://127.0.0.1:8000/v1 --model lemur-tiny-chat \\
        --concurrency 16 --num-requests 200 --input-len 128 --output-len 64 --ignore-eos --out run.json
    lemur bench ... --request-rate 8 --burstiness 1.0 --duration 60
    lemur bench compare A.json B.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

from lemur.loadtest.client import RequestResult, Target, send
from lemur.loadtest.dataset import BenchPrompt, from_jsonl, from_sharegpt, load_tokenizer, synthetic
from lemur.loadtest.load import Load, run_load
from lemur.loadtest.report import Slo, compare_table, summarize
from lemur.loadtest.wire import WIRES


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lemur bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    t = p.add_argument_group("target")
    t.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    t.add_argument("--model", default=None, help="model name (default: the first of GET /models)")
    t.add_argument("--api-key", default=None)
    t.add_argument("--endpoint", choices=sorted(WIRES), default="chat",
                   help="chat, completions, responses (OpenAI's Responses API) or messages (Anthropic's)")  # fmt: skip
    t.add_argument("--no-stream", action="store_true", help="non-streaming requests (TTFT = E2E)")
    t.add_argument("--tokenizer", default=None, help="local tokenizer for token counts (default: --model if local)")
    l = p.add_argument_group("load")  # noqa: E741
    l.add_argument("--concurrency", type=int, default=None, help="closed loop with this many in flight (default 8)")
    l.add_argument("--request-rate", type=float, default=None, help="open loop, requests/s (Poisson)")
    l.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of inter-arrivals (1 = Poisson)")
    l.add_argument("--ramp-to", type=float, default=None, help="with --request-rate: rise linearly to this rate")
    l.add_argument("--max-concurrency", type=int, default=None, help="cap in-flight requests of an open loop")
    l.add_argument("--num-requests", type=int, default=100)
    l.add_argument("--duration", type=float, default=None, help="stop launching after this many seconds")
    l.add_argument("--warmup", type=int, default=2, help="requests sent first and not counted")
    l.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=["synthetic", "jsonl", "sharegpt"], default="synthetic")
    d.add_argument("--dataset-path", type=Path, default=None)
    d.add_argument("--input-len", type=int, default=128)
    d.add_argument("--output-len", type=int, default=64, help="max_tokens (synthetic, and default for files)")
    d.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in len * (1 +- r)")
    d.add_argument("--ignore-eos", action="store_true", help="fix output lengths (vLLM extension)")
    d.add_argument("--temperature", type=float, default=0.0)
    d.add_argument("--seed", type=int, default=0)
    example = '{"response_format": {"type": "json_object"}}'
    d.add_argument("--extra-body", type=_json_object, default={},
                   help=f"JSON object merged into every request, e.g. '{example}'")  # fmt: skip
    o = p.add_argument_group("output")
    o.add_argument("--slo-ttft-ms", type=float, default=None)
    o.add_argument("--slo-tpot-ms", type=float, default=None)
    o.add_argument("--slo-e2e-ms", type=float, default=None)
    o.add_argument("--out", type=Path, default=None, help="results JSON (plots are written beside it)")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _prompts(args: argparse.Namespace, tokenizer) -> list[BenchPrompt]:
    if args.dataset == "synthetic":
        return synthetic(args.num_requests, args.input_len, args.output_len, args.range_ratio, args.seed, tokenizer)
    if args.dataset_path is None:
        raise SystemExit(f"--dataset {args.dataset} needs --dataset-path")
    if args.dataset == "jsonl":
        return from_jsonl(args.dataset_path, args.output_len)
    return from_sharegpt(args.dataset_path, args.output_len, tokenizer)


async def _bench(
    args: argparse.Namespace, target: Target, prompts: list[BenchPrompt]
) -> tuple[list[RequestResult], float, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0, force_close=False, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        for p in prompts[: args.warmup]:
            await send(http, target, p, time.perf_counter())
        load = Load(concurrency=args.concurrency or (None if args.request_rate else 8), rate=args.request_rate,
                    burstiness=args.burstiness, ramp_to=args.ramp_to, num_requests=args.num_requests,
                    duration_s=args.duration, max_concurrency=args.max_concurrency, seed=args.seed)  # fmt: skip
        results: list[RequestResult] = []
        bar = None
        if not args.quiet:
            from tqdm import tqdm

            bar = tqdm(total=args.num_requests, desc="bench", unit="req", dynamic_ncols=True)

        def done(r: RequestResult) -> None:
            results.append(r)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=sum(not x.ok for x in results))

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()

        async def timed(p: BenchPrompt) -> RequestResult:
            return await send(http, target, p, t0)

        await run_load(load, prompts, timed, done)
        duration = time.perf_counter() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        if bar is not None:
            bar.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return results, duration, cpu


def _default_model(base_url: str, api_key: str | None) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=30).json()["data"][0]["id"]


def run(argv: list[str]) -> int:
    args = make_parser().parse_args(argv)
    model = args.model or _default_model(args.base_url, args.api_key)
    tokenizer = load_tokenizer(args.tokenizer or model)
    target = Target(args.base_url, model, args.api_key, args.endpoint, not args.no_stream, args.ignore_eos,
                    args.temperature, args.extra_body)  # fmt: skip
    prompts = _prompts(args, tokenizer)
    results, duration, cpu = asyncio.run(_bench(args, target, prompts))
    slo = Slo(args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms)
    summary = summarize(results, duration, slo, cpu)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"config": {**config, "model": model, "tokenizer_used": tokenizer is not None},
              "summary": summary, "requests": [asdict(r) for r in results]}  # fmt: skip
    _print(summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        if not args.no_plots:
            from lemur.loadtest.plots import write_plots

            for path in write_plots(results, summary["timeline"], args.out.with_suffix("")):
                print(f"wrote {path}")
        print(f"wrote {args.out}")
    return 0


def _print(s: dict) -> None:
    print(f"requests: {s['sent']} sent, {s['completed']} completed, {s['failed']} failed {s['errors'] or ''}")
    print(f"throughput: {s['request_throughput']:.2f} req/s, {s['output_token_throughput']:.1f} output tok/s "
          f"over {s['duration_s']:.1f}s (client CPU {s['client_cpu_percent']:.0f}%)")  # fmt: skip
    for name in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        st = s[name]
        if st["mean"] is not None:
            print(f"{name:<8} mean {st['mean']:8.2f}  p50 {st['p50']:8.2f}  p90 {st['p90']:8.2f}  "
                  f"p99 {st['p99']:8.2f}")  # fmt: skip
    g = s["goodput"]
    if g["slo"]:
        print(f"goodput: {g['requests_per_s']:.2f} req/s ({100 * g['fraction']:.0f}% within {g['slo']})")


def compare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lemur bench compare", description="Two result files side by side, B/A ratios.")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args(argv)
    a, b = json.loads(args.a.read_text()), json.loads(args.b.read_text())
    print(compare_table(a, b, args.a.stem[:13], args.b.stem[:13]))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare":
        return compare(argv[1:])
    return run(argv)


if __name__ == "__main__":
    raise SystemExit(main())
