"""How often the served chat model ends its turn with <|im_end|>.

Starts the real gateway (`lemur serve`, vLLM engine) on an exported model,
sends held-out chat prompts (the SFT split's held-out conversations, cut before
their last assistant turn) greedily with max_tokens=128 through the openai
SDK, and reports the share that finished with finish_reason "stop".

    .venv/bin/python benchmarks/chat_stop_rate.py --model models/lemur-tiny-chat \\
        --heldout runs/tiny/data/sft/heldout.jsonl --prompts 50
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lemur.server.live import running


def held_out_prompts(path: Path, count: int) -> list[list[dict[str, str]]]:
    prompts = []
    for line in path.read_text().splitlines():
        messages = json.loads(line)["messages"]
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        prompts.append(messages[: last_user + 1])
        if len(prompts) == count:
            break
    return prompts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--heldout", type=Path, required=True)
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = p.parse_args(argv)

    import openai

    with running(args.model) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        model = client.models.list().data[0].id
        results = []
        for messages in held_out_prompts(args.heldout, args.prompts):
            r = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                               max_tokens=args.max_tokens)  # fmt: skip
            c = r.choices[0]
            results.append({"prompt": messages[-1]["content"], "reply": c.message.content,
                            "finish_reason": c.finish_reason, "tokens": r.usage.completion_tokens})  # fmt: skip
    stopped = sum(r["finish_reason"] == "stop" for r in results)
    summary = {
        "model": str(args.model),
        "prompts": len(results),
        "finished_with_stop": stopped,
        "stop_rate": stopped / max(len(results), 1),
        "mean_completion_tokens": sum(r["tokens"] for r in results) / max(len(results), 1),
        "max_tokens": args.max_tokens,
    }
    print(json.dumps(summary, indent=2))
    for r in results[:5]:
        print(f"- {r['prompt']!r} -> {r['reply']!r} [{r['finish_reason']}]")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
