"""`lemur train`: Lemur's recipe from the command line.

    lemur train recipe  --preset tiny [--out runs/tiny] [--export-to models/lemur-tiny-chat]
    lemur train pretrain --preset 70b --set model.init_from=/models/Llama-2-70b-hf ...
    lemur train sft     --preset tiny [--from RUN/pretrain/final]
    lemur train sft     --preset tiny-house-style --lora --from models/lemur-tiny-chat --export-to ADAPTER_DIR
    lemur train export  --from RUN/sft/final --to models/my-lemur
    lemur train export  --from ADAPTER --merge [--base BASE] --to models/merged

Multi-GPU / multi-node: launch the same command under torchrun, e.g.
    torchrun --nproc-per-node 8 -m lemur.training.cli recipe --preset 1b
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lemur.hardware.cpu import request_amx_permission
from lemur.training.config import load_config


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="tiny, 1b, 7b, 70b, or a TOML config path (default: tiny)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set pretrain.max_steps=10",
    )
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/PRESET)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming from checkpoints")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lemur train", description="Lemur's training recipe.")
    sub = parser.add_subparsers(dest="command", required=True)
    recipe = sub.add_parser("recipe", help="pretrain + SFT + export from a preset")
    _common(recipe)
    recipe.add_argument("--export-to", type=Path, default=None, help="write the served checkpoint here")
    pre = sub.add_parser("pretrain", help="continued pretraining (code:text mix)")
    _common(pre)
    pre.add_argument("--stop-after", type=int, default=None, help="stop after N steps (resume later)")
    sft = sub.add_parser("sft", help="ChatML SFT with assistant-only loss")
    _common(sft)
    sft.add_argument(
        "--from", dest="init", type=Path, default=None, help="model to fine-tune (default RUN/pretrain/final)"
    )
    sft.add_argument("--stop-after", type=int, default=None)
    sft.add_argument("--lora", action="store_true", help="train a LoRA adapter on a frozen base (same as lora.enabled)")
    sft.add_argument("--export-to", type=Path, default=None, help="write the served checkpoint (or adapter) here")
    exp = sub.add_parser("export", help="write a Hugging Face directory the gateway serves")
    exp.add_argument("--from", dest="src", type=Path, required=True)
    exp.add_argument("--to", dest="dst", type=Path, required=True)
    exp.add_argument("--max-shard-size", default="2GB")
    exp.add_argument("--merge", action="store_true", help="--from is a LoRA adapter: fold it into its base")
    exp.add_argument("--base", type=Path, default=None, help="the adapter's base (default: from adapter_config.json)")
    return parser


def export(args: argparse.Namespace) -> Path:
    from lemur.training.export import export_checkpoint
    from lemur.training.lora import copy_adapter, is_adapter_dir, merge_adapter

    if not is_adapter_dir(args.src):
        if args.merge:
            raise SystemExit(f"{args.src} is not a LoRA adapter (no adapter_config.json): nothing to merge")
        return export_checkpoint(args.src, args.dst, args.max_shard_size)
    if args.merge:
        return merge_adapter(args.src, args.dst, args.base, args.max_shard_size)
    return copy_adapter(args.src, args.dst)


def _export_sft(run: Path, dst: Path, summary: dict) -> None:
    final = run / "sft" / "final"
    (final / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    export(argparse.Namespace(src=final, dst=dst, merge=False, base=None, max_shard_size="2GB"))
    summary["exported"] = str(dst)


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    # CPU training in bf16 can reach AMX (oneDNN and inductor GEMMs); Linux grants
    # it per process, so every rank asks for itself. A no-op without AMX.
    request_amx_permission()
    if args.command == "export":
        print(f"exported to {export(args)}")
        return 0
    overrides = [*args.overrides, *(["lora.enabled=true"] if getattr(args, "lora", False) else [])]
    cfg = load_config(args.preset, overrides)
    run = args.out or Path("runs") / cfg.name
    resume = not args.no_resume
    from lemur.training import recipe
    from lemur.training.distributed import init_distributed, shutdown

    if args.command == "recipe":
        summary = recipe.run_recipe(cfg, run, args.export_to, resume)
    else:
        d = init_distributed(cfg.distributed)
        run.mkdir(parents=True, exist_ok=True)
        if args.command == "pretrain":
            summary = recipe.run_pretrain(cfg, run, d, resume, args.stop_after)
        else:
            summary = recipe.run_sft(cfg, run, d, args.init, resume, args.stop_after)
            if args.export_to is not None and d.is_main and (run / "sft" / "final").exists():
                _export_sft(run, args.export_to, summary)
        shutdown(d)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
