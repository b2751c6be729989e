"""Does the served chat model use tools? Held-out tool prompts, tool_choice auto.

Starts the real gateway (`lemur serve`, vLLM engine) on an exported model and
sends, greedily through the openai SDK with `tool_choice: "auto"`, the
held-out prompts of training/sft_tools.py (slot values never trained on):
`--calls` requests that one listed tool fits and `--texts` that none does.
A tool prompt counts when the reply calls the right function with arguments
that validate against its schema; a no-tool prompt counts when the reply is
text with no call.

    .venv/bin/python benchmarks/tool_use.py --model models/lemur-tiny-chat --out docs/tiny-tool-use.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jsonschema

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lemur.server.live import running  # noqa: E402
from lemur.training.sft_tools import eval_prompts  # noqa: E402


def judge(prompt: dict, reply) -> dict:
    """One prompt's outcome: what was expected, what came, and whether it counts."""
    message = reply.choices[0].message
    calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or ()]
    row = {"prompt": prompt["messages"][-1]["content"], "tools": [t["function"]["name"] for t in prompt["tools"]],
           "expect": prompt["expect"], "calls": calls, "content": message.content,
           "finish_reason": reply.choices[0].finish_reason}  # fmt: skip
    if prompt["expect"] is None:
        row["ok"] = not calls
        return row
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in prompt["tools"]}
    row["ok"] = bool(calls) and calls[0]["name"] == prompt["expect"]
    if row["ok"]:
        try:
            jsonschema.validate(json.loads(calls[0]["arguments"]), schemas[prompt["expect"]])
        except (ValueError, jsonschema.ValidationError) as exc:
            row["ok"], row["invalid"] = False, str(exc)[:200]
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--texts", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=None, help="write the per-prompt results JSON here")
    args = p.parse_args(argv)

    import openai

    with running(args.model) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        rows = []
        for prompt in eval_prompts(args.calls, args.texts):
            reply = client.chat.completions.create(
                model=model,
                messages=prompt["messages"],
                tools=prompt["tools"],
                tool_choice="auto",
                temperature=0,
                max_tokens=args.max_tokens,
            )
            rows.append(judge(prompt, reply))
    tool_rows = [r for r in rows if r["expect"] is not None]
    text_rows = [r for r in rows if r["expect"] is None]
    summary = {
        "tool_prompts": len(tool_rows),
        "right_call_valid_arguments": sum(r["ok"] for r in tool_rows),
        "no_tool_prompts": len(text_rows),
        "answered_in_text": sum(r["ok"] for r in text_rows),
    }
    calls, texts = summary["right_call_valid_arguments"], summary["answered_in_text"]
    print(f"tool prompts: {calls}/{len(tool_rows)} called the right function with valid arguments; "
          f"no-tool prompts: {texts}/{len(text_rows)} answered in text")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
