"""`lemur`: the command line of Lemur Serve.

- `lemur serve [MODEL] [gateway flags] [any vLLM engine flag]`: with no MODEL,
  the trained tiny chat model, trained on first use and cached under
  $LEMUR_CACHE (default ~/.cache/lemur).
- `lemur train {recipe,pretrain,sft,export} ...`: Lemur's training recipe.
- `lemur init-model [--out DIR]`: the tiny untrained checkpoint (tests, demos).
- `lemur plan [MODEL] --gpu GPU --tensor-parallel-size N ...`: sizing arithmetic
  for a vLLM deployment (lemur/plan.py).
- `lemur env [--model MODEL] [--json]`: the environment, for bug reports.
- `lemur bench ...`: load-test any OpenAI-compatible endpoint (loadtest/).

The top layer: each command imports its wing only when it runs (`lemur plan`
never loads vLLM).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

DEFAULT_MODEL_NAME = "lemur-tiny-chat"


def lemur_cache() -> Path:
    return Path(os.environ.get("LEMUR_CACHE", Path.home() / ".cache" / "lemur"))


def default_model_dir() -> Path:
    return lemur_cache() / "models" / DEFAULT_MODEL_NAME


def ensure_default_model() -> Path:
    """The default model is trained on first use (the tiny preset, about ten
    minutes on two cores, with a progress bar) and cached."""
    path = default_model_dir()
    if (path / "config.json").exists():
        return path
    print(f"{DEFAULT_MODEL_NAME} is not cached yet: training it once (lemur train recipe --preset tiny) ...")
    from lemur.training.cli import main as train_main

    run_dir = lemur_cache() / "runs" / "tiny"
    train_main(["recipe", "--preset", "tiny", "--out", str(run_dir), "--export-to", str(path)])
    return path


def serve(argv: list[str]) -> int:
    from lemur.server.main import serve

    return serve(argv, default_model=ensure_default_model)


def hash_key(argv: list[str]) -> int:
    """Read an API key on stdin, print its keys-file line (the key is not stored)."""
    parser = argparse.ArgumentParser(prog="lemur hash-key", description=hash_key.__doc__)
    parser.add_argument("name", help="a name for the key (shown in logs and metrics)")
    parser.add_argument("--rpm", type=float, default=None)
    parser.add_argument("--tpm", type=float, default=None)
    args = parser.parse_args(argv)
    from lemur.server.auth import hash_line

    key = sys.stdin.readline().strip()
    if not key:
        parser.error("no key on stdin")
    limits = "".join(f" {k}={v:g}" for k, v in (("rpm", args.rpm), ("tpm", args.tpm)) if v is not None)
    print(hash_line(key, args.name) + limits)
    return 0


def bench(argv: list[str]) -> int:
    from lemur.loadtest.cli import main

    return main(argv)


def train(argv: list[str]) -> int:
    from lemur.training.cli import main

    return main(argv)


def init_model(argv: list[str]) -> int:
    from lemur.training.tiny import main

    return main(argv)


def plan(argv: list[str]) -> int:
    from lemur.plan import main

    return main(argv)


def env(argv: list[str]) -> int:
    from lemur.env_report import main

    return main(argv, default_model=default_model_dir())


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "serve": (serve, "serve a model behind the OpenAI-compatible gateway"),
    "bench": (bench, "load-test an OpenAI-compatible endpoint (and `bench compare A.json B.json`)"),
    "train": (train, "Lemur's training recipe: pretrain, sft, export, recipe"),
    "hash-key": (hash_key, "print the keys-file line of an API key read on stdin"),
    "init-model": (init_model, "build the tiny untrained Lemur-format demo checkpoint"),
    "plan": (plan, "size a deployment: weights and KV cache per GPU, capacity, decode lower bound"),
    "env": (env, "print the machine, packages, CPU/AMX, GPUs and serving defaults for a bug report"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: lemur COMMAND [ARGS]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, _ = COMMANDS[argv[0]]
    return command(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
