"""From request results to the figures: throughput, latency percentiles,
goodput under SLOs, errors, and timelines for the plots."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from lemur.loadtest.client import RequestResult

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class Slo:
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met(self, r: RequestResult) -> bool:
        checks = ((self.ttft_ms, r.ttft), (self.tpot_ms, r.tpot), (self.e2e_ms, r.e2e))
        return r.ok and all(limit is None or (v is not None and v * 1000 <= limit) for limit, v in checks)


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stats_ms(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    ms = [v * 1000 for v in values]
    return {"mean": sum(ms) / len(ms), **{f"p{p}": percentile(ms, p) for p in PERCENTILES}}


def timeline(results: list[RequestResult], duration: float, step: float = 1.0) -> dict[str, list[float]]:
    """Per-interval output tokens/s and mean requests in flight."""
    n = max(1, math.ceil(duration / step))
    tokens = [0.0] * n
    busy = [0.0] * n
    for r in results:
        if r.ok and r.output_tokens:
            tokens[min(n - 1, int(r.end / step))] += r.output_tokens
        for i in range(int(r.start / step), min(n - 1, int(r.end / step)) + 1):
            lo, hi = max(r.start, i * step), min(r.end, (i + 1) * step)
            busy[i] += max(0.0, hi - lo) / step
    return {"t": [i * step for i in range(n)], "output_tokens_per_s": [x / step for x in tokens], "concurrency": busy}


def summarize(results: list[RequestResult], duration: float, slo: Slo, cpu_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.input_tokens or 0 for r in ok)
    errors = Counter(r.error or str(r.status) for r in results if not r.ok)
    return {
        "sent": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": dict(sorted(errors.items())),
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_token_throughput": out_tokens / duration,
        "total_token_throughput": (out_tokens + in_tokens) / duration,
        "total_output_tokens": out_tokens,
        "total_input_tokens": in_tokens,
        "ttft_ms": stats_ms([r.ttft for r in ok if r.ttft is not None]),
        "tpot_ms": stats_ms([t for r in ok if (t := r.tpot) is not None]),
        "itl_ms": stats_ms([x for r in ok for x in r.itl]),
        "e2e_ms": stats_ms([r.e2e for r in ok]),
        "goodput": {
            "slo": {k: v for k, v in slo.__dict__.items() if v is not None},
            "requests_per_s": sum(slo.met(r) for r in results) / duration,
            "fraction": sum(slo.met(r) for r in results) / max(len(results), 1),
        },
        # The client must not be the bottleneck: its own CPU use over the run.
        "client_cpu_percent": 100.0 * cpu_s / duration,
        "timeline": timeline(results, duration),
    }


COMPARED = [
    ("request_throughput", "req/s"), ("output_token_throughput", "tok/s"),
    ("ttft_ms.p50", "ms"), ("ttft_ms.p99", "ms"), ("tpot_ms.p50", "ms"), ("tpot_ms.p99", "ms"),
    ("itl_ms.p50", "ms"), ("e2e_ms.p50", "ms"), ("e2e_ms.p99", "ms"), ("failed", ""),
]  # fmt: skip


def _get(summary: dict[str, Any], dotted: str) -> float | None:
    value: Any = summary
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def compare_table(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    rows = [f"{'metric':<26}{name_a:>14}{name_b:>14}{'B/A':>9}"]
    for key, unit in COMPARED:
        va, vb = _get(a["summary"], key), _get(b["summary"], key)
        ratio = f"{vb / va:.3f}" if isinstance(va, int | float) and isinstance(vb, int | float) and va else "-"
        fa = f"{va:.2f}" if isinstance(va, int | float) else "-"
        fb = f"{vb:.2f}" if isinstance(vb, int | float) else "-"
        rows.append(f"{key + (' (' + unit + ')' if unit else ''):<26}{fa:>14}{fb:>14}{ratio:>9}")
    return "\n".join(rows)
