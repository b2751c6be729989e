"""Pictures of a run: latency CDFs, and throughput and concurrency over time."""

from __future__ import annotations

from pathlib import Path

from lemur.loadtest.client import RequestResult


def write_plots(results: list[RequestResult], timeline: dict[str, list[float]], out_prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.ok]
    series = {
        "TTFT": [r.ttft * 1000 for r in ok if r.ttft is not None],
        "TPOT": [t * 1000 for r in ok if (t := r.tpot) is not None],
        "ITL": [x * 1000 for r in ok for x in r.itl],
        "E2E": [r.e2e * 1000 for r in ok],
    }
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), dpi=100)
    for ax, (name, values) in zip(axes.flat, series.items(), strict=True):
        if values:
            values = sorted(values)
            ax.plot(values, [(i + 1) / len(values) for i in range(len(values))])
        ax.set_title(f"{name} CDF")
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests" if name != "ITL" else "fraction of gaps")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    cdf = out_prefix.with_name(out_prefix.name + "-latency-cdf.png")
    fig.savefig(cdf)
    plt.close(fig)

    fig, ax1 = plt.subplots(figsize=(9, 4), dpi=100)
    ax1.plot(timeline["t"], timeline["output_tokens_per_s"], label="output tokens/s")
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("output tokens/s")
    ax2 = ax1.twinx()
    ax2.plot(timeline["t"], timeline["concurrency"], color="tab:orange", label="requests in flight")
    ax2.set_ylabel("requests in flight")
    fig.legend(loc="upper right")
    ax1.grid(alpha=0.3)
    fig.tight_layout()
    over_time = out_prefix.with_name(out_prefix.name + "-throughput.png")
    fig.savefig(over_time)
    plt.close(fig)
    return [cdf, over_time]
