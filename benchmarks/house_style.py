"""Does the LoRA demo adapter show? Greedy replies of the base and of the
house-style adapter, through one real gateway, to questions of the demo
task that neither was trained on (a fresh draw of the generator).

Counts the replies that open with `Lemur Docs:` and end with
`-- Happy hacking!`, for the base and for the adapter.

    .venv/bin/python benchmarks/house_style.py --model models/lemur-tiny-chat \\
        --adapter models/adapters/house-style --out docs/tiny-house-style.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lemur.server.live import running  # noqa: E402
from lemur.training.sft_demo import demo_conversations  # noqa: E402
from lemur.training.sft_style import STYLE_PREFIX, STYLE_SUFFIX  # noqa: E402

ADAPTER = "house-style"


def questions(count: int) -> list[str]:
    # Seed 12345: not the seeds of the chat SFT set (0) or of the adapter's (0 + 7919).
    return [conv[-2]["content"] for conv in demo_conversations(count, seed=12345)]


def reply(url: str, model: str, question: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0, "max_tokens": 96}
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["message"]["content"] or ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    with running(args.model, extra=("--lora-modules", f"{ADAPTER}={args.adapter}")) as url:
        base = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        rows = [{"question": q, "base": reply(url, base, q), "adapter": reply(url, ADAPTER, q)}
                for q in questions(args.prompts)]  # fmt: skip
    counts = {}
    for who in ("base", "adapter"):
        styled = [r[who].startswith(STYLE_PREFIX.strip()) and r[who].endswith(STYLE_SUFFIX.strip()) for r in rows]
        counts[who] = sum(styled)
    print(f"house style in {counts['adapter']}/{len(rows)} adapter replies, {counts['base']}/{len(rows)} base replies")
    if args.out:
        result = {"model": str(args.model), "adapter": str(args.adapter), "date": time.strftime("%Y-%m-%d"),
                  "styled": counts, "prompts": len(rows), "replies": rows}  # fmt: skip
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
