"""Gateway benchmarks (issue 5), all on this machine, in one run:

1. cross-check: `lemur bench` and `vllm bench serve` on the same server and load;
2. our gateway versus vLLM's own OpenAI server: same checkpoint, same engine
   arguments, same loads (64 concurrent streams x 128 tokens; Poisson near
   saturation), servers run one after the other (two at once would fight
   over the 2 cores), each scenario run twice, alternating;
3. gateway capacity on the mock engine: added latency at increasing load.

    .venv/bin/python benchmarks/gateway_bench.py --model models/lemur-tiny-chat --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lemur.server import live

PY = sys.executable
# --pin: the server on CPU 0 and the load generators on CPU 1, so that a
# client's own CPU use cannot slow the server it measures (2-core machines).
PIN = {"server": [], "client": []}


class Server:
    """A server process on `port`, up once /health answers and one request has warmed it
    (vLLM's own server has no /ready)."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port = proc, port
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    httpx.post(self.url + "/completions", json={"model": "m", "prompt": "x", "max_tokens": 1})
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: see {log}")
            time.sleep(0.5)
        raise SystemExit(f"server not up: see {log}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def gateway(model: str, name: str, out: Path, extra: list[str] = ()) -> Server:
    """`lemur serve` through the one launcher (lemur.server.live)."""
    log = out / f"gateway-{time.monotonic_ns()}.log"
    flags = ["--served-model-name", name, "--log-format", "text", *extra]
    server = live.launch(model, log, flags, prefix=PIN["server"])
    return Server(server.process, int(server.base_url.rsplit(":", 1)[1]), log)


def vllm_server(model: str, name: str, out: Path) -> Server:
    port = live.free_port()
    cmd = [PY, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", name,
           "--port", str(port), "--enforce-eager"]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", live.CPU_KVCACHE_GIB)}
    log = out / f"vllm-{port}.log"
    with log.open("w") as f:
        proc = subprocess.Popen([*PIN["server"], *cmd], env=env, stdout=f, stderr=subprocess.STDOUT)
    return Server(proc, port, log)


def lemur_bench(url: str, name: str, out: Path, args: list[str]) -> dict:
    path = out / f"{name}.json"
    cmd = [*PIN["client"], PY, "-m", "lemur.loadtest.cli", "--base-url", url, "--out", str(path), "--quiet", *args]
    subprocess.run(cmd, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return json.loads(path.read_text())["summary"]


VLLM_BENCH = (
    "import sys; from vllm.benchmarks.serve import add_cli_args, main; "
    "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
)


def vllm_bench(url_root: str, model: str, tokenizer: str, out: Path, n: int, conc: int, inp: int, outp: int) -> dict:
    subprocess.run([*PIN["client"], PY, "-c", VLLM_BENCH, "--backend", "openai-chat", "--base-url", url_root,
                    "--endpoint", "/v1/chat/completions", "--model", model, "--tokenizer", tokenizer,
                    "--dataset-name", "random", "--random-input-len", str(inp), "--random-output-len", str(outp),
                    "--num-prompts", str(n), "--max-concurrency", str(conc), "--ignore-eos", "--temperature", "0",
                    "--save-result", "--result-dir", str(out), "--result-filename", "vllm-bench.json"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return json.loads((out / "vllm-bench.json").read_text())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="models/lemur-tiny-chat")
    p.add_argument("--name", default="lemur-tiny-chat")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--skip", nargs="*", default=[], choices=["cross", "versus", "mock"])
    p.add_argument("--cross-concurrency", type=int, default=16)
    p.add_argument("--cross-rounds", type=int, default=6)
    p.add_argument("--pin", action="store_true", help="server on CPU 0, clients on CPU 1 (taskset)")
    args = p.parse_args()
    if args.pin:
        PIN.update(server=["taskset", "-c", "0"], client=["taskset", "-c", "1"])
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "summary.json"
    # Parts skipped this time keep their earlier results.
    results: dict = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    results.update({"machine": f"{os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d")})
    common = ["--model", args.name, "--tokenizer", args.model, "--ignore-eos", "--warmup", "4"]

    if "cross" not in args.skip:
        # Same server, same load, the two clients in alternating order, twice.
        c = args.cross_concurrency
        load = ["--concurrency", str(c), "--num-requests", str(10 * c), "--input-len", "64", "--output-len", "64"]
        runs: dict[str, list[dict]] = {"lemur_bench": [], "vllm_bench": []}
        srv = gateway(args.model, args.name, args.out)
        try:
            orders = [("vllm_bench", "lemur_bench"), ("lemur_bench", "vllm_bench")] * ((args.cross_rounds + 1) // 2)
            for rnd, order in enumerate(orders[: args.cross_rounds]):
                for tool in order:
                    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    if tool == "lemur_bench":
                        s = lemur_bench(srv.url, f"cross-lemur-{rnd}", args.out, [*common, *load])
                        row = {"output_tok_s": s["output_token_throughput"], "ttft_p50_ms": s["ttft_ms"]["p50"],
                               "tpot_p50_ms": s["tpot_ms"]["p50"], "duration_s": s["duration_s"]}  # fmt: skip
                    else:
                        v = vllm_bench(srv.url[: -len("/v1")], args.name, args.model, args.out, 10 * c, c, 64, 64)
                        row = {"output_tok_s": v["output_throughput"], "ttft_p50_ms": v["median_ttft_ms"],
                               "tpot_p50_ms": v["median_tpot_ms"], "duration_s": v["duration"]}  # fmt: skip
                    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    # The client process's whole CPU time (start-up included): on 2 cores it competes with the server.
                    row["client_cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
                    runs[tool].append(row)
        finally:
            srv.stop()
        # Medians over the rounds: single runs on a shared 2-core machine vary by ~10 %.
        median = {tool: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for tool, rows in runs.items()}
        ratio = {k: median["lemur_bench"][k] / median["vllm_bench"][k] for k in median["lemur_bench"]}
        results[f"cross_check_c{c}" + ("_pinned" if args.pin else "")] = {
            "runs": runs,
            "median": median,
            "lemur_over_vllm": ratio,
            "note": "both clients greedy (vllm bench --temperature 0); without it vllm bench leaves sampling to the "
            "server's defaults (temperature 0.6, top_p 0.9 here), a different and slower load",
        }
        print(json.dumps(results[f"cross_check_c{c}" + ("_pinned" if args.pin else "")], indent=1))

    if "versus" not in args.skip:
        scenarios = {"c64x128": [*common, "--concurrency", "64", "--num-requests", "256", "--input-len", "64",
                                 "--output-len", "128"]}  # fmt: skip
        versus: dict = {}
        for rnd in (1, 2):
            for label, start in (("gateway", gateway), ("vllm", vllm_server)):
                srv = start(args.model, args.name, args.out)
                try:
                    for scen, sargs in scenarios.items():
                        versus.setdefault(scen, {}).setdefault(label, []).append(
                            lemur_bench(srv.url, f"{scen}-{label}-{rnd}", args.out, sargs)
                        )
                    if "poisson" not in scenarios:  # near saturation: 90% of the closed-loop request rate
                        rate = 0.9 * versus["c64x128"][label][0]["request_throughput"]
                        scenarios["poisson"] = [*common, "--request-rate", f"{rate:.2f}", "--num-requests", "200",
                                                "--input-len", "64", "--output-len", "128"]  # fmt: skip
                        versus.setdefault("poisson", {}).setdefault(label, []).append(
                            lemur_bench(srv.url, f"poisson-{label}-{rnd}", args.out, scenarios["poisson"])
                        )
                finally:
                    srv.stop()
        table = {}

        def mean(runs: list[dict], key: str, sub: str | None) -> float:
            vals = [(r[key][sub] if sub else r[key]) for r in runs]
            return sum(vals) / len(vals)

        for scen, by in versus.items():
            row = {}
            for key, sub in (("output_token_throughput", None), ("request_throughput", None), ("ttft_ms", "p50"),
                             ("ttft_ms", "p99"), ("tpot_ms", "p50"), ("tpot_ms", "p99")):  # fmt: skip
                g, v = mean(by["gateway"], key, sub), mean(by["vllm"], key, sub)
                row[f"{key}{'.' + sub if sub else ''}"] = {"gateway": g, "vllm": v, "ratio": g / v if v else None}
            table[scen] = row
        results["gateway_vs_vllm"] = table
        print(json.dumps(table, indent=1))

    if "mock" not in args.skip:
        mock: dict = {}
        srv = gateway(args.model, args.name, args.out, ["--engine", "mock", "--mock-tokens-per-s", "100"])
        try:
            for conc in (1, 8, 32, 64):
                s = lemur_bench(srv.url, f"mock-nonstream-c{conc}", args.out, ["--model", args.name, "--no-stream",
                                "--concurrency", str(conc), "--num-requests", str(max(200, 20 * conc)),
                                "--output-len", "1", "--input-len", "16", "--no-plots"])  # fmt: skip
                mock[f"nonstream_c{conc}"] = {
                    "req_s": s["request_throughput"], "e2e_p50_ms": s["e2e_ms"]["p50"],
                    "e2e_p99_ms": s["e2e_ms"]["p99"], "client_cpu": s["client_cpu_percent"],
                }  # fmt: skip
            for conc in (1, 16, 64, 128):
                s = lemur_bench(srv.url, f"mock-stream-c{conc}", args.out, ["--model", args.name, "--concurrency",
                                str(conc), "--num-requests", str(max(32, 2 * conc)), "--output-len", "64",
                                "--input-len", "16", "--no-plots"])  # fmt: skip
                mock[f"stream_c{conc}"] = {
                    "tok_s": s["output_token_throughput"], "itl_p50_ms": s["itl_ms"]["p50"],
                    "added_itl_p50_ms": s["itl_ms"]["p50"] - 10.0, "ttft_p50_ms": s["ttft_ms"]["p50"],
                    "client_cpu": s["client_cpu_percent"],
                }  # fmt: skip
        finally:
            srv.stop()
        results["mock_capacity"] = mock
        print(json.dumps(mock, indent=1))
    summary_path.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
